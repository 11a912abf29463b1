"""The TherapyRLHFRun operator (kopf): ``kopf run -m therapy_rlhf.operator`` or
``python -m therapy_rlhf.operator``.

Importing this package registers the handlers (``handlers.register``) into
kopf's default registry with settings from the environment (``config``).
"""

from __future__ import annotations

import kopf

from therapy_rlhf.operator.config import OperatorConfig
from therapy_rlhf.operator.handlers import register

register(kopf.get_default_registry(), OperatorConfig.from_env())

__all__ = ["OperatorConfig", "register"]
