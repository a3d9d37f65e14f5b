"""Rewards: batched `reward(images [B, 3, H, W] in [-1, 1], prompts) -> RewardOutput`, registered by name; video
rewards (`video = True`: frame_consistency, motion_smoothness, per_frame, video_reward) read videos
[B, F, 3, H, W] instead."""

from . import clip, combine, compressibility, image_reward, ocr, server, video, video_reward, vlm_judge  # noqa: F401
from .base import REWARDS, Reward, load_reward, load_reward_spec

__all__ = ["REWARDS", "Reward", "load_reward", "load_reward_spec"]
