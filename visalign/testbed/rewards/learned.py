"""Learned rewards. `geneval_s_learned`: a small network trained on the exact GenEval-S verifier's labels and
detections (models/reward_net.py, trained by `visalign pretrain geneval-s-reward-pretrain`); score =
sigmoid(logit), the probability that the verifier accepts the image for the prompt. It is differentiable:
gradients flow from the scores to the images, for the reward-gradient methods (ReFL, DRaFT, AlignProp). It is
a stand-in for the verifier, with its errors (docs/results/geneval-s-reward-agreement.json): evaluation still uses the
verifier."""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.reward_net import RewardNet
from visalign.types import RewardOutput
from visalign.rewards.base import REWARDS, Reward

DEFAULT_DIR = Path(__file__).resolve().parent.parent.parent / "weights" / "geneval-s-reward"  # visalign/weights


class LearnedGenEvalSReward(Reward):
    name = "geneval_s_learned"
    differentiable = True
    needs_text = True
    value_range = (0.0, 1.0)

    def __init__(self, path: str | Path | None = None, net: RewardNet | None = None):
        """Loads the bundled weights, or the reward model directory `path`, or takes a network as it is."""
        if net is None:
            net = RewardNet.from_pretrained(path or DEFAULT_DIR).requires_grad_(False)  # gradients go to images only
        self.net = net.eval()

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata=None) -> RewardOutput:
        """images [B, 3, H, W] in [-1, 1] (may require grad; resized to the network's resolution) -> scores [B] in
        (0, 1); details: logit [B]."""
        if self.net.device != images.device:
            self.net.to(images.device)
        size = self.net.config.resolution
        if images.shape[-2:] != (size, size):  # the world at another resolution: seen at the one it was trained on
            images = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="area")  # box average
        logit = self.net(images, list(prompts))  # [B], fp32
        return RewardOutput(torch.sigmoid(logit), {"logit": logit})


@REWARDS.register("geneval_s_learned", "learned differentiable GenEval-S reward: a 0.25M-param CNN detection map "
                  "trained on the verifier's labels and detections + soft versions of its checks; sigmoid(logit) "
                  "~ P(verifier accepts); for ReFL/DRaFT/AlignProp (option: path)")
def _geneval_s_learned(path: str | None = None):
    return LearnedGenEvalSReward(path)
