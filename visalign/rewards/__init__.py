"""Rewards: batched `reward(images [B, 3, H, W] in [-1, 1], prompts) -> RewardOutput`, registered by name."""

from . import clip, combine, compressibility, image_reward, ocr, server, vlm_judge  # noqa: F401  (registers)
from .base import REWARDS, Reward, load_reward, load_reward_spec

__all__ = ["REWARDS", "Reward", "load_reward", "load_reward_spec"]
