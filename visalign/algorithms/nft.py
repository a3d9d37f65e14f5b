"""DiffusionNFT (Zheng et al., 2025, arXiv 2509.16117): online RL on the forward (noising) process.

No log-probs: each rollout's final sample is noised afresh (x_t = (1 - t) x0 + t eps) and the policy's
velocity regresses onto eps - x0 through an implicit positive policy (weight r) and an implicit negative
one (weight 1 - r), both mixtures of the current and the *old* velocity (math/losses.py;
docs/architecture.md#nft-and-velocity-kl).
r = 0.5 + 0.5 clip(A / adv_scale, -1, 1) from group advantages, so a sample that is only as good as its
group pulls the policy towards the old model, which makes the loss its own trust region.

Why it is the default on the laptop benchmark (docs/results/variance-reduction.md): one update is about
as noisy as Flow-GRPO's (~3% signal per update at 64-128 rollouts, measured), but its loss is a bounded
regression that tolerates many small steps (lr 3e-5, 400 steps in the demo), it needs no log-probs (so
rollouts use the deterministic ODE sampler, here without CFG), and the contrast between good and bad
samples of the same prompt cancels what pure self-training on good samples drifts on (both come from the
same sampler; self-training alone collapsed in our runs).
The old model is an EMA of the trained weights (`old_ema` per optimizer step), kept by the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError
from ..math.advantages import group_advantages
from ..math.losses import nft_loss, nft_optimality, nft_reward_term
from .base import ALGORITHMS, Algorithm
from .forward import forward_draws


@dataclass(frozen=True)
class NFTConfig:
    beta: float = 1.0  # mixing of current and old velocity in the implicit policies (the paper's beta)
    old_ema: float = 0.9  # old <- old_ema * old + (1 - old_ema) * current after each optimizer step
    adv_scale: float = 1.0  # advantages of +-adv_scale map to r = 1 / 0
    global_std: bool = True  # normalise advantages by the batch's std (see grpo)
    adv_clip: float = 5.0
    draws: int = 1  # (t, eps) draws per sample in each pass over the batch
    kl_beta: float = 0.0  # weight of mean((v - v_ref)^2), a velocity KL (docs/architecture.md#nft-and-velocity-kl)
    # the CFG scale of the velocity the loss trains. 1: the conditional network alone, the paper's CFG-free
    # model. The sampler's guidance (e.g. 4): the guided velocity that CFG rollouts and evaluation follow, so
    # the loss sees the w-fold effect of a change to the conditional branch (the unconditional one is frozen)
    guidance: float = 1.0

    def __post_init__(self):
        if not 0 < self.beta <= 1:
            raise ConfigError(f"algorithm_options.beta must be in (0, 1], got {self.beta}")
        if not 0 <= self.old_ema < 1:
            raise ConfigError(f"algorithm_options.old_ema must be in [0, 1), got {self.old_ema}")
        if self.kl_beta < 0:
            raise ConfigError(f"algorithm_options.kl_beta must be >= 0, got {self.kl_beta}")
        if self.guidance < 1:
            raise ConfigError(f"algorithm_options.guidance must be >= 1 (1: no CFG), got {self.guidance}")
        if self.adv_scale <= 0 or self.draws < 1:
            raise ConfigError(f"algorithm_options.adv_scale must be > 0 and draws >= 1, got {self.adv_scale}, "
                              f"{self.draws}")


@ALGORITHMS.register("nft", "DiffusionNFT: forward-process RL, contrastive flow matching on rollouts, EMA old model")
class NFT(Algorithm):
    name = "nft"
    config_cls = NFTConfig
    needs_log_prob = False
    policy_methods = ("noised_sample", "predict")

    @property
    def old_ema(self) -> float:
        return self.config.old_ema

    def advantages(self, rewards, prompts, group_size):
        return group_advantages(rewards, group_size, global_std=self.config.global_std, clip=self.config.adv_clip)

    def train_steps(self, traj, gen):
        """Draw ids (each picks a fresh t and eps per sample); the same on every process."""
        return [int(torch.randint(2**31 - 1, (1,), generator=gen)) for _ in range(self.config.draws)]

    def diagnostic_windows(self, traj):
        return [[0, 1]]  # two fixed draws; t is random per sample, so there are no timestep windows

    @property
    def uses_reference(self) -> bool:
        return self.config.kl_beta > 0

    def _velocities(self, policy, traj, draws, old, reference=None):
        """-> (v, v_old, target, v_ref or None) at fresh x_t of each draw id in `draws` (an int or a list of K),
        all in one forward of K x B rows (draw-major)."""
        if old is None:
            raise ConfigError("nft needs the old model; the trainer provides it when algorithm.old_ema is set")
        x_t, t, target, prompts = forward_draws(policy, traj, draws)  # [K*B, ...]
        w = self.config.guidance
        velocity = policy.predict if w == 1 else lambda *a: policy.predict_guided(*a, w)
        with torch.no_grad(), old():  # first: swapping the weights in place must precede the graph of v
            v_old = velocity(x_t, t, prompts)  # [K*B, ...]
        v_ref = reference.predict(x_t, t, prompts) if reference is not None else None
        return velocity(x_t, t, prompts), v_old, target, v_ref

    def step_loss(self, policy, traj, advantages, step, reference, old=None):
        v, v_old, target, v_ref = self._velocities(policy, traj, step, old, reference if self.uses_reference else None)
        r = nft_optimality(advantages, self.config.adv_scale).repeat(v.shape[0] // len(traj))  # [K*B]
        loss = nft_loss(v, v_old, target, r, self.config.beta)  # [B]
        metrics = {"nft_r_mean": float(r.mean()), "nft_v_drift": float(((v.detach() - v_old) ** 2).mean())}
        if v_ref is not None:
            kl = ((v - v_ref) ** 2).mean(dim=tuple(range(1, v.dim())))  # [B]
            loss = loss + self.config.kl_beta * kl
            metrics["kl"] = float(kl.detach().mean())
        return loss.mean(), metrics

    def signal_loss(self, policy, traj, advantages, step, old=None):
        """Without the reward-independent pull towards the old model (math/losses.py: nft_reward_term)."""
        v, v_old, target, _ = self._velocities(policy, traj, step, old)
        r = nft_optimality(advantages, self.config.adv_scale).repeat(v.shape[0] // len(traj))  # [K*B]
        return nft_reward_term(v, v_old, target, r, self.config.beta).mean()
