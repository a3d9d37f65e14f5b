"""Noise schedules of the diffusion family, as functions of continuous time t in [0, 1]."""

import math

import torch


def alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal, 2021): alpha_bar(t) = cos^2((t + s) / (1 + s) * pi / 2),
    normalised so alpha_bar(0) = 1, clamped away from 0 at t = 1. t [B] -> [B]."""
    f = torch.cos((t.float() + s) / (1 + s) * math.pi / 2) ** 2
    f0 = torch.cos(torch.tensor(s / (1 + s) * math.pi / 2)) ** 2  # fp32 like f, so alpha_bar(0) is exactly 1
    return (f / f0).clamp(1e-5, 1.0)


def lr_factor(step: int, steps: int, warmup: int = 0, schedule: str = "cosine", progress: float | None = None) -> float:
    """The multiplier of the peak learning rate at optimizer step `step` (0-based: the steps taken before it) of a
    `steps`-step run, the one schedule of every training loop (the RL trainer's iterations, the pretrainers' steps):

    - warmup: (step + 1) / warmup while step < warmup (linear; the first step is not at 0);
    - then 1 (`constant`), or `cosine`: 0.5 (1 + cos(pi q)) with q the share of the decay phase done,
      q = (p - warmup / steps) / (1 - warmup / steps) clamped to [0, 1], p = step / steps the share of the run
      done, so q = (step - warmup) / (steps - warmup): 1 on the first step after warmup, near 0 on the last.

    `progress`, when given, is p instead of step / steps (a run with a time budget passes the larger of its shares
    of steps and of time, so it still anneals to 0 when time runs out first). Hand-worked values:
    tests/unit/test_schedules.py."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"lr schedule '{schedule}' is not one of cosine, constant")
    if progress is None:
        q = (step - warmup) / max(1, steps - warmup)
    else:
        p0 = warmup / steps if steps > 0 else 0.0
        q = (progress - p0) / max(1e-9, 1 - p0)
    return 0.5 * (1 + math.cos(math.pi * min(max(q, 0.0), 1.0)))
