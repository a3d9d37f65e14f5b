"""The GenEval-S verifier as a reward: 1 when the image satisfies the prompt's spec, else 0; with
`dense` the fraction of the spec's checks that hold (partial credit)."""

from __future__ import annotations

import torch

from ..images import tensor_to_images
from ..types import RewardOutput
from ..world import grammar, verify
from .base import REWARDS, Reward


class GenEvalSReward(Reward):
    name = "geneval_s"

    def __init__(self, dense: bool = False):
        self.dense = dense

    def __call__(self, images, prompts, metadata=None) -> RewardOutput:
        verdicts = [verify.verify(img, grammar.parse_prompt(p)) for img, p in zip(tensor_to_images(images), prompts)]
        correct = torch.tensor([v.score for v in verdicts])
        partial = torch.tensor([v.partial for v in verdicts])
        return RewardOutput(partial if self.dense else correct, {"correct": correct, "partial": partial})


@REWARDS.register("geneval_s", "GenEval-S verifier: 1 if the image satisfies the prompt (dense=true: partial credit)")
def _geneval_s(dense: bool = False):
    return GenEvalSReward(dense)
