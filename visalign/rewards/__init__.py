"""Rewards: batched `reward(images [B, 3, H, W] in [-1, 1], prompts) -> RewardOutput`, registered by name."""

from .base import REWARDS, Reward, load_reward
from . import geneval_s  # noqa: F401  (registers)

__all__ = ["REWARDS", "Reward", "load_reward"]
