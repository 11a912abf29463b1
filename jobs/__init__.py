"""The training jobs: ``python -m therapy_rlhf.jobs <sft|generate|ppo|evaluate> --run-config FILE --round N --store URI``.

``__main__`` (dispatcher), ``common`` (JobContext, JobError, timing, store I/O),
``models`` (model sources, precision, LoRA, policy loading), ``tiny`` (tiny
random-weight Mistral/Mixtral), ``data`` and ``prompts`` (ESConv loaders, the
prompt suite), one module per job kind, and ``text_metrics``/``report`` for
evaluation. Nothing here imports torch at package import time.
"""
