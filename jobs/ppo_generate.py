"""The ``ppo-generate`` job: round r's PPO update, then round r+1's batch, with the model loaded once.

    python -m therapy_rlhf.jobs ppo-generate --run-config examples/tiny-local.yaml --round 1 --store /tmp/store

``--round`` is the round being updated (r); the batch is round r+1's. This is
the planner's step after each round's gate but the last one when
``spec.ppo.oneJobPerRound`` is true (the default): the psychologist's next
batch follows the last rating by one model load instead of two Job starts
(two image pulls, two model copies and loads on a cluster).

The two halves are the ``ppo`` and ``generate`` jobs' own steps, in order:

1. ``ppo.main``: reads and checks the gate, updates the policy, and writes
   ``rounds/{r}/policy/`` with ``metrics.json`` LAST, exactly as the ``ppo``
   job does. Round r is finished before anything is sampled, so a Job that
   dies after this point leaves round r updated and round r+1 without a
   batch: the planner's next step is then a plain ``generate`` job, which
   samples the same batch from the stored checkpoint.
2. ``generate.write_batch`` with the policy still in memory (its weights are
   the checkpoint just written; sampling puts the model in eval mode, and the
   sampler and seeds are the ones the ``generate`` job uses), writing
   ``rounds/{r+1}/batch.jsonl`` once, as its marker. With SFT on, the frozen
   SFT adapter the update used as its KL reference (``reference.py``) stays
   loaded beside the policy but inactive: the trained adapter is the one
   sampled, exactly as the ``generate`` job loads it from the checkpoint.
   On an unquantized base the tokens are those the ``generate`` job samples
   from the stored checkpoint (tests/jobs/test_ppo_generate.py). On a 4-bit
   or 8-bit base the update's model has its norms, embeddings and head in
   fp32 (peft's k-bit preparation for training), so the fused Job samples
   from the model as the update scores it, and a ``generate`` job resuming
   after a crash samples from the bf16 load: the same policy, tokens that
   can differ where bf16 rounding moves a draw.

With several GPUs the update runs data parallel as in ``ppo``; rank 0, which
holds the whole policy, then samples and writes alone.
"""

from __future__ import annotations

from typing import Any

from therapy_rlhf.jobs import generate, models, ppo, verify
from therapy_rlhf.jobs.common import JobContext, JobError


def free_training_state(policy: Any, device: str) -> None:
    """Drop the update's gradients (and, on GPU, the cached blocks) before sampling."""
    policy.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def main(ctx: JobContext) -> None:
    spec, paths, round_no = ctx.spec, ctx.paths, ctx.round
    next_round = round_no + 1
    # 1. Check what can be checked before anything is loaded: there is a next round, its ids are valid.
    if next_round > spec.ppo.rounds:
        raise JobError(
            f"round {round_no} is the run's last (ppo.rounds is {spec.ppo.rounds}): nothing to generate after it; "
            "use the ppo job"
        )
    generate.check_response_ids(spec, next_round)
    # 2. Round r's update, stored with its marker before the next batch is sampled.
    updated = ppo.main(ctx)
    if updated is not None and ctx.is_main_process and isinstance(ctx.store, verify.JobStore):
        # Reported now, not only at the end: a Job that dies while sampling leaves round r's
        # checkpoint recorded by the executor, so the generate job that follows can verify it.
        verify.report_outputs(ctx.store, "ppo", round_no, ctx.outputs_file, lambda line: ctx.progress("%s", line))
    batch_key = paths.batch(next_round)
    if ctx.store.exists(batch_key):
        ctx.progress("%s already exists: nothing to do (a batch is never replaced)", ctx.store.describe(batch_key))
        return
    if not ctx.is_main_process:
        return
    # 3. The policy to sample from: the one just updated, or (when an earlier attempt stored the
    #    update) the stored checkpoint.
    if updated is None:
        if getattr(ctx.store, "verify", False):  # that checkpoint is an input only the generate job verifies
            raise JobError(
                f"round {round_no}'s update is already stored: round {next_round}'s batch is sampled by a "
                f"generate job (it checks that checkpoint against the executor's record)"
            )
        policy, tokenizer, _ = models.load_policy(ctx, paths.policy_for_round(next_round, spec.sft.enabled))
        ctx.begin_work()
    else:
        policy, tokenizer = updated
        free_training_state(policy, ctx.device)
    ctx.progress("sampling round %d from round %d's policy", next_round, round_no)
    # 4. Round r+1's batch, written once as its marker.
    generate.write_batch(ctx, policy, tokenizer, next_round)
