"""The store layout: every key the operator, the jobs and the TUI agree on.

Keys are relative to the store's root (a local directory, or ``s3://bucket/prefix``):

    {namespace}/{run}/spec.json                                frozen spec at start
    {namespace}/{run}/lease.json                               who executes the run (therapy_rlhf.lease)
    {namespace}/{run}/sft/adapter/...                          SFT LoRA adapter
    {namespace}/{run}/sft/metrics.json                         written last: SFT done
    {namespace}/{run}/rounds/{r:04d}/batch.jsonl               pending responses (immutable)
    {namespace}/{run}/rounds/{r:04d}/ratings/{rater}/{response_id}.json       first rating
    {namespace}/{run}/rounds/{r:04d}/ratings/{rater}/{response_id}.v{n}.json  correction n>=2
    {namespace}/{run}/rounds/{r:04d}/gate.json                 frozen rating set + rewards
    {namespace}/{run}/rounds/{r:04d}/selection.json            feedback.selection: who goes to the experts
    {namespace}/{run}/rounds/{r:04d}/predictions.json          the reward model's predictions (after the gate
                                                               on a local store; executor-only on S3)
    {namespace}/{run}/rounds/{r:04d}/policy/...                adapter + value head
    {namespace}/{run}/rounds/{r:04d}/policy/metrics.json       written last: update done
    {namespace}/{run}/eval/results.json, report.md, reward_curve.png

Only validated names (see ``names``) ever become part of a key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from therapy_rlhf.contracts import names

# Rounds are four digits in keys (rounds/0001 .. rounds/9999).
MAX_ROUND = 9999
RATING_KEY_RE = re.compile(r"^(?P<rater>[a-z0-9-]{1,40})/(?P<response>[a-z0-9][a-z0-9_.-]*?)(\.v(?P<version>[0-9]+))?\.json$")


@dataclass(frozen=True)
class RunPaths:
    """Keys of one run, built only from validated names."""

    namespace: str
    run: str

    def __post_init__(self) -> None:
        names.namespace(self.namespace)
        names.run_name(self.run)

    @property
    def root(self) -> str:
        return f"{self.namespace}/{self.run}"

    # run-level ------------------------------------------------------------
    def spec(self) -> str:
        return f"{self.root}/spec.json"

    def lease(self) -> str:
        """The executor's lease: one local runner or the operator at a time (``therapy_rlhf.lease``)."""
        return f"{self.root}/lease.json"

    def sft_prefix(self) -> str:
        return f"{self.root}/sft"

    def sft_adapter(self) -> str:
        return f"{self.root}/sft/adapter"

    def sft_metrics(self) -> str:
        return f"{self.root}/sft/metrics.json"

    def eval_prefix(self) -> str:
        return f"{self.root}/eval"

    def eval_results(self) -> str:
        return f"{self.root}/eval/results.json"

    def eval_report(self) -> str:
        return f"{self.root}/eval/report.md"

    def eval_reward_curve(self) -> str:
        return f"{self.root}/eval/reward_curve.png"

    # rounds ---------------------------------------------------------------
    def round_prefix(self, round_no: int) -> str:
        if not isinstance(round_no, int) or isinstance(round_no, bool) or not 1 <= round_no <= MAX_ROUND:
            raise ValueError(f"invalid round {round_no!r}: must be an integer in 1..{MAX_ROUND}")
        return f"{self.root}/rounds/{round_no:04d}"

    def batch(self, round_no: int) -> str:
        return f"{self.round_prefix(round_no)}/batch.jsonl"

    def fluency(self, round_no: int) -> str:
        """The batch's fluency (jobs/fluency.py), written just before the batch."""
        return f"{self.round_prefix(round_no)}/fluency.json"

    def ratings_prefix(self, round_no: int) -> str:
        return f"{self.round_prefix(round_no)}/ratings/"

    def rating(self, round_no: int, rater: str, response_id: str, version: int = 1) -> str:
        names.rater_id(rater)
        names.item_id(response_id)
        if not isinstance(version, int) or version < 1:
            raise ValueError(f"invalid rating version {version!r}: must be >= 1")
        suffix = "" if version == 1 else f".v{version}"
        return f"{self.ratings_prefix(round_no)}{rater}/{response_id}{suffix}.json"

    def gate(self, round_no: int) -> str:
        return f"{self.round_prefix(round_no)}/gate.json"

    def selection(self, round_no: int) -> str:
        """Which responses went to the experts, and why (feedback.selection)."""
        return f"{self.round_prefix(round_no)}/selection.json"

    def predictions(self, round_no: int) -> str:
        """The reward model's predictions of a round's responses (feedback.predictions: private until the gate)."""
        return f"{self.round_prefix(round_no)}/predictions.json"

    def policy_prefix(self, round_no: int) -> str:
        return f"{self.round_prefix(round_no)}/policy"

    def policy_metrics(self, round_no: int) -> str:
        return f"{self.round_prefix(round_no)}/policy/metrics.json"

    def optimizer_state(self, round_no: int) -> str:
        """The PPO optimizer's state after round r's update; beside policy/, so that
        jobs that only sample from the policy never download it."""
        return f"{self.round_prefix(round_no)}/optimizer.pt"

    def policy_for_round(self, round_no: int, sft_enabled: bool) -> str | None:
        """Adapter prefix a round's generate job samples from (None = the base model)."""
        if round_no > 1:
            return self.policy_prefix(round_no - 1)
        return self.sft_adapter() if sft_enabled else None


def parse_rating_key(relative: str) -> tuple[str, str, int] | None:
    """'alice/r0001-x.v2.json' -> ('alice', 'r0001-x', 2); None for anything else."""
    m = RATING_KEY_RE.fullmatch(relative)
    if not m:
        return None
    return m["rater"], m["response"], int(m["version"] or 1)


def parse_run_root(key: str) -> tuple[str, str] | None:
    """'{ns}/{run}/spec.json' -> (ns, run) for keys that are a run's frozen spec."""
    parts = key.split("/")
    if len(parts) == 3 and parts[2] == "spec.json":
        try:
            return names.namespace(parts[0]), names.run_name(parts[1])
        except names.InvalidName:
            return None
    return None
