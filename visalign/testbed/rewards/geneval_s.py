"""The GenEval-S verifier as a reward: 1 when the image satisfies the prompt's spec under GenEval's rules, else 0;
with `exact` under the exact reading (the named objects and nothing else: GenEval's rules let extra objects in,
and a policy trained on them learns to draw them); with `dense` the fraction of the checks that hold (partial
credit; the exact reading adds the check "no object nobody asked for")."""

from __future__ import annotations

import torch

from visalign.images import tensor_to_images
from visalign.types import RewardOutput
from ..world import grammar, verify
from visalign.rewards.base import REWARDS, Reward


class GenEvalSReward(Reward):
    name = "geneval_s"

    def __init__(self, dense: bool = False, exact: bool = False):
        self.dense, self.exact = dense, exact

    def __call__(self, images, prompts, metadata=None) -> RewardOutput:
        verdicts = [verify.verify(img, grammar.parse_prompt(p)) for img, p in zip(tensor_to_images(images), prompts)]
        correct = torch.tensor([v.score for v in verdicts])  # [B] GenEval's rules
        exact = torch.tensor([float(v.exact) for v in verdicts])  # [B]
        partial = torch.tensor([v.exact_partial if self.exact else v.partial for v in verdicts])  # [B]
        extra = torch.tensor([float(v.extra) for v in verdicts])  # [B]
        scores = partial if self.dense else exact if self.exact else correct
        return RewardOutput(scores, {"correct": correct, "exact": exact, "partial": partial, "extra": extra})


@REWARDS.register("geneval_s", "GenEval-S verifier: 1 if the image satisfies the prompt under GenEval's rules "
                  "(exact=true: the named objects and nothing else; dense=true: partial credit)")
def _geneval_s(dense: bool = False, exact: bool = False):
    return GenEvalSReward(dense, exact)
