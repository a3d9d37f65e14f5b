"""What the algorithms that train on the forward (noising) process share (DiffusionNFT, Diffusion-DPO, RWR):
noise each final sample afresh and compare the network's prediction with the forward process's target.
No log-probs, so rollouts may come from any sampler (the deterministic ODE included) or from a dataset."""

from __future__ import annotations

import torch


def forward_draws(policy, traj, draws: int | list[int]):
    """Fresh forward-process points of every final sample for each draw id in `draws` (an int or a list of
    K), draw-major: row d * B + b is sample b at draw d. A draw's (t, eps) come from the sample's seed and the
    draw id, so two samples with one seed (a preference pair) share them.
    -> x_t [K*B, ...], t [K*B], target [K*B, ...], prompts (K*B)"""
    draws = [draws] if isinstance(draws, int) else list(draws)
    parts = [policy.noised_sample(traj, d) for d in draws]  # each: [B, C, H, W], [B], [B, C, H, W]
    x_t, t, target = (torch.cat([p[i] for p in parts]) for i in range(3))
    return x_t, t, target, traj.prompts * len(draws)


def denoising_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||pred - target||^2 as a mean over the non-batch dims (the diffusion / flow-matching loss). -> [R]"""
    return ((pred.float() - target.float()) ** 2).flatten(1).mean(1)
