"""Policy losses as pure functions of log-probs and advantages, per sample ([B] in, [B] out)."""

from __future__ import annotations

import torch


def ppo_clip_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                  clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al., 2017) as used by DDPO and Flow-GRPO, per sample:
    max(-A r, -A clip(r, 1 - c, 1 + c)), r = exp(log_prob - old_log_prob). All [B]. -> (loss [B], ratio [B])"""
    ratio = torch.exp(log_prob - old_log_prob)  # [B]
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped), ratio
