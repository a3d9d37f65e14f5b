"""The Algorithm interface. An algorithm is a small composition of math/ pieces: it turns a scored
rollout into per-sample advantages (or weights), picks the steps to train on, and gives the loss of one
step. It never sees ranks, optimizers or models directly: the trainer owns those."""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..registry import Registry
from ..types import StepLogProb, Trajectory


def _algorithm_class(obj) -> str | None:
    """What ALGORITHMS holds: an Algorithm subclass with a config_cls (its options' dataclass)."""
    if not (isinstance(obj, type) and issubclass(obj, Algorithm)):
        return f"is {'the class ' + obj.__name__ if isinstance(obj, type) else 'a ' + type(obj).__name__}, not a " \
               f"visalign.algorithms.Algorithm subclass"
    if obj.config_cls is None:
        return f"({obj.__name__}) has no config_cls: a frozen dataclass of its options"
    return None


ALGORITHMS = Registry("algorithm", check=_algorithm_class)

# reference(traj, steps) -> StepLogProb under the frozen reference policy (no grad)
ReferenceFn = Callable[[Trajectory, int], StepLogProb]


class CapabilityError(ValueError):
    """An algorithm asked for something the policy or reward cannot give (one-line message)."""


class Algorithm:
    name = "algorithm"
    config_cls = None
    needs_log_prob = False  # scores sampled steps (policy-gradient family)
    offline = False  # trains on a dataset of preference pairs (the recipe's `data`) instead of rollouts
    keeps_groups = False  # its loss couples the samples of a group: minibatches hold whole groups
    # policy methods it calls besides sample/log_prob (a denoising model's network, forward process or chain);
    # a policy family without them (the token policy) is refused at construction
    policy_methods: tuple[str, ...] = ()

    def __init__(self, config):
        self.config = config

    def check(self, policy, reward, sampling) -> None:
        """Refuse at construction, with a one-line reason, what this algorithm cannot train."""
        missing = [m for m in self.policy_methods if not hasattr(policy, m)]
        if missing:
            raise CapabilityError(
                f"{self.name} needs policy.{', policy.'.join(missing)}, which the {type(policy).__name__} does not "
                f"have; use a log-prob algorithm (grpo, ddpo, dpok, online_dpo) with this model"
            )
        if self.needs_log_prob and not bool(policy.stochastic_mask(sampling).any()):
            raise CapabilityError(
                f"{self.name} needs log-probs of sampled steps, but the rollout sampler is deterministic "
                f"(kind '{sampling.kind}'); use a stochastic kind: {', '.join(policy.STOCHASTIC_KINDS)}"
            )

    def rollout_sampling(self, sampling, iteration: int, gen: torch.Generator):
        """The sampler of one iteration's rollouts (default: the recipe's, unchanged)."""
        return sampling

    def advantages(self, rewards: torch.Tensor, prompts: list[str], group_size: int) -> torch.Tensor:
        raise NotImplementedError

    def train_steps(self, traj: Trajectory, gen: torch.Generator) -> list[int]:
        return [int(i) for i in torch.nonzero(traj.stochastic).flatten()]

    def diagnostic_windows(self, traj: Trajectory) -> list[list[int]]:
        """Steps whose gradients the signal diagnostic compares, grouped into windows (early, mid, late)."""
        return split_windows([int(i) for i in torch.nonzero(traj.stochastic).flatten()])

    def step_loss(self, policy, traj: Trajectory, advantages: torch.Tensor, steps: list[int],
                  reference: ReferenceFn | None, old=None) -> tuple[torch.Tensor, dict]:
        """Loss of a chunk of trained steps (of train_steps; one network forward for all of them), a mean over
        samples and steps, and its metrics. `old` is a context manager under which the policy computes with
        the old weights (only when `old_ema` is not None)."""
        raise NotImplementedError

    def signal_loss(self, policy, traj: Trajectory, advantages: torch.Tensor, steps: list[int], old=None) -> torch.Tensor:
        """The reward-driven part of step_loss, what the signal diagnostic compares across disjoint rollouts:
        terms that do not depend on the rewards (a KL to the reference, NFT's pull towards the old model)
        would look like shared signal without being any."""
        raise NotImplementedError

    @property
    def old_ema(self) -> float | None:
        """EMA decay of an 'old' copy of the trained weights the trainer should keep (None: no copy)."""
        return None

    @property
    def uses_reference(self) -> bool:
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def split_windows(steps: list[int], n: int = 3) -> list[list[int]]:
    """Trained steps (noisy -> clean) -> up to n contiguous, near-equal windows (early, mid, late: trainer/diagnostics.py)."""
    n = min(n, len(steps))
    bounds = [round(i * len(steps) / n) for i in range(n + 1)]
    return [steps[bounds[i] : bounds[i + 1]] for i in range(n)]


def step_subset(steps: list[int], fraction: float, gen: torch.Generator) -> list[int]:
    """A random ceil(fraction * len) of `steps`, in order (DDPO's and DanceGRPO's timestep_fraction)."""
    k = max(1, math.ceil(fraction * len(steps)))
    if k == len(steps):
        return steps
    pick = torch.randperm(len(steps), generator=gen)[:k]
    return sorted(steps[i] for i in pick.tolist())


def load_algorithm(name: str, options: dict | None = None) -> Algorithm:
    from ..config import build

    cls = ALGORITHMS.get(name)
    return cls(build(cls.config_cls, options or {}, f"algorithm.{name}"))
