"""Does the generate job's sampler draw from the distribution the PPO update scores? A diagnostic.

    python -m therapy_rlhf.jobs.sampler_agreement --model tiny:mistral --samples 2000 --temperature 0.7

Draws ``samples`` responses to one prompt with ``generate.sample_responses``
(the generate job's sampler) and scores every drawn token with
``ppo_trainer.forward_responses`` (the update's distribution). If the two
agree, the randomised probability integral transform of each token, with the
vocabulary ordered from most to least likely, ``u = F(x-) + U * p(x)``, is
uniform on 0..1 and independent across positions (Smith 1985 for sequential
PIT). The Kolmogorov-Smirnov distance of the u's from uniform is the test
statistic: about 1/sqrt(n) when they agree, close to 1 when the sampler
truncates what the update does not (transformers' implicit top_k=50).

Also reported: the share of drawn tokens outside the update's top 50 and
the update's own mass there (equal when they agree).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from therapy_rlhf.jobs import generate, models, ppo_trainer
from therapy_rlhf.contracts.spec import PromptSpec

TOP = 50
CHUNK = 256


@dataclass
class Agreement:
    tokens: int
    ks_distance: float
    ks_critical_001: float  # the distance a correct sampler exceeds with probability 0.001
    outside_top_sampled: float  # share of drawn tokens outside the update's top-50
    outside_top_expected: float  # the update's mean probability mass outside its top-50

    @property
    def agrees(self) -> bool:
        return self.ks_distance < self.ks_critical_001


def ks_distance(u: torch.Tensor) -> float:
    """sup |F_n(x) - x| of the sample ``u`` against Uniform(0, 1)."""
    u, _ = torch.sort(u.double())
    n = len(u)
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(ranks / n - u, u - (ranks - 1) / n).max())


def score(
    model: Any, tokenizer: Any, rollouts: list[generate.Rollout], temperature: float, seed: int = 0
) -> Agreement:
    """The agreement statistics of rollouts under the update's distribution at ``temperature``."""
    gen = torch.Generator().manual_seed(seed)
    us, outside_sampled, outside_mass = [], [], []
    samples = [ppo_trainer.Sample(r.prompt_ids, r.response_ids, 0.0) for r in rollouts if r.response_ids]
    width = max(len(s.response_ids) for s in samples)
    model.eval()
    for first in range(0, len(samples), CHUNK):
        chunk = samples[first : first + CHUNK]
        with torch.no_grad():
            fwd = ppo_trainer.forward_responses(
                model, None, chunk, width, tokenizer.pad_token_id, "cpu", temperature=temperature, with_logits=True
            )
        probs = torch.softmax(fwd.logits.double(), dim=-1)  # [B, T, V]
        order = torch.argsort(probs, dim=-1, descending=True)
        sorted_p = torch.gather(probs, -1, order)
        cdf = torch.cumsum(sorted_p, dim=-1)
        rank_of = torch.argsort(order, dim=-1)  # token id -> rank
        for i, s in enumerate(chunk):
            for t, tok in enumerate(s.response_ids):
                rank = int(rank_of[i, t, tok])
                p = float(sorted_p[i, t, rank])
                below = float(cdf[i, t, rank]) - p
                us.append(below + float(torch.rand((), generator=gen, dtype=torch.float64)) * p)
                outside_sampled.append(rank >= TOP)
                outside_mass.append(1.0 - float(cdf[i, t, TOP - 1]))
    u = torch.tensor(us, dtype=torch.float64)
    n = len(us)
    return Agreement(
        tokens=n,
        ks_distance=ks_distance(u),
        ks_critical_001=1.949 / math.sqrt(n),  # asymptotic KS quantile at alpha = 0.001
        outside_top_sampled=sum(outside_sampled) / n,
        outside_top_expected=sum(outside_mass) / n,
    )


def draw(model: Any, tokenizer: Any, prompt: str, samples: int, temperature: float, max_new_tokens: int, seed: int) -> list[generate.Rollout]:
    """``samples`` responses from the generate job's sampler."""
    rollouts, _ = generate.sample_responses(
        model, tokenizer, [PromptSpec(id="probe", text=prompt)],
        samples_per_prompt=samples, temperature=temperature, max_new_tokens=max_new_tokens,
        batch_size=1, seed=seed, round_no=1, device="cpu", max_length=10_000,
    )
    return rollouts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:mistral", help="model source (tiny:mistral, a local path, ...)")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--prompt", default="I'm feeling depressed and hopeless. Can you help me?")
    args = parser.parse_args(argv)
    from therapy_rlhf.contracts.spec import ModelSpec

    model, tokenizer = models.load_base_model(ModelSpec(source=args.model), "cpu")
    rollouts = draw(model, tokenizer, args.prompt, args.samples, args.temperature, args.max_new_tokens, seed=0)
    result = score(model, tokenizer, rollouts, args.temperature)
    print(json.dumps({**asdict(result), "agrees": result.agrees}, indent=2))
    return 0 if result.agrees else 1


if __name__ == "__main__":
    raise SystemExit(main())
