"""What only the executor and the jobs write, verified by digests kept where raters cannot write.

A rater's credential can create rating objects (and, with a bucket policy that
is too broad, anything else). Whatever the bucket policy, what trains the
model is checked against digests the executor holds itself:

* ``gate.json``: the executor (operator or local runner) closes the gate and
  records the SHA-256 of the bytes it wrote;
* the outputs of the jobs (``batch.jsonl``, the SFT adapter, each round's
  policy and optimizer state): a job reports their digests over a channel
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
from typing import Callable, Iterable, Mapping

from therapy_rlhf.layout import RunPaths
from therapy_rlhf.spec import RunSpec

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


def relative(paths: RunPaths, key: str) -> str:
    return key[len(paths.root) + 1 :]


def absolute(paths: RunPaths, name: str) -> str:
    return f"{paths.root}/{name}"


# ------------------------------------------------------------ what each job reads and writes


def _policy_input(paths: RunPaths, round_no: int, spec: RunSpec) -> list[str]:
    prefix = paths.policy_for_round(round_no, spec.sft.enabled)
    return [relative(paths, prefix) + "/"] if prefix else []


def _reward_model_inputs(paths: RunPaths, sampled_round: int, spec: RunSpec) -> list[str]:
    """What selecting a batch reads (feedback.selection other than 'all'): every earlier round's batch and gate."""
    if spec.feedback.selection.mode == "all":
        return []
    return [relative(paths, key) for q in range(1, sampled_round) for key in (paths.batch(q), paths.gate(q))]


def job_inputs(kind: str, round_no: int, spec: RunSpec, paths: RunPaths) -> list[str]:
    """Record names of the stored inputs a job of this kind reads (the run config aside)."""
    if kind == "generate":
        return _policy_input(paths, round_no, spec) + _reward_model_inputs(paths, round_no, spec)
    if kind in ("ppo", "ppo-generate"):  # the fused job samples round r+1 from the policy it just trained
        names = [relative(paths, paths.batch(round_no)), relative(paths, paths.gate(round_no))]
        names += _policy_input(paths, round_no, spec)
        if round_no > 1:
            names.append(relative(paths, paths.optimizer_state(round_no - 1)))
        # The KL reference: the SFT adapter PPO started from (round 1's policy already is it).
        reference = relative(paths, paths.sft_adapter()) + "/"
        if spec.sft.enabled and reference not in names:
            names.append(reference)
        if kind == "ppo-generate":
            names += [n for n in _reward_model_inputs(paths, round_no + 1, spec) if n not in names]
        return names
    if kind == "evaluate":
        names = []
        for checkpoint in spec.evaluation.checkpoints:
            if checkpoint == "sft":
                names.append(relative(paths, paths.sft_adapter()) + "/")
            elif checkpoint != "base":
                r = spec.ppo.rounds if checkpoint == "final" else int(checkpoint.split("-", 1)[1])
                names.append(relative(paths, paths.policy_prefix(r)) + "/")
        # The report's reward curve reads every round's gate.
        names += [relative(paths, paths.gate(r)) for r in range(1, spec.ppo.rounds + 1)]
        return sorted(set(names))
    return []


OUTPUT_KINDS = ("sft", "generate", "ppo", "ppo-generate")


def job_outputs(kind: str, round_no: int, paths: RunPaths, selecting: bool = False) -> list[str]:
    """Record names of what a job of this kind writes for later jobs to read.

    ``selecting``: the run's feedback.selection is not 'all', so a job that samples a batch writes
    its selection.json too (only such runs expect one; a report may always carry it).
    """
    if kind == "sft":
        return [relative(paths, paths.sft_adapter()) + "/"]
    if kind == "generate":
        names = [relative(paths, paths.batch(round_no))]
        return names + ([relative(paths, paths.selection(round_no))] if selecting else [])
    if kind == "ppo":
        return [relative(paths, paths.policy_prefix(round_no)) + "/", relative(paths, paths.optimizer_state(round_no))]
    if kind == "ppo-generate":  # round r's update, then round r+1's batch
        return job_outputs("ppo", round_no, paths) + job_outputs("generate", round_no + 1, paths, selecting)
    return []


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
            from therapy_rlhf.names import quote

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
    from therapy_rlhf.store import dump_json

    return sha256(dump_json(gate.model_dump(mode="json")))


def gate_name(paths: RunPaths, round_no: int) -> str:
    return relative(paths, paths.gate(round_no))


# ---------------------------------------------------------------- the executor's gate close


def close_gate_as_executor(
    store,
    paths: RunPaths,
    round_no: int,
    feedback,
    reason: str,
    closed_by: str,
    record: Mapping[str, str],
    record_intent: Callable[[str, str], None],
    previous=None,
):
    """Close a round's gate as the executor: (gate, its digest, whether a stray gate.json was replaced).

    Exactly once across a crash at any point: ``record_intent(name, digest)``
    stores the new gate's digest in the executor's record *before* the object
    is written. A gate.json whose digest is in the record is therefore the
    executor's own -- closed now or by an incarnation that died right after
    writing it -- and is returned as it is. One whose digest is not (planted by
    someone else) is not a gate: the rating set is frozen afresh from the
    verified ratings and written over it. A crash between the record and the
    write leaves no object: the round is closed again under a new record.
    """
    from therapy_rlhf.ratings import build_gate, load_round
    from therapy_rlhf.records import Gate, parse_record
    from therapy_rlhf.store import AlreadyExists, NotFound, dump_json, parse_json

    key = paths.gate(round_no)
    name = gate_name(paths, round_no)
    try:
        existing = store.read_bytes(key)
    except NotFound:
        existing = None
    if existing is not None and record.get(name) == sha256(existing):
        gate = parse_record(Gate, parse_json(existing, store.describe(key)), store.describe(key))
        return gate, record[name], False
    state = load_round(store, paths, round_no, previous=previous, feedback=feedback, gate=None)
    gate = build_gate(state, feedback, reason, closed_by, _recorded_selection(store, paths, round_no, record))
    data = dump_json(gate.model_dump(mode="json"))
    record_intent(name, sha256(data))
    if existing is None:
        try:
            store.create_bytes(key, data)
        except AlreadyExists:
            store.write_bytes(key, data)  # appeared meanwhile, and it is not ours either
            return gate, sha256(data), True
        return gate, sha256(data), False
    store.write_bytes(key, data)
    return gate, sha256(data), True


def _recorded_selection(store, paths: RunPaths, round_no: int, record: Mapping[str, str]):
    """The round's selection.json, if its job reported it; one whose digest differs from the record is refused."""
    from therapy_rlhf.records import Selection, parse_record
    from therapy_rlhf.store import NotFound, parse_json

    key = paths.selection(round_no)
    want = record.get(relative(paths, key))
    if want is None:
        return None  # no selection (feedback.selection 'all'), or one no job of this executor reported
    try:
        data = store.read_bytes(key)
    except NotFound:
        raise IntegrityError(f"{store.describe(key)} is recorded but missing: refusing to close round {round_no}'s gate") from None
    if sha256(data) != want:
        raise IntegrityError(
            f"{store.describe(key)} does not match the digest its job reported: refusing to close round {round_no}'s gate"
        )
    return parse_record(Selection, parse_json(data, store.describe(key)), store.describe(key))
