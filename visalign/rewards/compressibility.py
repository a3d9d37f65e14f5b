"""JPEG compressibility and incompressibility, the rewards of DDPO's first experiments (Black et al., 2023):
the size of the image encoded as a JPEG at quality 95, in kB, negated for `compressibility` (smaller files
= plainer images score higher). They need no text and no model, so they run on any generator."""

from __future__ import annotations

import io

import torch
from PIL import Image

from ..images import tensor_to_images
from ..types import RewardOutput
from .base import REWARDS, Reward


def jpeg_kb(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """images [B, 3, H, W] in [-1, 1] -> JPEG size in kB [B] (PIL, the given quality, 4:2:0 as PIL defaults)."""
    sizes = []
    for img in tensor_to_images(images):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float32)


class JpegSizeReward(Reward):
    differentiable = False
    needs_text = False

    def __init__(self, sign: float, quality: int = 95):
        if not 1 <= quality <= 100:
            raise ValueError(f"quality must be in [1, 100], got {quality}")
        self.sign, self.quality = sign, quality
        self.value_range = (float("-inf"), 0.0) if sign < 0 else (0.0, float("inf"))

    def __call__(self, images, prompts, metadata=None) -> RewardOutput:
        kb = jpeg_kb(images, self.quality)
        return RewardOutput(self.sign * kb, {"jpeg_kb": kb})


@REWARDS.register("compressibility", "minus the JPEG size in kB at quality 95 (DDPO); option: quality")
def _compressibility(quality: int = 95):
    r = JpegSizeReward(-1.0, quality)
    r.name = "compressibility"
    return r


@REWARDS.register("incompressibility", "the JPEG size in kB at quality 95 (DDPO); option: quality")
def _incompressibility(quality: int = 95):
    r = JpegSizeReward(1.0, quality)
    r.name = "incompressibility"
    return r
