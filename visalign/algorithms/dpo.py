"""Preference optimisation on denoising models.

diffusion_dpo — Diffusion-DPO (Wallace et al., 2023, arXiv 2311.12908), offline: pairs (chosen, rejected)
  of clean images for one prompt come from a dataset on disk (`visalign make-pairs`, visalign/pairs.py);
  both images of a pair are noised with one shared (t, eps) and the loss compares how much better the
  policy denoises the chosen one than the rejected one, relative to the frozen reference
  (docs/architecture.md#diffusion-dpo).
online_dpo — D3PO / SPO-style online DPO (Yang et al., 2023, arXiv 2311.13231; Liang et al., 2024, SPO):
  pairs are drawn from the current policy's own rollouts within a group (best vs worst, by the reward) and
  every sampled step is one DPO instance on its per-step log-probs. Its reference is the sampling policy
  (`reference: rollout`, what D3PO's implementation does: the loss is a soft trust region around the
  rollout policy) or the frozen base (`reference: base`, the DPO paper's KL anchor). With `unit: sequence`
  the instance is the whole sample: DPO on the sum of its steps' log-ratios, which for a token policy is
  DPO on sequence log-probs (AR-DPO, as compared with GRPO in arXiv 2505.17017); with train.step_chunk > 0
  the sum runs over each chunk of steps.

Both read pairs off the advantages with `pair_within_groups`: within each group of the trajectory
(consecutive runs of traj.extras["group_size"]) the higher score is the chosen one. The trainer keeps groups
whole in minibatches (`keeps_groups`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError
from ..math.advantages import pair_within_groups
from ..math.losses import diffusion_dpo_loss, dpo_loss
from .base import ALGORITHMS, Algorithm, step_subset
from .forward import denoising_error, forward_draws


def _pairs(traj, advantages):
    return pair_within_groups(advantages, int(traj.extras.get("group_size", 2)))


def _no_pairs(like: torch.Tensor) -> torch.Tensor:
    return like.sum() * 0.0  # a zero loss that still reaches the graph (every rank calls backward)


@dataclass(frozen=True)
class DiffusionDPOConfig:
    beta: float = 200.0  # the paper's beta_dpo is 5000 on SD1.5 at lr ~1e-8; at our lr (3e-5) errors move faster
    draws: int = 1  # (t, eps) draws per pair in each pass

    def __post_init__(self):
        if self.beta <= 0 or self.draws < 1:
            raise ConfigError(f"algorithm_options.beta must be > 0 and draws >= 1, got {self.beta}, {self.draws}")


@ALGORITHMS.register("diffusion_dpo", "Diffusion-DPO: offline preference pairs (visalign make-pairs), shared-noise "
                                      "denoising errors vs the frozen reference")
class DiffusionDPO(Algorithm):
    name = "diffusion_dpo"
    config_cls = DiffusionDPOConfig
    offline = True  # trains on a pairs dataset (recipe `data:`), not on rollouts
    policy_methods = ("from_images", "noised_sample", "predict")
    keeps_groups = True

    @property
    def uses_reference(self) -> bool:
        return True

    def advantages(self, rewards, prompts, group_size):
        return rewards.float()  # the dataset's preference: 1 for the chosen image, 0 for the rejected one

    def train_steps(self, traj, gen):
        return [int(torch.randint(2**31 - 1, (1,), generator=gen)) for _ in range(self.config.draws)]

    def diagnostic_windows(self, traj):
        return [[0]]

    def _errors(self, policy, traj, draws, reference):
        x_t, t, target, prompts = forward_draws(policy, traj, draws)  # [K*B, ...]
        err = denoising_error(policy.predict(x_t, t, prompts), target)  # [K*B]
        if reference is None:  # the signal diagnostic: the loss's gradient direction at the reference
            return err, err.detach()
        with torch.no_grad():
            err_ref = denoising_error(reference.predict(x_t, t, prompts), target)  # [K*B]
        return err, err_ref

    def _loss(self, policy, traj, advantages, draws, reference):
        w, l = _pairs(traj, advantages)  # [P], [P]
        err, err_ref = self._errors(policy, traj, draws, reference)
        k, b = err.numel() // len(traj), len(traj)
        if len(w) == 0:
            return _no_pairs(err), {}
        rows_w = (torch.arange(k)[:, None] * b + w).flatten()  # [K*P] the chosen image at each draw
        rows_l = (torch.arange(k)[:, None] * b + l).flatten()
        loss = diffusion_dpo_loss(err[rows_w], err_ref[rows_w], err[rows_l], err_ref[rows_l], self.config.beta)
        margin = -((err[rows_w] - err_ref[rows_w]) - (err[rows_l] - err_ref[rows_l])).detach()  # > 0: prefers chosen
        return loss.mean(), {"dpo_accuracy": float((margin > 0).float().mean()), "dpo_margin": float(margin.mean())}

    def step_loss(self, policy, traj, advantages, steps, reference, old=None):
        return self._loss(policy, traj, advantages, steps, reference)

    def signal_loss(self, policy, traj, advantages, steps, old=None):
        return self._loss(policy, traj, advantages, steps, None)[0]


@dataclass(frozen=True)
class OnlineDPOConfig:
    beta: float = 10.0  # DPO's beta on per-step log-probs (means over dims, so small: beta is large)
    reference: str = "rollout"  # rollout (the sampling policy, D3PO) | base (the frozen pretrained policy)
    timestep_fraction: float = 1.0  # share of the stochastic steps trained per update
    unit: str = "step"  # step (each step its own DPO instance) | sequence (DPO on the summed log-ratio: AR-DPO)

    def __post_init__(self):
        if self.reference not in ("rollout", "base"):
            raise ConfigError(f"algorithm_options.reference '{self.reference}' is not one of rollout, base")
        if self.unit not in ("step", "sequence"):
            raise ConfigError(f"algorithm_options.unit '{self.unit}' is not one of step, sequence")
        if self.beta <= 0 or not 0 < self.timestep_fraction <= 1:
            raise ConfigError(f"algorithm_options.beta must be > 0 and timestep_fraction in (0, 1], got "
                              f"{self.beta}, {self.timestep_fraction}")


@ALGORITHMS.register("online_dpo", "online DPO (D3PO/SPO): best-vs-worst pairs within a group, DPO on per-step "
                                   "log-probs (unit: sequence = DPO on sequence log-probs, AR-DPO)")
class OnlineDPO(Algorithm):
    name = "online_dpo"
    config_cls = OnlineDPOConfig
    needs_log_prob = True
    keeps_groups = True

    @property
    def uses_reference(self) -> bool:
        return self.config.reference == "base"

    def advantages(self, rewards, prompts, group_size):
        return rewards.float()  # only the order within a group matters

    def train_steps(self, traj, gen):
        return step_subset(super().train_steps(traj, gen), self.config.timestep_fraction, gen)

    def _loss(self, policy, traj, advantages, steps, reference):
        w, l = _pairs(traj, advantages)  # [P], [P]
        lp = policy.log_prob(traj, steps).log_prob  # [B, K]
        if len(w) == 0:
            return _no_pairs(lp), {}
        ref = reference(traj, steps).log_prob if reference is not None else traj.log_probs[:, steps]  # [B, K]
        ratio = lp - ref  # [B, K] the per-step log-ratio to the reference
        if self.config.unit == "sequence":  # log p(sequence) = the sum of its tokens' log-probs
            ratio = ratio.sum(1, keepdim=True)  # [B, 1]
        loss = dpo_loss(ratio[w], ratio[l], self.config.beta)  # [P, K] (or [P, 1]): one DPO instance each
        margin = (ratio[w] - ratio[l]).detach()
        return loss.mean(), {"dpo_accuracy": float((margin > 0).float().mean()), "dpo_margin": float(margin.mean())}

    def step_loss(self, policy, traj, advantages, steps, reference, old=None):
        return self._loss(policy, traj, advantages, steps, reference)

    def signal_loss(self, policy, traj, advantages, steps, old=None):
        return self._loss(policy, traj, advantages, steps, None)[0]
