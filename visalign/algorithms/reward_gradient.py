"""Direct reward backpropagation: the reward model is differentiable, so its gradient flows through the
decoder and the last sampling steps into the generator (docs/architecture.md#reward-gradient). Fast, no variance
from a score-function estimator, and prone to reward hacking: the verifier still evaluates (the trainer's evaluation).

refl       ReFL (Xu et al., 2023, ImageReward, arXiv 2304.05977): one step drawn from the last `window`
           steps of the chain; from that state the network predicts x0 in one forward, and the reward of
           x0_hat is maximised.
draft      DRaFT-K (Clark et al., 2023, arXiv 2309.17400): backpropagate through the last k steps of the
           sampling chain (k = 1 is DRaFT-1). With lv_draws = n > 0, DRaFT-LV: the final sample is noised
           again to the last step's level n times and each is denoised with gradients (lower variance).
alignprop  AlignProp (Prabhudesai et al., 2023, arXiv 2310.03739): randomized truncation, k drawn uniformly
           from 1..max_k (max_k 0 = the whole chain) every update, with gradient checkpointing through the
           chain so memory holds one step.

Rollouts come from the recipe's sampler (the deterministic ODE is what the papers use); the update re-runs
the last k steps of each stored chain with gradients (policy.denoise), reusing the rollout's noise, so
without a weight change it reproduces the rollout exactly.

kl_beta > 0 adds kl_beta x ||v - v_ref||^2 on forward-process points of the rollout's own samples (the KL of
the two policies' paths in velocity space, docs/architecture.md#nft-and-velocity-kl, as nft's and rwr's
kl_beta): the reward's gradient moves the network only where the learned reward says so, and the anchor keeps the rest of its field, the
part the learned reward cannot judge, at the reference (ImageReward's ReFL keeps a pretraining loss beside
the reward loss for the same reason).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError
from .base import ALGORITHMS, Algorithm, CapabilityError
from .forward import denoising_error, forward_draws


@dataclass(frozen=True)
class RewardGradientConfig:
    k: int = 1  # draft: steps backpropagated through; alignprop: the most (0 = the whole chain)
    window: int = 5  # refl: the step is drawn from the last `window` steps
    lv_draws: int = 0  # draft: DRaFT-LV's re-noised denoisings of the final sample (0 = plain DRaFT-K)
    grad_checkpoint: bool = True  # recompute each step's activations in the backward pass
    reward_scale: float = 1.0  # loss = -reward_scale * mean reward
    kl_beta: float = 0.0  # weight of ||v - v_ref||^2 on noised own samples, a KL to the reference (0: none)

    def __post_init__(self):
        if self.k < 0 or self.window < 1 or self.lv_draws < 0 or self.reward_scale <= 0 or self.kl_beta < 0:
            raise ConfigError(f"algorithm_options: k must be >= 0, window >= 1, lv_draws >= 0, reward_scale > 0, "
                              f"kl_beta >= 0; got {self.k}, {self.window}, {self.lv_draws}, {self.reward_scale}, "
                              f"{self.kl_beta}")


class RewardGradient(Algorithm):
    """The loss: -mean reward of images decoded from x0 that carry the gradient of the last steps."""

    config_cls = RewardGradientConfig
    policy_methods = ("denoise", "predict_x0", "renoise", "noised_sample", "predict")

    def check(self, policy, reward, sampling) -> None:
        """Refuses a reward without gradients, and keeps the reward the loss differentiates."""
        super().check(policy, reward, sampling)
        if not getattr(reward, "differentiable", False):
            raise CapabilityError(
                f"{self.name} backpropagates the reward, but reward '{getattr(reward, 'name', reward)}' is not "
                f"differentiable; use a differentiable reward (e.g. geneval_s_learned) or a policy-gradient algorithm"
            )
        self.reward = reward

    def advantages(self, rewards, prompts, group_size):
        return rewards.float()  # unused by the loss; kept for the metrics' effective-sample-size

    def start_step(self, n_steps: int, gen: torch.Generator) -> int:
        raise NotImplementedError

    def train_steps(self, traj, gen):
        return [self.start_step(traj.states.shape[1] - 1, gen)]

    def diagnostic_windows(self, traj):
        return [[self.start_step(traj.states.shape[1] - 1, torch.Generator().manual_seed(0))]]

    def final_latents(self, policy, traj, start: int) -> torch.Tensor:
        return policy.denoise(traj, start, grad_checkpoint=self.config.grad_checkpoint)  # [B, C, H, W]

    def _loss(self, policy, traj, steps):
        x0 = self.final_latents(policy, traj, steps[0])  # [B or n*B, C, H, W] with gradients
        prompts = traj.prompts * (x0.shape[0] // len(traj))
        scores = self.reward(policy.adapter.decode(x0), prompts).scores  # [B]
        return -self.config.reward_scale * scores.mean(), scores

    @property
    def uses_reference(self) -> bool:
        return self.config.kl_beta > 0

    def step_loss(self, policy, traj, advantages, steps, reference, old=None):
        loss, scores = self._loss(policy, traj, steps)
        metrics = {"grad_reward": float(scores.detach().mean()), "start_step": steps[0]}
        if self.uses_reference:  # one forward-process draw per sample, its id the update's start step
            x_t, t, _, prompts = forward_draws(policy, traj, steps[0])  # [B, ...]
            kl = denoising_error(policy.predict(x_t, t, prompts), reference.predict(x_t, t, prompts))  # [B]
            loss = loss + self.config.kl_beta * kl.mean()
            metrics["kl"] = float(kl.detach().mean())
        return loss, metrics

    def signal_loss(self, policy, traj, advantages, steps, old=None):
        return self._loss(policy, traj, steps)[0]


@ALGORITHMS.register("refl", "ReFL: a random late step, predict x0, maximise a differentiable reward of it")
class ReFL(RewardGradient):
    name = "refl"

    def start_step(self, n_steps, gen):
        w = min(self.config.window, n_steps)
        return n_steps - 1 - int(torch.randint(w, (1,), generator=gen))

    def final_latents(self, policy, traj, start):
        return policy.predict_x0(traj, start)


@ALGORITHMS.register("draft", "DRaFT-K / DRaFT-LV: backpropagate a differentiable reward through the last k steps")
class DRaFT(RewardGradient):
    name = "draft"

    def start_step(self, n_steps, gen):
        k = n_steps if self.config.k == 0 else min(self.config.k, n_steps)
        return n_steps - k

    def final_latents(self, policy, traj, start):
        if self.config.lv_draws == 0:
            return super().final_latents(policy, traj, start)
        last = traj.states.shape[1] - 2  # the last step goes to the clean sample: x0_hat is its result
        return torch.cat([policy.predict_x0(traj, last, x=policy.renoise(traj, last, draw=j))
                          for j in range(self.config.lv_draws)])


@dataclass(frozen=True)
class AlignPropConfig(RewardGradientConfig):
    k: int = 0  # truncation drawn from 1..k (0: the whole chain)


@ALGORITHMS.register("alignprop", "AlignProp: randomized truncated backprop of a differentiable reward through the chain")
class AlignProp(RewardGradient):
    name = "alignprop"
    config_cls = AlignPropConfig

    def start_step(self, n_steps, gen):
        top = n_steps if self.config.k == 0 else min(self.config.k, n_steps)
        return n_steps - 1 - int(torch.randint(top, (1,), generator=gen))
