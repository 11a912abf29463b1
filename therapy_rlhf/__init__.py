"""therapy-rlhf: PPO fine-tuning with a psychologist as the reward function."""

__version__ = "0.1.0"
