"""Feedback: from the experts' ratings to the rewards a round trains on.

Owns the reward rules (``rewards``), the verified round reads (``rounds``),
the exactly-once rating submit (``submit``), the gate and its one close
(``gate``), what each round amounts to (``summary``), which responses go to
the experts and the reward model's part (``selection``, ``reward_model``),
the review after a gate closed (``review``), ratings imported from files
(``importer``), what awaits a rater (``pending``) and the simulated rater
(``simrater``).

May import: ``therapy_rlhf.contracts``, ``therapy_rlhf.store.backends``, numpy,
krippendorff. Never: planning, execution, the CLI, the operator, the jobs,
the TUI.
"""
