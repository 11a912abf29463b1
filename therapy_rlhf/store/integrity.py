"""What only the executor and the jobs write, verified by digests kept where raters cannot write.

A rater's credential can create rating objects (and, with a bucket policy that
is too broad, anything else). Whatever the bucket policy, what trains the
model is checked against digests the executor holds itself:

* ``gate.json``: the executor (operator or local runner) closes the gate and
  records the SHA-256 of the bytes it wrote;
* the outputs of the jobs (``batch.jsonl``, the SFT adapter, each round's
  policy and optimizer state, the evaluation's ``eval/results.json``): a job reports their digests over a channel
  raters cannot write -- its Kubernetes termination message, or a file in the
  local runner's private work folder -- and the executor records them;
* the run config the jobs get (``run.json``): the executor wrote it and knows its digest.

The record lives in the run's status on Kubernetes (``status.digests``) and in
the local runner's ``state.json``. Each job is then started with the digests
of exactly the inputs it reads (``--expect NAME=SHA256``) and refuses any
input that does not match, and any it needs that the executor never recorded.
A gate.json the executor did not record is not a closed gate: it is never
acted on, and closing the round replaces it.

Names in a record are keys relative to the run's root (``rounds/0001/gate.json``);
a name ending in ``/`` is a checkpoint folder, whose digest is the SHA-256 of
its ``sha256sum``-style listing (``<sha256>  <path>`` per object, sorted by path).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Iterable, Mapping

from therapy_rlhf.contracts import jobkinds
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts.spec import RunSpec

RUN_CONFIG = "run-config"  # the --run-config file (not a store key)
DIGEST_RE = re.compile(r"[0-9a-f]{64}")
OUTPUTS_PREFIX = "outputs: "  # the line a job prints last, before "done:"
# Kubernetes keeps at most 4096 bytes of a container's termination message.
MAX_OUTPUTS_BYTES = 4096


class IntegrityError(ValueError):
    """A digest that does not match, or an input nobody recorded (one line)."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_digest(files: Mapping[str, str]) -> str:
    """The digest of a folder: SHA-256 of '<sha256>  <relative path>' lines sorted by path."""
    listing = "".join(f"{digest}  {path}\n" for path, digest in sorted(files.items()))
    return sha256(listing.encode("utf-8"))


def eval_results_name(paths: RunPaths) -> str:
    """The record name of eval/results.json: the evaluation counts as done only when it is recorded."""
    return relative(paths, paths.eval_results())


def relative(paths: RunPaths, key: str) -> str:
    return key[len(paths.root) + 1 :]


def absolute(paths: RunPaths, name: str) -> str:
    return f"{paths.root}/{name}"


# ------------------------------------------------------------ what each job reads and writes


def _policy(paths: RunPaths, round_no: int, spec: RunSpec) -> list[str]:
    prefix = paths.policy_for_round(round_no, spec.sft.enabled)
    return [relative(paths, prefix) + "/"] if prefix else []


def _selection_history(paths: RunPaths, sampled_round: int, spec: RunSpec) -> list[str]:
    """What selecting a batch reads (feedback.selection other than 'all'): every earlier round's batch and gate."""
    if spec.feedback.selection.mode == "all":
        return []
    return [relative(paths, key) for q in range(1, sampled_round) for key in (paths.batch(q), paths.gate(q))]


def _previous_optimizer(paths: RunPaths, round_no: int, spec: RunSpec) -> list[str]:
    return [relative(paths, paths.optimizer_state(round_no - 1))] if round_no > 1 else []


def _kl_reference(paths: RunPaths, round_no: int, spec: RunSpec) -> list[str]:
    """The KL reference: the SFT adapter PPO started from (round 1's policy already is it)."""
    return [relative(paths, paths.sft_adapter()) + "/"] if spec.sft.enabled else []


def _eval_checkpoints(paths: RunPaths, round_no: int, spec: RunSpec) -> list[str]:
    names = []
    for checkpoint in spec.evaluation.checkpoints:
        if checkpoint == "sft":
            names.append(relative(paths, paths.sft_adapter()) + "/")
        elif checkpoint != "base":
            r = spec.ppo.rounds if checkpoint == "final" else int(checkpoint.split("-", 1)[1])
            names.append(relative(paths, paths.policy_prefix(r)) + "/")
    return names


# What each artifact a job reads is, as record names (jobkinds.TABLE's ``reads``).
_READS = {
    jobkinds.POLICY: _policy,
    jobkinds.SELECTION_HISTORY: _selection_history,
    jobkinds.NEXT_SELECTION_HISTORY: lambda paths, r, spec: _selection_history(paths, r + 1, spec),
    jobkinds.BATCH: lambda paths, r, spec: [relative(paths, paths.batch(r))],
    jobkinds.GATE: lambda paths, r, spec: [relative(paths, paths.gate(r))],
    jobkinds.PREVIOUS_OPTIMIZER: _previous_optimizer,
    jobkinds.KL_REFERENCE: _kl_reference,
    jobkinds.EVAL_CHECKPOINTS: _eval_checkpoints,
    jobkinds.ALL_GATES: lambda paths, r, spec: [relative(paths, paths.gate(q)) for q in range(1, spec.ppo.rounds + 1)],
}

