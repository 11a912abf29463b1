"""The memory plan: each job's peak GPU memory, estimated from the model's shape and the run's settings.

Pure Python, one copy: ``therapy-rlhf validate`` prints it for a manifest, and
every job checks it before it downloads a byte (``jobs/memory_check.py``),
refusing a plan that cannot fit with one line that names the setting to change.

What is counted, per GPU (every rank of a data-parallel job holds the whole
policy, so the per-GPU plan is the plan):

* weights: the decoder's linear layers in the model dtype, or 4-bit NF4
  (double-quantized absmax, block 64, as bitsandbytes stores them) or 8-bit;
  embeddings, head, router and norms in the model dtype, and in fp32 for
  training on a quantized base (peft's ``prepare_model_for_kbit_training``
  upcasts them);
* the LoRA adapter: fp32 (peft's default), with its gradient and Adam's two
  moments when training (16 bytes a parameter), and DDP's gradient buckets
  on several GPUs;
* activations: with gradient checkpointing, every layer's input plus one
  layer recomputed with its gradients; without, every layer's; per token and
  layer the attention block's tensors, each routed expert's MLP tensors and
  the LoRA inputs (``layer_elements``);
* logits over the vocabulary (in the compute dtype, the fp32 copy the loss
  takes and its gradient); for generation only the last position's;
* the KV cache of a generation batch at ``model.maxLength``;
* for a quantized base, one weight dequantized for the forward and one for
  the backward;
* the CUDA context and the caching allocator's slack (a fixed 1 GiB, 5 % of
  the weights, 20 % of what is allocated per step).

The activation and slack terms are estimates (``bench/gpu_bench.py`` prints
plan and measured peaks side by side); the weight terms are exact and are
checked against what loading allocates (tests/jobs/test_model_memory.py).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from therapy_rlhf.contracts import jobkinds
from therapy_rlhf.planning.model_shapes import ModelShape
from therapy_rlhf.contracts.quantity import GIB, gib
from therapy_rlhf.contracts.spec import RunSpec

# The plan's rows are the table's memory parts: a job that does several kinds' work in one
# process, one after the other, has each part planned (ppo-generate: round r's update, then
# round r+1's batch from the same loaded model).
KINDS = jobkinds.MEMORY_KINDS
PARTS_OF_JOB = {row.name: row.parts for row in jobkinds.TABLE.values()}

BNB_BLOCK = 64  # bitsandbytes' 4-bit block size
BNB_NESTED_BLOCK = 256  # blocks per fp32 absmax of the double quantization
BNB_PER_TENSOR = 1024 + 64 + 4  # nested code table, NF4 code, offset
CUDA_CONTEXT = 1 * GIB
WEIGHT_SLACK = 0.05
STEP_SLACK = 0.20
ENCODER_ALLOWANCE = int(1.5 * GIB)  # a BERTScore encoder named by path (roberta-large: 1.4 GB in fp32)
DEFAULT_ENCODER = 100 * 2**20  # the packaged MiniLM

BATCH_SETTING = {"sft": "sft.batchSize", "ppo": "ppo.miniBatchSize", "generate": "ppo.generation.batchSize",
                 "evaluate": "ppo.generation.batchSize"}


def quantized_bytes(elements: int, out_features: int, count: int, quantization: str) -> int:
    """Bytes of ``count`` matrices of ``elements`` in total under bitsandbytes' 4-bit or 8-bit layout."""
    per = elements // count
    if quantization == "4bit":
        blocks = math.ceil(per / BNB_BLOCK)
        one = math.ceil(per / 2) + blocks + 4 * math.ceil(blocks / BNB_NESTED_BLOCK) + BNB_PER_TENSOR
    elif quantization == "8bit":
        one = per + 4 * out_features  # int8 weight + fp32 scale per output row
    else:
        raise ValueError(f"unknown quantization {quantization!r}")
    return one * count


