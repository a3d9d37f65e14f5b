"""Two rewards: a class (`visalign_example_plugin.rewards:Saturation`) and a function that builds one
(`visalign_example_plugin.rewards:sharpness`). Keyword arguments are the reward's options, typed from the
signature: `reward_options: {power: 2}` in a recipe, or `...:Saturation?power=2` as a spec."""

from __future__ import annotations

from visalign.config import PositiveFloat
from visalign.rewards import Reward
from visalign.types import RewardOutput


class Saturation(Reward):
    """Mean colour saturation, (max(r, g, b) - min(r, g, b)) / 2 per pixel, in [0, 1]; raised to `power`. Grey
    images score 0, pure primaries 1. Differentiable: the reward-gradient algorithms can train on it."""

    name = "saturation"
    differentiable = True
    needs_text = False
    value_range = (0.0, 1.0)

    def __init__(self, power: PositiveFloat = 1.0):
        self.power = power

    def __call__(self, images, prompts, metadata=None):
        sat = (images.amax(dim=1) - images.amin(dim=1)) / 2  # [B, H, W]; images are in [-1, 1]
        per_image = sat.mean(dim=(1, 2))  # [B]
        return RewardOutput(per_image ** self.power, {"saturation": per_image.detach()})


class Sharpness(Reward):
    """Mean absolute difference between neighbouring pixels (a gradient-magnitude sharpness), in [0, 1]."""

    name = "sharpness"
    differentiable = True
    needs_text = False
    value_range = (0.0, 1.0)

    def __call__(self, images, prompts, metadata=None):
        dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean(dim=(1, 2, 3))
        dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean(dim=(1, 2, 3))
        return RewardOutput((dx + dy) / 4)  # each difference is at most 2


def sharpness() -> Sharpness:
    """A factory function works as well as a class: it returns the Reward."""
    return Sharpness()

