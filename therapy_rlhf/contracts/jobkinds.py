"""The table of job kinds: every list of kinds in the project is derived from it.

A job kind is one ``python -m therapy_rlhf.jobs KIND`` entrypoint and one
Kubernetes Job (or one local job). Its row says which phase a running job
puts the run in, whether it works on one round or the whole run, what it
reads and writes in the store (by artifact name: ``integrity`` turns them
into record names and digests), whether it runs on every GPU of
``resources.gpus``, and which parts the memory plan sums for it.

Standard library only: the job entrypoint reads this before its clock starts.

Adding a job kind: a row here, the job module under ``jobs/`` (and its
dispatch in ``jobs/__main__.py``), its test; an artifact it reads or writes
that is new gets a resolver in ``therapy_rlhf.store.integrity``.
"""

from __future__ import annotations

from dataclasses import dataclass

from therapy_rlhf.contracts import phases

# Round scope: a run-level job runs as --round 0, a round job as --round 1..
RUN_LEVEL = "run"
ROUND_LEVEL = "round"

# Artifacts (what ``integrity`` resolves into record names under a run).
# Read by jobs:
POLICY = "policy"  # the policy a round samples from / updates (SFT adapter, previous round's policy, or none)
SELECTION_HISTORY = "selection-history"  # every earlier round's batch and gate (feedback.selection other than 'all')
NEXT_SELECTION_HISTORY = "next-selection-history"  # the same for round r+1 (a job that samples the next batch)
BATCH = "batch"
GATE = "gate"
PREVIOUS_OPTIMIZER = "previous-optimizer"  # round r-1's Adam state (round 2..)
KL_REFERENCE = "kl-reference"  # the SFT adapter PPO started from
EVAL_CHECKPOINTS = "eval-checkpoints"  # evaluation.checkpoints other than 'base'
ALL_GATES = "all-gates"  # the report's reward curve
# Written by jobs (and read by later ones):
SFT_ADAPTER = "sft-adapter"
SELECTION = "selection"  # only in runs whose feedback.selection is not 'all'
POLICY_OUT = "round-policy"
OPTIMIZER = "optimizer"
NEXT_BATCH = "next-batch"
NEXT_SELECTION = "next-selection"
# eval/results.json: recorded like every job output, so a planted file never counts as a finished evaluation.
EVAL_RESULTS = "eval-results"


@dataclass(frozen=True)
class JobKind:
    name: str
    phase: str  # status.phase while a job of this kind runs
    scope: str  # RUN_LEVEL (--round 0) or ROUND_LEVEL (--round 1..)
    reads: tuple[str, ...]  # artifacts whose digests the executor passes as --expect
    writes: tuple[str, ...]  # artifacts whose digests the job reports (its outputs)
    distributed: bool  # runs on every GPU of resources.gpus (else on at most one)
    parts: tuple[str, ...]  # the kinds whose work this job does, in order (the memory plan plans each)
    trains: bool = False  # holds gradients and optimizer state (the memory plan's training row)

    @property
    def run_level(self) -> bool:
        return self.scope == RUN_LEVEL


SFT = "sft"
GENERATE = "generate"
PPO = "ppo"
# Round r's update and round r+1's generation in one Job (the model loaded once).
PPO_GENERATE = "ppo-generate"
EVALUATE = "evaluate"

_PPO_READS = (BATCH, GATE, POLICY, PREVIOUS_OPTIMIZER, KL_REFERENCE)

TABLE: dict[str, JobKind] = {
    k.name: k
    for k in (
        JobKind(SFT, phases.SFT, RUN_LEVEL, (), (SFT_ADAPTER,), distributed=True, parts=(SFT,), trains=True),
        JobKind(GENERATE, phases.GENERATING, ROUND_LEVEL, (POLICY, SELECTION_HISTORY), (BATCH, SELECTION),
                distributed=False, parts=(GENERATE,)),
        JobKind(PPO, phases.UPDATING, ROUND_LEVEL, _PPO_READS, (POLICY_OUT, OPTIMIZER), distributed=True,
                parts=(PPO,), trains=True),
        JobKind(PPO_GENERATE, phases.UPDATING, ROUND_LEVEL, _PPO_READS + (NEXT_SELECTION_HISTORY,),
                (POLICY_OUT, OPTIMIZER, NEXT_BATCH, NEXT_SELECTION), distributed=True, parts=(PPO, GENERATE)),
        JobKind(EVALUATE, phases.EVALUATING, RUN_LEVEL, (EVAL_CHECKPOINTS, ALL_GATES), (EVAL_RESULTS,), distributed=False,
                parts=(EVALUATE,)),
    )
}

JOB_KINDS: tuple[str, ...] = tuple(TABLE)
# The kinds a job reports outputs for (the executors record their digests).
OUTPUT_KINDS: tuple[str, ...] = tuple(k.name for k in TABLE.values() if k.writes)
RUN_LEVEL_KINDS: tuple[str, ...] = tuple(k.name for k in TABLE.values() if k.run_level)
# The memory plan's rows: each part some job does, in table order.
MEMORY_KINDS: tuple[str, ...] = tuple(dict.fromkeys(p for k in TABLE.values() for p in k.parts))
# The kinds whose Job takes a gate (the executor's record of a gate's digest goes with it).
GATED_KINDS: tuple[str, ...] = tuple(k.name for k in TABLE.values() if GATE in k.reads)
PHASE_OF_JOB: dict[str, str] = {k.name: k.phase for k in TABLE.values()}


def kind(name: str) -> JobKind:
    """The row of ``name``; ValueError naming the known kinds otherwise."""
    try:
        return TABLE[name]
    except KeyError:
        raise ValueError(f"unknown job kind {name!r} (known: {', '.join(JOB_KINDS)})") from None