@dataclass(frozen=True)
class Settings:
    """What one job's memory depends on (from the spec; the advice varies one field at a time)."""

    kind: str
    dtype_bytes: int
    quantization: str
    gradient_checkpointing: bool
    batch: int
    max_length: int
    lora_r: int
    lora_targets: tuple[str, ...]
    gpus: int
    encoder_bytes: int = 0
    extra_tokens: int = 0  # evaluate generates evaluation.maxNewTokens past a prompt of up to maxLength

    @classmethod
    def from_spec(cls, spec: RunSpec, kind: str) -> "Settings":
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        model = spec.model
        batch = {"sft": spec.sft.batch_size, "ppo": spec.ppo.mini_batch_size}.get(kind, spec.ppo.generation.batch_size)
        gpus = spec.resources.gpus if jobkinds.kind(kind).distributed else min(spec.resources.gpus, 1)
        encoder = 0
        if kind == jobkinds.EVALUATE and "bertscore" in spec.evaluation.metrics:
            encoder = ENCODER_ALLOWANCE if spec.evaluation.bertscore_model else DEFAULT_ENCODER
        return cls(
            kind=kind,
            dtype_bytes=4 if model.dtype == "float32" else 2,
            quantization=model.quantization,
            gradient_checkpointing=model.gradient_checkpointing,
            batch=batch,
            max_length=model.max_length,
            lora_r=model.lora.r,
            lora_targets=tuple(model.lora.target_modules),
            gpus=max(gpus, 1),
            encoder_bytes=encoder,
            extra_tokens=spec.evaluation.max_new_tokens if kind == jobkinds.EVALUATE else 0,
        )

    @property
    def seq_len(self) -> int:
        return self.max_length + self.extra_tokens

    @property
    def training(self) -> bool:
        return jobkinds.kind(self.kind).trains


def lora_parameters(shape: ModelShape, r: int, targets: tuple[str, ...]) -> int:
    return sum(r * (lin.in_features + lin.out_features) * lin.count for lin in shape.linears() if lin.name in targets)


def layer_elements(shape: ModelShape, s: Settings) -> int:
    """Activation elements one token leaves in one decoder layer (forward)."""
    h = shape.hidden_size
    attention = 6 * h + 3 * shape.q_dim + 3 * shape.kv_dim
    mlp = 3 * h + shape.experts_per_token * (4 * shape.intermediate_size + 2 * h)
    per_layer = [lin for lin in shape.linears() if lin.name in s.lora_targets]
    lora = 0
    for lin in per_layer:
        share = lin.count // shape.num_hidden_layers  # per layer (experts: per expert)
        if lin.name in ("w1", "w2", "w3"):
            share = shape.experts_per_token  # a token passes through its routed experts only
        lora += share * (lin.in_features + s.lora_r)
    return attention + mlp + lora


def inference_elements(shape: ModelShape) -> int:
    """Activation elements per token of a no-grad forward: one layer at a time, one MLP's
    intermediates at a time (for Mixtral: as if one expert took every token)."""
    h = shape.hidden_size
    return 6 * h + 3 * shape.q_dim + 3 * shape.kv_dim + 4 * shape.intermediate_size + 3 * h


def weight_bytes(shape: ModelShape, s: Settings) -> int:
    total = 0
    for lin in shape.linears():
        if s.quantization == "none":
            total += lin.elements * s.dtype_bytes
        else:
            total += quantized_bytes(lin.elements, lin.out_features, lin.count, s.quantization)
    other = 4 if (s.training and s.quantization != "none") else s.dtype_bytes
    return total + sum(shape.other_parameters().values()) * other


@dataclass
class JobPlan:
    kind: str
    gpus: int
    settings: Settings
    shape: ModelShape
    parts: dict[str, int] = field(default_factory=dict)
    capacity: int | None = None  # bytes per GPU
    capacity_from: str = "resources.gpuMemory"

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.capacity is None or self.total <= self.capacity

    def summary(self) -> str:
        """One line: the total, the verdict and the parts."""
        where = f"{self.gpus} GPU{'s' if self.gpus > 1 else ''}"
        verdict = "" if self.capacity is None else (
            f" of {gib(self.capacity)} ({'fits' if self.fits else 'DOES NOT FIT'})"
        )
        parts = ", ".join(f"{name} {gib(n)}" for name, n in self.parts.items() if n >= GIB / 20)
        return f"{self.kind}: {gib(self.total)} GiB per GPU{verdict} on {where} [{parts}]"


