"""The ``generate`` job: sample responses from the current policy for the expert to rate.

    python -m therapy_rlhf.jobs generate --run-config examples/tiny-local.yaml --round 1 --store /tmp/store

For round r the policy is the base model with the adapter
``RunPaths.policy_for_round(r, sft.enabled)`` (the SFT adapter in round 1, or
the base itself when SFT is off; round r-1's PPO adapter afterwards). Each
prompt is rendered with the tokenizer's chat template and sampled
``ppo.samplesPerPrompt`` times, ``generation.batchSize`` prompts per
``generate()`` call. Sampling is seeded with ``generation.seed + round`` (and
the batch's index), so a retried job reproduces the same batch on the same
hardware. The exact prompt and response token ids are kept: the PPO update
scores those tokens, not a re-tokenisation of the text.

The sampler is the policy (``sampling.py``): every sampling parameter is
passed explicitly (untruncated, ``top_k=0``, at ``generation.temperature``)
and the whole generation config generate() ran with is recorded in each
response's ``generation``, so the PPO update scores exactly that
distribution.

The rater sees what the policy is trained on: special or control tokens
inside a response (``[INST]``, ``<s>``, role markers of the chat template)
stay in the text verbatim and are listed in ``special_tokens``; only the
final end-of-sequence token, which ends the response, is not shown.

The batch's fluency (``fluency.py``: log-likelihood under the frozen base,
dictionary-word share) is written to ``rounds/{r}/fluency.json`` just before
it; the planner pauses the run on it (``spec.fluency``).

Every response passes the safety screen (``safety.py``); the findings go on
the record for the rater to see. The job writes ``rounds/{r}/batch.jsonl``
once, as one whole object, which is also its completion marker; an existing
batch is never replaced (ratings refer to it).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from therapy_rlhf.contracts import names
from therapy_rlhf.feedback import predictions as sealed
from therapy_rlhf.feedback import selection
from therapy_rlhf.jobs import encoder, fluency, models, prompts, safety, sampling
from therapy_rlhf.jobs.common import JobContext, JobError
from therapy_rlhf.contracts.records import GenerationSettings, PendingResponse, dump_batch
from therapy_rlhf.contracts.spec import PromptSpec
from therapy_rlhf.store.backends import AlreadyExists

BASE_POLICY = "base"  # ``policy`` of responses sampled from the base model itself
MAX_ID = 80


def response_id(round_no: int, prompt_id: str, sample: int) -> str:
    """``r0001-<prompt_id>-s00``; a long prompt id is shortened with a hash so ids stay unique and valid."""
    head, tail = f"r{round_no:04d}-", f"-s{sample:02d}"
    room = MAX_ID - len(head) - len(tail)
    if len(prompt_id) > room:
        digest = hashlib.sha256(prompt_id.encode()).hexdigest()[:8]
        prompt_id = prompt_id[: room - 9].rstrip("._-") + "-" + digest
    return names.item_id(head + prompt_id + tail)


def batch_seed(base_seed: int, round_no: int, batch_index: int) -> int:
    """The seed of one generate() call: generation.seed + round, spread per batch."""
    return (base_seed + round_no) * 1_000_003 + batch_index


@dataclass
class Rollout:
    prompt: PromptSpec
    sample: int
    prompt_ids: list[int]
    response_ids: list[int]
    text: str  # special tokens inside the response shown verbatim
    special_tokens: list[str] = field(default_factory=list)


def special_token_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special and control tokens ([INST], <s>, </s>, <unk>, added specials)."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(tok, "special", False))
    return ids


def visible_text(tokenizer: Any, ids: list[int], eos_ids: set[int], special: set[int]) -> tuple[str, list[str]]:
    """(text with every special token shown, the special tokens in order); the final EOS ends the text."""
    body = ids[:-1] if ids and ids[-1] in eos_ids else ids
    found = [tokenizer.convert_ids_to_tokens(t) for t in body if t in special]
    return tokenizer.decode(body, skip_special_tokens=False).strip(), found


def _trim(ids: list[int], eos_ids: set[int], pad_id: int | None) -> list[int]:
    """Cut a generated row after its first EOS (kept: stopping is an action the policy took).

    generate() fills a finished row with padding only after its EOS, so a pad
    token before any EOS was sampled by the policy (the untruncated sampler
    can draw any token): it is kept as the response's last token, so the
    update scores what was drawn, and the rest of the row is dropped.
    """
    out = []
    for tok in ids:
        out.append(tok)
        if tok in eos_ids or tok == pad_id:
            break
    return out


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
    return set(eos) if isinstance(eos, (list, tuple)) else {eos}


def sample_responses(
    model: Any,
    tokenizer: Any,
    prompt_list: list[PromptSpec],
    *,
    samples_per_prompt: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    round_no: int,
    device: str,
    max_length: int,
    log: Any = None,
    top_p: float = 1.0,
    top_k: int = 0,
    system: str | None = None,
) -> tuple[list[Rollout], dict[str, Any]]:
    """Sample every prompt ``samples_per_prompt`` times, untruncated at ``temperature``.

    Returns the rollouts and stats: throughput, and ``generation_config`` /
    ``logits_processors``, what generate() ran with (``sampling.resolve``).
    """
    import torch

    eos_ids = _eos_ids(model, tokenizer)
    special = special_token_ids(tokenizer)
    kwargs = sampling.generation_kwargs(
        temperature=temperature, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, top_p=top_p, top_k=top_k
    )
    config, processors = sampling.resolve(model, kwargs)
    rendered = [
        tokenizer(
            models.format_chat(tokenizer, [{"role": "user", "content": p.text}], system=system), add_special_tokens=False
        )["input_ids"]
        for p in prompt_list
    ]
    limit = max_length - max_new_tokens
    if limit < 1:
        raise JobError(f"model.maxLength {max_length} leaves no room for a prompt with maxNewTokens {max_new_tokens}")
    for p, ids in zip(prompt_list, rendered):
        if len(ids) > limit:
            raise JobError(
                f"prompt {p.id!r} is {len(ids)} tokens: with maxNewTokens {max_new_tokens} it exceeds model.maxLength {max_length}"
            )
    rollouts: list[Rollout] = []
    new_tokens = 0
    started = time.perf_counter()
    model.eval()
    for b, first in enumerate(range(0, len(prompt_list), batch_size)):
        chunk = list(range(first, min(first + batch_size, len(prompt_list))))
        width = max(len(rendered[i]) for i in chunk)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(rendered[i])) + rendered[i] for i in chunk], device=device)
        attention = torch.tensor([[0] * (width - len(rendered[i])) + [1] * len(rendered[i]) for i in chunk], device=device)
        torch.manual_seed(batch_seed(seed, round_no, b))
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                **kwargs,  # every sampling parameter explicit; ``config`` is what they resolve to
                num_return_sequences=samples_per_prompt,
            )
        generated = out[:, width:].tolist()
        for row, ids in enumerate(generated):
            prompt_index = chunk[row // samples_per_prompt]
            response = _trim(ids, eos_ids, pad)
            new_tokens += len(response)
            text, specials = visible_text(tokenizer, response, eos_ids, special)
            rollouts.append(
                Rollout(
                    prompt=prompt_list[prompt_index],
                    sample=row % samples_per_prompt,
                    prompt_ids=rendered[prompt_index],
                    response_ids=response,
                    text=text,
                    special_tokens=specials,
                )
            )
        if log:
            log("batch %d: %d prompts x %d samples", b + 1, len(chunk), samples_per_prompt)
    seconds = time.perf_counter() - started
    stats = {
        "responses": len(rollouts),
        "new_tokens": new_tokens,
        "generation_seconds": round(seconds, 3),
        "tokens_per_second": round(new_tokens / max(seconds, 1e-9), 1),
        "responses_with_special_tokens": sum(1 for r in rollouts if r.special_tokens),
        "generation_config": config,
        "logits_processors": processors,
    }
    return rollouts, stats


def build_records(
    rollouts: list[Rollout], round_no: int, policy_key: str, settings: GenerationSettings, resources: list | None = None
) -> list[PendingResponse]:
    """Pending responses, each screened (``resources``: the run's verified crisis resources)."""
    return [
        PendingResponse(
            id=response_id(round_no, r.prompt.id, r.sample),
            round=round_no,
            prompt_id=r.prompt.id,
            prompt=r.prompt.text,
            response=r.text,
            prompt_token_ids=r.prompt_ids,
            response_token_ids=r.response_ids,
            special_tokens=r.special_tokens,
            policy=policy_key,
            generation=settings,
            safety=safety.screen(r.prompt.text, r.text, resources=resources),
        )
        for r in rollouts
    ]


def main(ctx: JobContext) -> None:
    spec, paths, round_no = ctx.spec, ctx.paths, ctx.round
    key = paths.batch(round_no)
    if ctx.store.exists(key):
        ctx.progress("%s already exists: nothing to do (a batch is never replaced)", ctx.store.describe(key))
        return
    check_response_ids(spec, round_no)
    adapter = paths.policy_for_round(round_no, spec.sft.enabled)
    import torch

    torch.manual_seed(spec.ppo.seed)  # a fresh LoRA (no SFT) is initialised the same way on a retry
    model, tokenizer, _ = models.load_policy(ctx, adapter, trainable=False)
    ctx.begin_work()
    write_batch(ctx, model, tokenizer, round_no)


def check_response_ids(spec: Any, round_no: int) -> None:
    """JobError when two prompts would give the same response id."""
    prompt_list = prompts.load_prompts(spec.ppo)
    ids = [response_id(round_no, p.id, k) for p in prompt_list for k in range(spec.ppo.samples_per_prompt)]
    if len(set(ids)) != len(ids):
        raise JobError("two prompts map to the same response id; shorten the prompt ids")


def write_batch(ctx: JobContext, model: Any, tokenizer: Any, round_no: int) -> None:
    """Sample round ``round_no``'s batch from ``model`` (its policy) and write it, once.

    The ``generate`` job calls it with the policy it loaded; ``ppo-generate``
    with the policy it has just updated (round ``round_no - 1``'s checkpoint).
    """
    spec, paths = ctx.spec, ctx.paths
    key = paths.batch(round_no)
    adapter = paths.policy_for_round(round_no, spec.sft.enabled)
    prompt_list = prompts.load_prompts(spec.ppo)
    gen = spec.ppo.generation
    rollouts, stats = sample_responses(
        model,
        tokenizer,
        prompt_list,
        samples_per_prompt=spec.ppo.samples_per_prompt,
        temperature=gen.temperature,
        top_p=gen.top_p,
        top_k=gen.top_k,
        max_new_tokens=gen.max_new_tokens,
        batch_size=gen.batch_size,
        seed=gen.seed,
        round_no=round_no,
        device=ctx.device,
        max_length=spec.model.max_length,
        log=ctx.progress,
        system=spec.model.system_message,
    )
    settings = sampling.settings(stats["generation_config"], stats["logits_processors"], gen.seed + round_no)
    records = build_records(rollouts, round_no, adapter or BASE_POLICY, settings, spec.safety.crisis_resources)
    flagged = sum(1 for r in records if r.safety.risky_content or r.safety.missing_crisis_resources
                  or r.safety.unverified_resources or r.safety.no_verified_resource)
    ctx.progress(
        "generated %d responses, %d new tokens in %.2fs (%.1f tokens/s); %d flagged by the safety screen, "
        "%d with special tokens; sampled at temperature %g, top_k %d, top_p %g (%s)",
        stats["responses"], stats["new_tokens"], stats["generation_seconds"], stats["tokens_per_second"], flagged,
        stats["responses_with_special_tokens"], settings.temperature, settings.top_k, settings.top_p,
        ", ".join(settings.logits_processors) or "no logits processor",
    )
    if not ctx.is_main_process:
        return
    if spec.feedback.selection.mode != "all":
        # Which responses the experts see (and the reward model's view of all of them), before the
        # batch: the batch is the marker, so a retry that finds no batch selects again, the same way.
        chosen, predictions = selection.select(
            ctx.store, paths, spec.feedback, round_no, records, log=ctx.progress,
            features=encoder.reward_model_features(ctx, tokenizer, spec.feedback.selection.features),
        )
        chosen = sealed.seal(encoder.predictions_vault(ctx), chosen, predictions)
        ctx.store.write_json(paths.selection(round_no), chosen.model_dump(mode="json"))
    measured = fluency.measure(model, tokenizer, records, ctx.device)
    ctx.progress(
        "fluency of round %d's batch: mean log-likelihood under the base model %s, dictionary words %s",
        round_no, measured["mean_log_likelihood"], measured["dictionary_share"],
    )
    ctx.store.write_json(paths.fluency(round_no), measured)  # before the batch, the round's marker
    try:
        ctx.store.create_bytes(key, dump_batch(records))
    except AlreadyExists:
        raise JobError(f"{ctx.store.describe(key)} was written by another attempt meanwhile; keeping that one") from None
    ctx.progress("wrote %s (%d responses)", ctx.store.describe(key), len(records))
