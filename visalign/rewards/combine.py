"""`combine`: a weighted sum of several rewards, each normalised inside the trainer's groups first.

    reward: combine
    reward_options:
      normalize: group          # group (default) | batch | none
      components:
        geneval_s: {weight: 1.0}
        compressibility: {weight: 0.5, options: {quality: 90}}

In training rollouts (the trainer passes metadata["group_ids"]) each component's scores are standardised
within each group of samples of one prompt before weighting: (r - mean_group) / (std_group + eps). Rewards on
different scales (a 0-1 verifier, a JPEG size in kB, PickScore's ~20) then pull with the weights given, not
with their units; this is the per-reward group normalisation of multi-reward GRPO (Flow-GRPO's multi-reward
runs normalise each reward's advantages before summing). Groups of one sample (DDPO's group_size 1) use the
whole batch instead; `normalize: batch` always uses the batch; `none` sums the raw scores (then a reward's
scale is its weight). Without group information (held-out evaluation, `visalign make-pairs`, a served reward)
the score is the weighted sum of the raw scores: a fixed scale that can be compared across checkpoints, where
a standardised batch would always average 0. Every component's raw scores are returned in details under its
name, so the trainer logs each one. The components all judge images or all judge videos (`video = True`, e.g.
frame_consistency, per_frame: rewards/video.py); a mix is refused."""

from __future__ import annotations

import math

import torch

from ..config import PositiveFloat
from ..types import RewardOutput
from .base import REWARDS, Reward, load_reward

NORMALIZE = ("group", "batch", "none")


def group_standardize(r: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """r [B], group_ids [B] (any integer labels) -> (r - group mean) / (group std + eps) [B]; population std,
    so a group whose samples all scored the same gives 0 for all of them (it carries no preference)."""
    _, inv = torch.unique(group_ids, return_inverse=True)  # [B] in 0..G-1
    n_groups = int(inv.max()) + 1
    inv = inv.to(r.device)
    count = torch.zeros(n_groups, device=r.device, dtype=r.dtype).index_add_(0, inv, torch.ones_like(r))  # [G]
    mean = torch.zeros_like(count).index_add_(0, inv, r) / count  # [G]
    dev = r - mean[inv]  # [B]
    std = (torch.zeros_like(count).index_add_(0, inv, dev * dev) / count).sqrt()  # [G]
    return dev / (std[inv] + eps)


class CombinedReward(Reward):
    """sum_k weight_k * normalise(reward_k(images)); components: {name: (Reward, weight)}."""

    name = "combine"

    def __init__(self, components: dict[str, tuple[Reward, float]], normalize: str = "group", eps: float = 1e-6):
        if not components:
            raise ValueError("combine needs at least one component: components: {REWARD: {weight: W}}")
        if normalize not in NORMALIZE:
            raise ValueError(f"combine: normalize='{normalize}' is not one of {NORMALIZE}")
        self.components, self.normalize, self.eps = dict(components), normalize, eps
        rewards = [r for r, _ in self.components.values()]
        videos = [name for name, (r, _) in self.components.items() if getattr(r, "video", False)]
        if videos and len(videos) < len(rewards):
            images = [name for name in self.components if name not in videos]
            raise ValueError(f"combine: components {videos} judge videos and {images} judge images; all must judge "
                             f"the same: lift an image reward to videos with per_frame (reward: per_frame, options: "
                             f"{{reward: {images[0]}}})")
        self.video = bool(videos)  # a combination of video rewards reads [B, F, 3, H, W] (rewards/video.py)
        self.differentiable = all(r.differentiable for r in rewards)
        self.needs_text = any(r.needs_text for r in rewards)
        if normalize == "none":
            lo = sum(min(w * r.value_range[0], w * r.value_range[1]) for r, w in self.components.values())
            hi = sum(max(w * r.value_range[0], w * r.value_range[1]) for r, w in self.components.values())
            self.value_range = (lo, hi)
        else:
            self.value_range = (-math.inf, math.inf)

    def to(self, device) -> "CombinedReward":
        self.device = torch.device(device)
        for r, _ in self.components.values():
            r.to(device)
        return self

    def group_ids(self, n: int, metadata: dict | None) -> torch.Tensor | None:
        """[B] labels of the groups to standardise within, or None for the raw weighted sum."""
        meta = metadata or {}
        if self.normalize == "none" or meta.get("group_ids") is None:
            return None
        ids = torch.as_tensor(meta["group_ids"]).long()  # [B]
        if ids.shape != (n,):
            raise ValueError(f"combine: metadata['group_ids'] has shape {tuple(ids.shape)}, expected ({n},)")
        if self.normalize == "group" and len(torch.unique(ids)) < n:
            return ids
        return torch.zeros(n, dtype=torch.long)  # the batch (groups of one sample have no spread)

    def __call__(self, images, prompts, metadata=None) -> RewardOutput:
        ids = self.group_ids(len(images), metadata)
        total, details = None, {}
        for name, (reward, weight) in self.components.items():
            r = reward(images, prompts, metadata).scores.float()  # [B]
            details[name] = r.detach()
            z = r if ids is None else group_standardize(r, ids, self.eps)  # [B]
            total = weight * z if total is None else total + weight * z.to(total.device)
        return RewardOutput(total, details)


def _parse_components(components) -> dict[str, tuple[Reward, float]]:
    if not isinstance(components, dict) or not components:
        raise ValueError("combine: reward_options.components must be a mapping {REWARD: {weight: W, options: {...}}}, "
                         f"got {components!r}")
    out = {}
    for name, spec in components.items():
        spec = {"weight": 1.0} if spec is None else spec
        if not isinstance(spec, dict) or set(spec) - {"weight", "options", "reward"}:
            raise ValueError(f"combine: component '{name}' must be {{weight: W, options: {{...}}, reward: NAME}} "
                             f"(reward defaults to the key, to use one reward twice), got {spec!r}")
        weight = spec.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"combine: component '{name}' weight must be a finite number, got {weight!r}")
        out[name] = (load_reward(spec.get("reward", name), **(spec.get("options") or {})), float(weight))
    return out


@REWARDS.register("combine", "weighted sum of rewards, each standardised within the prompt's group first; options: "
                  "components {REWARD: {weight, options}}, normalize group|batch|none")
def _combine(components=None, normalize: str = "group", eps: PositiveFloat = 1e-6):
    return CombinedReward(_parse_components(components), normalize, eps)
