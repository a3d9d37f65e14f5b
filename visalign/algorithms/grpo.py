"""GRPO on the denoising chain: Flow-GRPO (Liu et al., 2025, arXiv 2505.05470) and DanceGRPO (Xue et al.,
2025, arXiv 2505.07818); on token policies the same code is AR-GRPO.

advantage: group-normalised reward (DESIGN 3.5); loss per trained step: PPO-clip on the step's ratio,
plus beta x KL to the reference in mean space (DESIGN 3.1). The efficiency options of the field are
settings, not copies: `timestep_fraction` trains a random subset of the stochastic steps (DanceGRPO);
`window` makes only `window_size` consecutive steps stochastic (ODE elsewhere), placed at random each
iteration (Flow-GRPO-Fast) or sliding from the noisiest steps towards the clean end (MixGRPO, Li et al.,
2025, arXiv 2507.21802); CFG-free rollouts and fewer training steps live in the sampling config.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..config import ConfigError
from ..math.advantages import group_advantages
from ..math.losses import ppo_clip_loss
from ..math.sde import flow_kl
from .base import ALGORITHMS, Algorithm


@dataclass(frozen=True)
class GRPOConfig:
    clip_range: float = 1e-4  # PPO clip on per-step ratios (Flow-GRPO's default)
    adv_clip: float = 5.0  # advantages are clipped to +-adv_clip
    global_std: bool = True  # normalise by the batch's std instead of each group's (Flow-GRPO)
    kl_beta: float = 0.0  # weight of the KL to the reference policy
    timestep_fraction: float = 1.0  # share of the stochastic steps trained per update (DanceGRPO)
    window: str = "none"  # none (the sampler's own sde_window) | random (Flow-GRPO-Fast) | sliding (MixGRPO)
    window_size: int = 2  # stochastic steps per rollout when window != none
    window_shift_every: int = 1  # sliding: iterations between one-step moves of the window

    def __post_init__(self):
        if self.window not in ("none", "random", "sliding"):
            raise ConfigError(f"window '{self.window}' is not one of none, random, sliding")
        if self.window_size < 1 or self.window_shift_every < 1:
            raise ConfigError(f"window_size and window_shift_every must be >= 1, got {self.window_size}, "
                              f"{self.window_shift_every}")
        if not 0 < self.timestep_fraction <= 1:
            raise ConfigError(f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        if self.clip_range <= 0 or self.kl_beta < 0:
            raise ConfigError(f"clip_range must be > 0 and kl_beta >= 0, got {self.clip_range}, {self.kl_beta}")


@ALGORITHMS.register("grpo", "Flow-GRPO / DanceGRPO: group advantages, PPO-clip per step, optional KL")
class GRPO(Algorithm):
    name = "grpo"
    config_cls = GRPOConfig
    needs_log_prob = True

    def rollout_sampling(self, sampling, iteration, gen):
        c = self.config
        if c.window == "none":
            return sampling
        if c.window_size > sampling.steps:
            raise ConfigError(f"window_size={c.window_size} is larger than sampling.steps={sampling.steps}")
        positions = sampling.steps - c.window_size + 1
        if c.window == "random":
            start = int(torch.randint(positions, (1,), generator=gen))
        else:
            start = ((iteration - 1) // c.window_shift_every) % positions
        return dataclasses.replace(sampling, sde_window=(start, start + c.window_size))

    def advantages(self, rewards, prompts, group_size):
        return group_advantages(rewards, group_size, global_std=self.config.global_std, clip=self.config.adv_clip)

    def train_steps(self, traj, gen):
        steps = super().train_steps(traj, gen)
        k = max(1, math.ceil(self.config.timestep_fraction * len(steps)))
        if k == len(steps):
            return steps
        pick = torch.randperm(len(steps), generator=gen)[:k]
        return sorted(steps[i] for i in pick.tolist())

    @property
    def uses_reference(self) -> bool:
        return self.config.kl_beta > 0

    def signal_loss(self, policy, traj, advantages, step, old=None):
        lp = policy.log_prob(traj, step)
        return ppo_clip_loss(lp.log_prob, traj.log_probs[:, step], advantages, self.config.clip_range)[0].mean()

    def step_loss(self, policy, traj, advantages, step, reference, old=None):
        lp = policy.log_prob(traj, step)
        loss, ratio = ppo_clip_loss(lp.log_prob, traj.log_probs[:, step], advantages, self.config.clip_range)  # [B]
        metrics = {
            "ratio_dev": (ratio.detach() - 1).abs().max().item(),
            "clip_frac": ((ratio.detach() - 1).abs() > self.config.clip_range).float().mean().item(),
        }
        if self.uses_reference:
            ref = reference(traj, step)
            kl = flow_kl(lp.mean, ref.mean, lp.std)  # [B]
            loss = loss + self.config.kl_beta * kl
            metrics["kl"] = kl.detach().mean().item()
        return loss.mean(), metrics
