"""What the policy-gradient family on the denoising MDP shares (DDPO, DPOK, Flow-GRPO, DanceGRPO): a per-step
surrogate on the log-prob of each sampled step, an optional KL to the reference policy, and a random subset
of the stochastic steps per update. Subclasses say how rewards become advantages (and where rollouts are
stochastic); the loss of a step is written once, here.

estimator "ppo": PPO's clipped importance ratio (DDPO-IS, Flow-GRPO; docs/architecture.md#advantages-and-ppo-clip).
estimator "sf":  the score function -A log p (REINFORCE, DDPO-SF); unbiased on the first pass over fresh
                 rollouts only, so use it with train.epochs = 1.
KL (DPOK; Flow-GRPO's beta): the policy's step_kl between its step distribution and the reference's: for
denoising steps the Gaussians' KL in mean space (docs/architecture.md#flow-sde), for token steps the categorical KL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError
from ..math.losses import ppo_clip_loss
from .base import Algorithm, step_subset

ESTIMATORS = ("ppo", "sf")


@dataclass(frozen=True)
class PGConfig:
    clip_range: float = 1e-4  # PPO clip on per-step ratios (DDPO's and Flow-GRPO's default)
    adv_clip: float = 5.0  # advantages are clipped to +-adv_clip
    estimator: str = "ppo"  # ppo (clipped importance ratio) | sf (score function)
    kl_beta: float = 0.0  # weight of the per-step KL to the reference policy
    timestep_fraction: float = 1.0  # share of the stochastic steps trained per update (DDPO, DanceGRPO)

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"algorithm_options.estimator '{self.estimator}' is not one of {', '.join(ESTIMATORS)}")
        if not 0 < self.timestep_fraction <= 1:
            raise ConfigError(f"algorithm_options.timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        if self.clip_range <= 0 or self.kl_beta < 0:
            raise ConfigError(f"algorithm_options.clip_range must be > 0 and kl_beta >= 0, got {self.clip_range}, "
                              f"{self.kl_beta}")


def score_function_loss(log_prob: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """REINFORCE (Williams, 1992) per sample: -A log p. log_prob, advantages [B] -> [B]"""
    return -advantages * log_prob


class PolicyGradient(Algorithm):
    needs_log_prob = True

    def train_steps(self, traj, gen):
        return step_subset(super().train_steps(traj, gen), self.config.timestep_fraction, gen)

    @property
    def uses_reference(self) -> bool:
        return self.config.kl_beta > 0

    def _surrogate(self, lp, traj, advantages, steps):
        """-> (loss, ratio), both [B] for one step or [B, K] for a list of K steps."""
        old = traj.log_probs[:, steps]  # [B] or [B, K]
        adv = advantages.view(-1, *([1] * (old.dim() - 1)))  # [B] or [B, 1]
        if self.config.estimator == "sf":
            return score_function_loss(lp.log_prob, adv), torch.exp(lp.log_prob.detach() - old)
        return ppo_clip_loss(lp.log_prob, old, adv, self.config.clip_range)

    def signal_loss(self, policy, traj, advantages, steps, old=None):
        return self._surrogate(policy.log_prob(traj, steps), traj, advantages, steps)[0].mean()

    def step_loss(self, policy, traj, advantages, steps, reference, old=None):
        lp = policy.log_prob(traj, steps)  # all the steps in one forward
        loss, ratio = self._surrogate(lp, traj, advantages, steps)  # [B, K]
        loss = loss.view(len(traj), -1).mean(1)  # [B], the mean over the steps
        dev = (ratio.detach() - 1).abs()
        metrics = {"ratio_dev": dev.max().item(), "clip_frac": (dev > self.config.clip_range).float().mean().item()}
        if self.uses_reference:
            ref = reference(traj, steps)
            kl = policy.step_kl(lp, ref)  # [B], the mean over the steps
            loss = loss + self.config.kl_beta * kl
            metrics["kl"] = kl.detach().mean().item()
        return loss.mean(), metrics