def plan_job(shape: ModelShape, s: Settings, capacity: int | None = None, capacity_from: str = "resources.gpuMemory") -> JobPlan:
    """The peak-memory estimate of one job with these settings."""
    a = s.dtype_bytes
    h, vocab, layers = shape.hidden_size, shape.vocab_size, shape.num_hidden_layers
    weights = weight_bytes(shape, s)
    lora = lora_parameters(shape, s.lora_r, s.lora_targets) + (h + 1 if s.kind == jobkinds.PPO else 0)
    layer = layer_elements(shape, s)
    parts: dict[str, int] = {"weights": weights}
    if s.training:
        tokens = s.batch * s.seq_len
        parts["adapter+optimizer"] = lora * (16 + (4 if s.gpus > 1 else 0))
        if s.gradient_checkpointing:
            parts["activations"] = tokens * a * (layers * h + 2 * layer)
        else:
            parts["activations"] = tokens * a * (layers + 1) * layer
        parts["logits"] = tokens * vocab * (a + 8)
    else:
        tokens = s.batch * s.seq_len
        parts["adapter"] = lora * 4
        parts["kv cache"] = 2 * layers * shape.kv_dim * a * tokens
        parts["activations"] = tokens * a * inference_elements(shape)  # the prefill
        parts["logits"] = s.batch * vocab * 4 * 3  # last position, softmax, top-p sort
    if s.quantization != "none":
        largest = max(lin.out_features * lin.in_features for lin in shape.linears())
        parts["dequantization"] = 2 * largest * a
    if s.encoder_bytes:
        parts["encoder"] = s.encoder_bytes
    step = sum(v for k, v in parts.items() if k not in ("weights", "adapter", "adapter+optimizer", "encoder"))
    parts["cuda context+slack"] = CUDA_CONTEXT + int(WEIGHT_SLACK * weights + STEP_SLACK * step)
    return JobPlan(kind=s.kind, gpus=s.gpus, settings=s, shape=shape, parts=parts, capacity=capacity,
                   capacity_from=capacity_from)


def plan_run(spec: RunSpec, shape: ModelShape, capacity: int | None = None,
             capacity_from: str = "resources.gpuMemory") -> list[JobPlan]:
    """The plan of every job the run starts (sft and evaluate only when enabled)."""
    kinds = [k for k in KINDS if not (k == jobkinds.SFT and not spec.sft.enabled) and not (k == jobkinds.EVALUATE and not spec.evaluation.enabled)]
    return [plan_job(shape, Settings.from_spec(spec, k), capacity, capacity_from) for k in kinds]


def advice(plan: JobPlan) -> str:
    """The first single change that makes an over-budget plan fit, as 'set X: Y (then N GiB)'."""
    if plan.fits:
        return ""
    s, shape, cap = plan.settings, plan.shape, plan.capacity

    def total(**change) -> int:
        return plan_job(shape, dataclasses.replace(s, **change), cap).total

    if s.training and not s.gradient_checkpointing and total(gradient_checkpointing=True) <= cap:
        return f"set model.gradientCheckpointing: true (then {gib(total(gradient_checkpointing=True))} GiB)"
    for batch in range(s.batch - 1, 0, -1):
        if total(batch=batch) <= cap:
            return f"set {BATCH_SETTING[s.kind]} to {batch} or lower (then {gib(total(batch=batch))} GiB)"
    for length in (8192, 4096, 2048, 1024, 512, 256):
        if length < s.max_length and total(max_length=length) <= cap:
            return f"set model.maxLength to {length} or lower (then {gib(total(max_length=length))} GiB)"
    if s.quantization != "4bit" and total(quantization="4bit") <= cap:
        return f"set model.quantization: 4bit (then {gib(total(quantization='4bit'))} GiB)"
    smallest = total(batch=1, max_length=min(256, s.max_length), quantization="4bit")
    return f"use GPUs with more memory (resources.gpuMemory, nodeSelector; even 4-bit at batch 1 and maxLength 256 needs {gib(smallest)} GiB)"


def refusal(plan: JobPlan) -> str:
    """The one-line error for a plan that does not fit."""
    return (
        f"memory plan: the {plan.kind} job needs about {gib(plan.total)} GiB per GPU but the GPU has "
        f"{gib(plan.capacity or 0)} GiB ({plan.capacity_from}): {advice(plan)}"
    )


class MemoryPlanError(ValueError):
    """A plan that cannot fit; str() is the one line ``refusal`` writes."""


def check(plan: JobPlan) -> JobPlan:
    """The plan itself if it fits, else MemoryPlanError with the one-line refusal."""
    if not plan.fits:
        raise MemoryPlanError(refusal(plan))
    return plan
