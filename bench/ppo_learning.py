"""Print the PPO learning curve and its shuffled-reward control on the tiny Mistral.

    python bench/ppo_learning.py              # 15 rounds each (about 1-4 minutes on 2 cores)
    python bench/ppo_learning.py --rounds 8   # what tests/jobs/test_learning.py runs

Both runs use ``therapy_rlhf.jobs.learning``: the real generate and ppo jobs
in process, the simulated rater's empathy-lexicon reward through the real
rating and gate functions, the settings of ``learning_manifest``. The curve
is the mean reward of each round's fresh batch (before that round's update).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from therapy_rlhf.jobs import learning
from therapy_rlhf.store.backends import LocalStore

CONTROL_SHUFFLE_SEED = 7


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    curves = {}
    with tempfile.TemporaryDirectory(prefix="ppo-learning-") as tmp:
        for name, shuffle in (("rewards", None), ("shuffled", CONTROL_SHUFFLE_SEED)):
            manifest = learning.learning_manifest(Path(tmp) / name, name=f"learning-{name}")
            started = time.perf_counter()
            results = learning.run_loop(
                manifest,
                LocalStore(Path(tmp) / name),
                args.rounds,
                shuffle_seed=shuffle,
                report=lambda r, n=name: print(
                    f"  {n:8s} round {r.round:2d}: reward {r.mean_reward:.3f} (sd {r.stdev:.3f}), KL {r.kl:.2f}, {r.seconds:.1f}s",
                    file=sys.stderr,
                    flush=True,
                ),
            )
            curves[name] = (results, time.perf_counter() - started)
    spec = learning.learning_manifest("/unused").spec
    print(
        f"tiny:mistral, {len(spec.ppo.prompts)} prompts x {spec.ppo.samples_per_prompt} samples, "
        f"maxNewTokens {spec.ppo.generation.max_new_tokens}, lr {spec.ppo.learning_rate}, epochs {spec.ppo.epochs}, "
        f"miniBatchSize {spec.ppo.mini_batch_size}, LoRA on {','.join(spec.model.lora.target_modules)}"
    )
    print()
    print("| round | mean reward (real rewards) | mean reward (shuffled control) |")
    print("|---:|---:|---:|")
    real, control = curves["rewards"][0], curves["shuffled"][0]
    for a, b in zip(real, control):
        print(f"| {a.round} | {a.mean_reward:.3f} ± {a.stdev:.3f} | {b.mean_reward:.3f} ± {b.stdev:.3f} |")
    print()
    print(f"wall time: real rewards {curves['rewards'][1]:.0f}s, control {curves['shuffled'][1]:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
