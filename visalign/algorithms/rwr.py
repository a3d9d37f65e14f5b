"""Reward-weighted regression (Peters & Schaal, 2007; for text-to-image: Lee et al., 2023, arXiv
2302.12192; the "RWR" baseline of DDPO, Black et al., 2023): supervised denoising on the policy's own
samples, each weighted by exp(A / temperature) (math/losses.py: rwr_weights). It needs no log-probs and no
reference, its loss is a plain regression (the low-variance end of the family: it cannot diverge the way
an importance ratio can), and with a small temperature it becomes best-sample self-training.
Rollouts may use any sampler; advantages are group-normalised rewards (as GRPO) before the weighting.

Two likelihoods, one weighting: a denoising policy (flow, DDIM) regresses its network on the forward process of
its own samples (the denoising loss stands in for -log p, as in the papers above); a policy whose likelihood is
exact (the token policy) maximises the weighted log-probability of its own sampled tokens, RWR as first
written (weighted maximum likelihood), with an optional per-token KL to the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError
from ..math.advantages import group_advantages
from ..math.losses import rwr_weights
from .base import ALGORITHMS, Algorithm, CapabilityError
from .forward import denoising_error, forward_draws


@dataclass(frozen=True)
class RWRConfig:
    temperature: float = 1.0  # of exp(A / temperature) on group-normalised advantages
    max_weight: float = 5.0  # per-sample weights are clipped here (weights average ~1)
    global_std: bool = True  # normalise advantages by the batch's std (see grpo)
    adv_clip: float = 5.0
    draws: int = 1  # (t, eps) draws per sample in each pass
    kl_beta: float = 0.0  # weight of mean((pred - pred_ref)^2), a KL to the reference on the same noised points

    def __post_init__(self):
        if self.kl_beta < 0:
            raise ConfigError(f"algorithm_options.kl_beta must be >= 0, got {self.kl_beta}")
        if self.temperature <= 0 or self.max_weight <= 0 or self.draws < 1:
            raise ConfigError(f"algorithm_options.temperature and max_weight must be > 0 and draws >= 1, got "
                              f"{self.temperature}, {self.max_weight}, {self.draws}")


@ALGORITHMS.register("rwr", "reward-weighted regression: own samples' denoising loss (token policy: their NLL) weighted by exp(A / temperature)")
class RWR(Algorithm):
    name = "rwr"
    config_cls = RWRConfig
    denoising_methods = ("noised_sample", "predict")
    likelihood = False  # set by check(): the policy's exact log-probs instead of the denoising loss

    def check(self, policy, reward, sampling) -> None:
        self.likelihood = not all(hasattr(policy, m) for m in self.denoising_methods)
        if self.likelihood and not (hasattr(policy, "log_prob") and hasattr(policy, "step_kl")):
            raise CapabilityError(f"rwr needs either a denoising network (policy.noised_sample, policy.predict) or "
                                  f"exact log-probs (policy.log_prob); the {type(policy).__name__} has neither")
        super().check(policy, reward, sampling)

    def advantages(self, rewards, prompts, group_size):
        """-> the per-sample weights [B] over the whole (gathered) batch."""
        c = self.config
        adv = group_advantages(rewards, group_size, global_std=c.global_std, clip=c.adv_clip)
        return rwr_weights(adv, c.temperature, c.max_weight)

    def train_steps(self, traj, gen):
        """Denoising: one seed per (t, eps) draw. Likelihood: every sampled token."""
        if self.likelihood:
            return super().train_steps(traj, gen)
        return [int(torch.randint(2**31 - 1, (1,), generator=gen)) for _ in range(self.config.draws)]

    def diagnostic_windows(self, traj):
        return super().diagnostic_windows(traj) if self.likelihood else [[0, 1]]

    @property
    def uses_reference(self) -> bool:
        return self.config.kl_beta > 0

    def _weighted(self, policy, traj, weights, steps, centre: bool, reference=None):
        """-> (weighted per-row loss, per-row -log-likelihood stand-in, per-row KL or None)."""
        if self.likelihood:
            lp = policy.log_prob(traj, steps)  # log_prob [B, K] of the sampled tokens
            nll = -lp.log_prob.view(len(traj), -1).mean(1)  # [B], per token
            kl = policy.step_kl(lp, reference(traj, steps)) if reference is not None else None  # [B]
            return ((weights - 1.0) if centre else weights).to(nll) * nll, nll, kl
        x_t, t, target, prompts = forward_draws(policy, traj, steps)  # [K*B, ...]: steps are draw seeds here
        pred = policy.predict(x_t, t, prompts)
        err = denoising_error(pred, target)  # [K*B]
        w = weights.to(err).repeat(err.numel() // len(traj))  # [K*B]
        kl = denoising_error(pred, reference.predict(x_t, t, prompts)) if reference is not None else None
        return ((w - 1.0) if centre else w) * err, err, kl

    def step_loss(self, policy, traj, advantages, steps, reference, old=None):
        loss, err, kl = self._weighted(policy, traj, advantages, steps, centre=False,
                                       reference=reference if self.uses_reference else None)
        metrics = {"rwr_err": float(err.detach().mean()), "rwr_weight_max": float(advantages.max())}
        if kl is not None:  # self-regression drifts (own samples are not the data); the reference anchors it
            loss = loss + self.config.kl_beta * kl
            metrics["kl"] = float(kl.detach().mean())
        return loss.mean(), metrics

    def signal_loss(self, policy, traj, advantages, steps, old=None):
        """Without the reward-independent part (weight 1 on every sample: plain self-training)."""
        return self._weighted(policy, traj, advantages, steps, centre=True)[0].mean()
