"""A preload that takes as long as importing torch on a very busy machine (for the job worker's tests)."""

import os
import time

time.sleep(float(os.environ.get("SLOW_PRELOAD_SECONDS", "60")))
