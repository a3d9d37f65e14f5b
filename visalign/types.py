"""The data that flows between policies, rewards, algorithms and the trainer. Shapes in comments."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Trajectory:
    """One batch of sampled denoising chains.

    For a flow or diffusion policy the state is the latent, the action is the next latent; step i goes
    from states[:, i] to states[:, i + 1] at noise level sigmas[i] -> sigmas[i + 1]."""

    prompts: list[str]
    seeds: list[int]  # per-sample seeds: sample b is a function of (prompt b, seed b) only
    states: torch.Tensor  # [B, T+1, C, H, W] x at every sigma, fp32
    log_probs: torch.Tensor  # [B, T] log-prob of each step under the sampling policy (0 for ODE steps)
    sigmas: torch.Tensor  # [T+1] from 1 to 0
    stochastic: torch.Tensor  # [T] bool, True where the step was sampled from the SDE
    images: torch.Tensor  # [B, 3, H, W] in [-1, 1], the decoded final state
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, idx: torch.Tensor) -> "Trajectory":
        """The samples at idx ([k] long), sharing the schedule."""
        i = idx.tolist()
        return Trajectory(
            prompts=[self.prompts[j] for j in i], seeds=[self.seeds[j] for j in i], states=self.states[idx],
            log_probs=self.log_probs[idx], sigmas=self.sigmas, stochastic=self.stochastic, images=self.images[idx],
            extras=dict(self.extras),
        )


@dataclass
class StepLogProb:
    """A recomputed step: log_prob [B], and the Gaussian's mean [B, ...] and std [B, 1, ...] (for KL)."""

    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


@dataclass
class RewardOutput:
    scores: torch.Tensor  # [B] the reward
    details: dict = field(default_factory=dict)  # name -> [B] tensor or list (components, partial scores)
