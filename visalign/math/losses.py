"""Policy losses as pure functions of log-probs and advantages, per sample ([B] in, [B] out)."""

from __future__ import annotations

import torch


def ppo_clip_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                  clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al., 2017) as used by DDPO and Flow-GRPO, per sample:
    max(-A r, -A clip(r, 1 - c, 1 + c)), r = exp(log_prob - old_log_prob). All [B] (or [B, K] for K steps of
    each sample, advantages [B, 1]). -> (loss, ratio) of that shape"""
    ratio = torch.exp(log_prob - old_log_prob)  # [B]
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped), ratio


def nft_optimality(advantages: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """DiffusionNFT's optimality probability r in [0, 1] from advantages [B]: 0.5 + 0.5 clip(A / scale, -1, 1).
    A sample no better or worse than its group (A = 0) gets r = 0.5: it pulls the policy towards the old one."""
    return 0.5 + 0.5 * (advantages / scale).clamp(-1.0, 1.0)  # [B]


def nft_errors(velocity: torch.Tensor, old_velocity: torch.Tensor, target: torch.Tensor,
               beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """DiffusionNFT's implicit positive policy v+ = beta v + (1 - beta) v_old and negative policy
    v- = (1 + beta) v_old - beta v, each regressed onto the sample's flow target.
    velocity, old_velocity, target [B, ...] -> (positive error [B], negative error [B]), means over non-batch dims."""
    dims = tuple(range(1, velocity.dim()))
    v_pos = beta * velocity + (1 - beta) * old_velocity  # [B, ...]
    v_neg = (1 + beta) * old_velocity - beta * velocity  # [B, ...]
    return ((v_pos - target) ** 2).mean(dims), ((v_neg - target) ** 2).mean(dims)


def nft_loss(velocity: torch.Tensor, old_velocity: torch.Tensor, target: torch.Tensor, r: torch.Tensor,
             beta: float = 1.0) -> torch.Tensor:
    """DiffusionNFT (Zheng et al., 2025, arXiv 2509.16117), per sample: r * positive error + (1 - r) * negative
    error. Its minimiser moves v towards the velocity of the good samples and away from the bad ones, with no
    likelihood and on any sampler. velocity, old_velocity, target [B, ...]; r [B] -> loss [B]."""
    pos, neg = nft_errors(velocity, old_velocity, target, beta)  # [B], [B]
    return r * pos + (1 - r) * neg


def nft_reward_term(velocity: torch.Tensor, old_velocity: torch.Tensor, target: torch.Tensor, r: torch.Tensor,
                    beta: float = 1.0) -> torch.Tensor:
    """The part of nft_loss that depends on the reward: r pos + (1 - r) neg = 0.5 (pos + neg) + (r - 0.5)(pos - neg).
    The first term pulls v towards v_old whatever the rewards (a trust region). -> [B]"""
    pos, neg = nft_errors(velocity, old_velocity, target, beta)  # [B], [B]
    return (r - 0.5) * (pos - neg)


def dpo_loss(logratio_chosen: torch.Tensor, logratio_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO (Rafailov et al., 2023, arXiv 2305.18290) per pair: -log sigmoid(beta (lr_w - lr_l)), where
    lr = log pi(y | x) - log pi_ref(y | x) of the chosen (w) and the rejected (l) sample. [P] -> [P].
    Zero margin gives log 2; the gradient pushes lr_w up and lr_l down, at most with weight beta."""
    return -torch.nn.functional.logsigmoid(beta * (logratio_chosen - logratio_rejected))


def diffusion_dpo_loss(err_w: torch.Tensor, err_w_ref: torch.Tensor, err_l: torch.Tensor, err_l_ref: torch.Tensor,
                       beta: float) -> torch.Tensor:
    """Diffusion-DPO (Wallace et al., 2023, arXiv 2311.12908, eq. 14; docs/architecture.md#diffusion-dpo) per pair:
    -log sigmoid(-beta / 2 [(err_w - err_w_ref) - (err_l - err_l_ref)]), err = ||pred - target||^2 (mean over
    dims) of the chosen / rejected image at one shared (t, eps). It is dpo_loss with the denoising error
    standing in for -2 log-likelihood (the ELBO). All [P] -> [P]."""
    return dpo_loss(-(err_w - err_w_ref) / 2, -(err_l - err_l_ref) / 2, beta)


def rwr_weights(advantages: torch.Tensor, temperature: float, max_weight: float) -> torch.Tensor:
    """Reward-weighted regression (Peters & Schaal, 2007; Lee et al., 2023, arXiv 2302.12192 for text-to-image)
    per sample: w = exp(A / temperature) / mean(exp(A / temperature)), clipped to max_weight, so the weights
    average ~1 over the batch. temperature -> 0 keeps only the best samples (best-sample self-training);
    temperature -> inf is plain supervised fine-tuning on the model's own samples. [B] -> [B]"""
    w = torch.softmax(advantages.float() / temperature, dim=0) * advantages.numel()  # [B], mean 1
    return w.clamp(max=max_weight)
