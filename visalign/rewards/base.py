"""The Reward interface and its registry."""

from __future__ import annotations

import torch

from ..registry import Registry
from ..types import RewardOutput

REWARDS = Registry("reward")


class Reward:
    """Scores a batch of images. Subclasses declare what they can do, so algorithms can refuse early:
    `differentiable` (gradients flow from scores to images), `needs_text`, `value_range`."""

    name: str = "reward"
    differentiable: bool = False
    needs_text: bool = True
    value_range: tuple[float, float] = (0.0, 1.0)

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: dict | None = None) -> RewardOutput:
        raise NotImplementedError


def load_reward(name: str, **options) -> Reward:
    factory = REWARDS.get(name)
    try:
        return factory(**options)
    except TypeError as e:
        raise ValueError(f"reward '{name}' does not take options {sorted(options)}: {e}") from None
