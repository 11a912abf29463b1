"""The sampler is the policy: how PPO rollouts are drawn, recorded, and scored again by the update.

PPO's probability ratios and its KL penalty assume that every response token
was drawn from the very distribution the update computes. transformers'
``generate()`` fills every sampling parameter the caller leaves unset from
the model's ``generation_config.json`` and then from its own defaults (among
them ``top_k=50``), so a caller that passes only temperature and top_p
samples from a truncated distribution the update never sees. Here:

* ``generation_kwargs`` passes every parameter that changes the next-token
  distribution explicitly: sampling on, the temperature, and every
  truncation, penalty and forcing option at its neutral value (``top_k=0``,
  ``top_p=1``, no repetition penalty, no minimum length, ...);
* ``resolve`` builds the exact ``GenerationConfig`` generate() will run with
  and the logits processors it implies, and refuses anything but the
  temperature warper (a model config could otherwise slip one in);
* the batch record keeps that whole config (``GenerationSettings.config``)
  and the processors; the PPO update reads the temperature back
  (``update_temperature``) and scores ``log_softmax(logits / temperature)``,
  as TRL's later PPO trainer does, for the policy, the rollout and the
  reference alike.

Truncated sampling (top_p < 1, top_k > 0) would need the update to score the
renormalised truncated distribution, whose support changes with every
update; it is refused for PPO rounds instead (``GenerationSpec``).
Evaluation's greedy decoding is separate (``evaluate.generate_all``).
"""

from __future__ import annotations

import copy
from typing import Any

from therapy_rlhf.jobs.common import JobError
from therapy_rlhf.contracts.records import GenerationSettings, PendingResponse

# The only logits processor an untruncated sampler at temperature T != 1 runs.
ALLOWED_PROCESSORS = {"TemperatureLogitsWarper"}

# Every generate() option that changes the next-token distribution, at the value that leaves it alone.
NEUTRAL_SAMPLING = {
    "do_sample": True,
    "num_beams": 1,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": None,
    "top_h": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "sequence_bias": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "min_length": 0,
    "min_new_tokens": None,
    "exponential_decay_length_penalty": None,
    "guidance_scale": None,
    "renormalize_logits": False,
    "remove_invalid_values": False,
    "watermarking_config": None,
}


def generation_kwargs(
    *, temperature: float, max_new_tokens: int, pad_token_id: int, top_p: float = 1.0, top_k: int = 0
) -> dict[str, Any]:
    """Every sampling parameter for generate(), explicit; only untruncated sampling is accepted."""
    if top_p != 1.0 or top_k != 0:
        raise JobError(
            f"PPO rollouts are sampled untruncated (top_p 1, top_k 0), got top_p {top_p}, top_k {top_k}: "
            "the update scores every token under the whole distribution"
        )
    if not temperature > 0:
        raise JobError(f"sampling temperature must be > 0 (got {temperature})")
    return {**NEUTRAL_SAMPLING, "temperature": float(temperature), "max_new_tokens": int(max_new_tokens),
            "pad_token_id": pad_token_id}


def _hf_model(model: Any) -> Any:
    """The transformers model under a peft wrapper (whose generate() delegates to it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def resolve(model: Any, kwargs: dict[str, Any]) -> tuple[Any, list[str]]:
    """(the GenerationConfig generate() runs with, names of its logits processors).

    Uses the same two steps generate() itself takes (merging model defaults,
    building processors), so what is recorded is what runs. JobError when
    anything but temperature scaling would touch the logits.
    """
    hf = _hf_model(model)
    config, _ = hf._prepare_generation_config(None, **kwargs)
    probe = copy.deepcopy(config)
    hf._prepare_special_tokens(probe, True, device="cpu")
    processors = [type(p).__name__ for p in hf._get_logits_processor(generation_config=probe, device="cpu")]
    extra = [p for p in processors if p not in ALLOWED_PROCESSORS]
    if extra:
        raise JobError(
            f"the generation config would apply {', '.join(extra)}: the sampler would not be the policy "
            "the PPO update scores"
        )
    return config, processors


def record_config(config: Any) -> dict[str, Any]:
    """The generation config as stored in the batch: every set value, nothing private."""
    return {
        k: v
        for k, v in config.to_dict().items()
        if v is not None and not k.startswith("_") and k != "transformers_version"
    }


def settings(config: Any, processors: list[str], seed: int) -> GenerationSettings:
    """The batch record's generation settings from a resolved config."""
    return GenerationSettings(
        temperature=float(config.temperature),
        top_p=float(config.top_p),
        top_k=int(config.top_k),
        max_new_tokens=int(config.max_new_tokens),
        seed=seed,
        do_sample=bool(config.do_sample),
        logits_processors=list(processors),
        config=record_config(config),
    )


def update_temperature(responses: list[PendingResponse]) -> tuple[float, list[str]]:
    """The temperature the update must score with, and warnings about batches it cannot score exactly.

    Every response of a batch is sampled with one setting; a mix is refused.
    A batch written before the full config was recorded was sampled with
    transformers' implicit top_k=50, which the update cannot undo: it is
    scored at its temperature and a warning says the ratios are biased.
    """
    temps = {r.generation.temperature if r.generation else 1.0 for r in responses}
    if len(temps) != 1:
        raise JobError(f"the batch mixes sampling temperatures {sorted(temps)}: one update scores one distribution")
    warnings = []
    if any(r.generation is None or r.generation.top_k is None for r in responses):
        warnings.append(
            "the batch records no top_k (written before sampling settings were recorded in full): it was sampled "
            "with transformers' default top_k=50, so the update's ratios and KL are biased for this round"
        )
    elif any(r.generation.top_k != 0 or r.generation.top_p != 1.0 for r in responses):
        raise JobError("the batch was sampled with top_k/top_p truncation, which the PPO update cannot score")
    return temps.pop(), warnings
