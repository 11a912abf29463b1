"""What the local runner's warm worker imports once, before it forks any job.

    python -m therapy_rlhf.execution.worker_server --control-fd N --preload therapy_rlhf.jobs.preload

Importing torch, transformers and peft is most of a tiny job's start-up (5 s on
an idle 2-core machine, 13 s on a busy one): the worker (``therapy_rlhf.
jobworker``) imports this module once and each job it forks finds them in
memory. Only imports: nothing here may start a thread, initialise CUDA or
touch a model, because every job is a fork of this state (the worker checks
for threads and CUDA after importing and falls back to cold starts if it
finds either). The environment and warning settings every job uses are
applied first, as the job entrypoint does, because transformers reads its
verbosity when it is imported.
"""

from therapy_rlhf.jobs.common import quiet_libraries

quiet_libraries()

import peft  # noqa: E402,F401
import torch  # noqa: E402,F401
import transformers  # noqa: E402,F401
import transformers.models.mistral.modeling_mistral  # noqa: E402,F401
import transformers.models.mixtral.modeling_mixtral  # noqa: E402,F401
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402,F401
from trl import SFTConfig, SFTTrainer  # noqa: E402,F401  (the sft job's; under a second)

import therapy_rlhf.store.backends  # noqa: E402,F401
from therapy_rlhf.jobs import (  # noqa: E402,F401
    distributed,
    generate,
    memory_check,
    models,
    ppo,
    ppo_generate,
    ppo_trainer,
    reference,
    sampling,
    tiny,
    value_head,
)
