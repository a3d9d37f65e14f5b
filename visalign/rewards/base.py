"""The Reward interface and its registry."""

from __future__ import annotations

import torch

from ..registry import Registry, split_spec
from ..types import RewardOutput

REWARDS = Registry("reward")


class Reward:
    """Scores a batch of images: `reward(images [B, 3, H, W] in [-1, 1], prompts [B], metadata) -> RewardOutput`.

    Subclasses declare what they can do, so algorithms can refuse early: `differentiable` (gradients flow from
    scores to images), `needs_text`, `value_range`. Learned rewards hold their networks as nn.Module
    attributes; `to(device)` moves every one of them and sets `device`, where they move the images to.
    `metadata` may carry the trainer's grouping: "group_size" and "group_ids" [B] (samples of one prompt)."""

    name: str = "reward"
    differentiable: bool = False
    needs_text: bool = True
    value_range: tuple[float, float] = (0.0, 1.0)
    device: torch.device = torch.device("cpu")

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: dict | None = None) -> RewardOutput:
        raise NotImplementedError

    def to(self, device: str | torch.device) -> "Reward":
        self.device = torch.device(device)
        for v in vars(self).values():
            if isinstance(v, (torch.nn.Module, Reward)):
                v.to(self.device)
        return self


def load_reward(name: str, **options) -> Reward:
    factory = REWARDS.get(name)
    try:
        return factory(**options)
    except TypeError as e:
        raise ValueError(f"reward '{name}' does not take options {sorted(options)}: {e}") from None


def load_reward_spec(spec: str) -> Reward:
    """'name' or 'name?key=value&...' (the option syntax of model specs) -> the reward: how judges and
    `visalign eval --reward` name a reward with its options, e.g. 'geneval_s?exact=true'."""
    name, options = split_spec(spec)
    return load_reward(name, **options)