# What each artifact a job writes is (jobkinds.TABLE's ``writes``); the selection only when the run selects.
_WRITES = {
    jobkinds.SFT_ADAPTER: lambda paths, r, selecting: [relative(paths, paths.sft_adapter()) + "/"],
    jobkinds.BATCH: lambda paths, r, selecting: [relative(paths, paths.batch(r))],
    jobkinds.SELECTION: lambda paths, r, selecting: [relative(paths, paths.selection(r))] if selecting else [],
    jobkinds.POLICY_OUT: lambda paths, r, selecting: [relative(paths, paths.policy_prefix(r)) + "/"],
    jobkinds.OPTIMIZER: lambda paths, r, selecting: [relative(paths, paths.optimizer_state(r))],
    jobkinds.NEXT_BATCH: lambda paths, r, selecting: [relative(paths, paths.batch(r + 1))],
    jobkinds.NEXT_SELECTION: lambda paths, r, selecting: [relative(paths, paths.selection(r + 1))] if selecting else [],
    jobkinds.EVAL_RESULTS: lambda paths, r, selecting: [relative(paths, paths.eval_results())],
}


def job_inputs(kind: str, round_no: int, spec: RunSpec, paths: RunPaths) -> list[str]:
    """Record names of the stored inputs a job of this kind reads (the run config aside), in the
    order of its row's ``reads``; a run-level job's in sorted order."""
    row = jobkinds.TABLE.get(kind)
    if row is None:  # not a kind of the table (a custom job command's): nothing is verified for it
        return []
    names = [name for artifact in row.reads for name in _READS[artifact](paths, round_no, spec)]
    names = list(dict.fromkeys(names))
    return sorted(names) if row.run_level else names


OUTPUT_KINDS = jobkinds.OUTPUT_KINDS


def job_outputs(kind: str, round_no: int, paths: RunPaths, selecting: bool = False) -> list[str]:
    """Record names of what a job of this kind writes for later jobs to read.

    ``selecting``: the run's feedback.selection is not 'all', so a job that samples a batch writes
    its selection.json too (only such runs expect one; a report may always carry it).
    """
    row = jobkinds.TABLE.get(kind)
    writes = row.writes if row is not None else ()  # a custom job command's kind writes nothing recorded
    return [name for artifact in writes for name in _WRITES[artifact](paths, round_no, selecting)]


def output_digests(kind: str, round_no: int, paths: RunPaths, written: Mapping[str, str]) -> dict[str, str]:
    """The digests of a job's outputs from what it wrote (store key -> SHA-256 of the bytes)."""
    out = {}
    for name in job_outputs(kind, round_no, paths, selecting=True):  # what it wrote says whether it selected
        key = absolute(paths, name)
        if name.endswith("/"):
            files = {k[len(key) :]: d for k, d in written.items() if k.startswith(key)}
            if files:
                out[name] = tree_digest(files)
        elif key in written:
            out[name] = written[key]
    return out


def expect_args(kind: str, round_no: int, spec: RunSpec, paths: RunPaths, record: Mapping[str, str], run_config_sha: str) -> list[str]:
    """``--expect NAME=SHA256`` for the run config and every recorded input of a job.

    An input missing from the record is left out: the job, in verified mode,
    then refuses it if it is in the store.
    """
    args = ["--expect", f"{RUN_CONFIG}={run_config_sha}"]
    for name in job_inputs(kind, round_no, spec, paths):
        if name in record:
            args += ["--expect", f"{name}={record[name]}"]
    return args


def parse_expect(values: Iterable[str]) -> dict[str, str]:
    """``NAME=SHA256`` strings -> a dict; IntegrityError for anything else."""
    out = {}
    for value in values:
        name, sep, digest = value.partition("=")
        if not sep or not DIGEST_RE.fullmatch(digest) or not name or ".." in name.split("/") or name.startswith("/"):
            from therapy_rlhf.contracts.names import quote

            raise IntegrityError(f"--expect must be NAME=SHA256 (64 hex digits), got {quote(value)}")
        out[name] = digest
    return out


def format_outputs(digests: Mapping[str, str]) -> str:
    return json.dumps({"outputs": dict(sorted(digests.items()))}, sort_keys=True)


def parse_outputs(text: str, allowed: Iterable[str]) -> dict[str, str]:
    """The digests in a job's outputs report (termination message or outputs file); {} if none.

    Only names the job kind writes are taken, and only well-formed digests.
    """
    # The report is the first line; a job that failed after reporting adds its error line below it.
    text = (text or "").strip().split("\n", 1)[0]
    if not text.startswith("{"):
        return {}
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    outputs = doc.get("outputs") if isinstance(doc, dict) else None
    if not isinstance(outputs, dict):
        return {}
    allowed = set(allowed)
    return {k: v for k, v in outputs.items() if k in allowed and isinstance(v, str) and DIGEST_RE.fullmatch(v)}


def gate_digest(gate) -> str:
    """The digest of the bytes ``store.create_json``/``write_json`` store for this gate."""
    from therapy_rlhf.store.backends import dump_json

    return sha256(dump_json(gate.model_dump(mode="json")))


def gate_name(paths: RunPaths, round_no: int) -> str:
    return relative(paths, paths.gate(round_no))
