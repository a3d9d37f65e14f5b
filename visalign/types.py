"""The data that flows between policies, rewards, algorithms and the trainer. Shapes in comments."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Trajectory:
    """One batch of sampled chains: denoising chains, or token sequences.

    For a flow or diffusion policy the state is the latent, the action is the next latent; step i goes
    from states[:, i] to states[:, i + 1] at noise level sigmas[i] -> sigmas[i + 1]. For a token policy
    (policies/autoregressive.py) states [B, N] holds the N generated token ids and step i is token i;
    sigmas [N+1] is the share of the sequence still to write. The policy owns what a step means: the
    trainer and algorithms only index steps and log_probs [B, T]."""

    prompts: list[str]
    seeds: list[int]  # per-sample seeds: sample b is a function of (prompt b, seed b) only
    states: torch.Tensor  # [B, T+1, C, H, W] x at every sigma, fp32
    log_probs: torch.Tensor  # [B, T] log-prob of each step under the sampling policy (0 for ODE steps)
    sigmas: torch.Tensor  # [T+1] from 1 to 0
    stochastic: torch.Tensor  # [T] bool, True where the step was sampled from the SDE
    images: torch.Tensor  # [B, 3, H, W] in [-1, 1], the decoded final state
    extras: dict = field(default_factory=dict)  # an entry with a select(idx) method holds per-sample data

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, idx: torch.Tensor) -> "Trajectory":
        """The samples at idx ([k] long), sharing the schedule."""
        i = idx.tolist()
        return Trajectory(
            prompts=[self.prompts[j] for j in i], seeds=[self.seeds[j] for j in i], states=self.states[idx],
            log_probs=self.log_probs[idx], sigmas=self.sigmas, stochastic=self.stochastic, images=self.images[idx],
            extras={k: v.select(idx) if hasattr(v, "select") else v for k, v in self.extras.items()},
        )


@dataclass
class StepLogProb:
    """A recomputed step: log_prob [B] ([B, K] for K steps), and what the policy's step_kl needs: a denoising
    step's Gaussian mean [B, ...] and std [B, 1, ...]; a token step's log-distribution dist [B, V]."""

    log_prob: torch.Tensor
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    dist: torch.Tensor | None = None


@dataclass
class RewardOutput:
    scores: torch.Tensor  # [B] the reward
    details: dict = field(default_factory=dict)  # name -> [B] tensor or list (components, partial scores)
