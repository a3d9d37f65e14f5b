"""The GenEval-S Motion verifier as a reward: 1 when the clip satisfies the prompt under the lenient rules, else
0; with `exact` under the exact reading (no frame holds an object nobody asked for); with `dense` the fraction of
the category's checks that hold (the exact reading adds the check "no extra object"). It reads videos
[B, F, 3, H, W] (`video = True`); the core refuses images [B, 3, H, W] with a one-line message."""

from __future__ import annotations

import torch

from visalign.images import tensor_to_images
from visalign.rewards.base import REWARDS, Reward
from visalign.types import RewardOutput

from . import grammar, verify


class MotionReward(Reward):
    name = "motion"
    video = True

    def __init__(self, dense: bool = False, exact: bool = False):
        self.dense, self.exact = dense, exact

    def __call__(self, images, prompts, metadata=None) -> RewardOutput:
        if images.ndim != 5:  # the core's input check refuses these first; kept for direct callers of a subclass
            raise ValueError(f"reward motion judges videos [B, F, 3, H, W], got shape {list(images.shape)}")
        clips = tensor_to_images(images)  # uint8 [B, F, H, W, 3]
        verdicts = [verify.verify_clip(c, grammar.parse_prompt(p)) for c, p in zip(clips, prompts)]
        correct = torch.tensor([v.score for v in verdicts])  # [B] the lenient rules
        exact = torch.tensor([float(v.exact) for v in verdicts])  # [B]
        partial = torch.tensor([v.exact_partial if self.exact else v.partial for v in verdicts])  # [B]
        extra = torch.tensor([float(v.extra) for v in verdicts])  # [B] most objects nobody asked for in a frame
        scores = partial if self.dense else exact if self.exact else correct
        return RewardOutput(scores, {"correct": correct, "exact": exact, "partial": partial, "extra": extra})


@REWARDS.register("motion", "GenEval-S Motion verifier on videos [B, F, 3, H, W]: 1 if the clip satisfies the prompt "
                  "under the lenient rules (exact=true: and no object nobody asked for in any frame; dense=true: "
                  "partial credit)")
def _motion(dense: bool = False, exact: bool = False):
    return MotionReward(dense, exact)
