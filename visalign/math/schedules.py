"""Noise schedules of the diffusion family, as functions of continuous time t in [0, 1]."""

import math

import torch


def alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal, 2021): alpha_bar(t) = cos^2((t + s) / (1 + s) * pi / 2),
    normalised so alpha_bar(0) = 1, clamped away from 0 at t = 1. t [B] -> [B]."""
    f = torch.cos((t.float() + s) / (1 + s) * math.pi / 2) ** 2
    f0 = torch.cos(torch.tensor(s / (1 + s) * math.pi / 2)) ** 2  # fp32 like f, so alpha_bar(0) is exactly 1
    return (f / f0).clamp(1e-5, 1.0)
