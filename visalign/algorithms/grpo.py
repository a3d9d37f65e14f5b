"""GRPO on the denoising chain: Flow-GRPO (Liu et al., 2025, arXiv 2505.05470) and DanceGRPO (Xue et al.,
2025, arXiv 2505.07818); on token policies the same code is AR-GRPO.

advantage: group-normalised reward (docs/architecture.md#advantages-and-ppo-clip); loss per trained step:
PPO-clip on the step's ratio, plus beta x KL to the reference in mean space (docs/architecture.md#flow-sde). The
efficiency options of the field are settings, not copies: `timestep_fraction` trains a random subset of the stochastic steps (DanceGRPO);
`window` makes only `window_size` consecutive steps stochastic (ODE elsewhere), placed at random each
iteration (Flow-GRPO-Fast) or sliding from the noisiest steps towards the clean end (MixGRPO, Li et al.,
2025, arXiv 2507.21802), within the sampler's own `sde_window` when it sets one (e.g. only the early steps,
where layout is decided); CFG-free rollouts and fewer training steps live in the sampling config. With
`train.shared_initial_noise` and `window_size: 1`, a group's samples share everything but one step's noise,
so its reward differences are credited to that step alone (the branching of TempFlow-GRPO, He et al., 2025,
arXiv 2508.04324).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..config import ConfigError
from ..math.advantages import group_advantages
from .base import ALGORITHMS
from .policy_gradient import PGConfig, PolicyGradient


@dataclass(frozen=True)
class GRPOConfig(PGConfig):
    global_std: bool = True  # normalise by the batch's std instead of each group's (Flow-GRPO)
    window: str = "none"  # none (the sampler's own sde_window) | random (Flow-GRPO-Fast) | sliding (MixGRPO)
    window_size: int = 2  # stochastic steps per rollout when window != none
    window_shift_every: int = 1  # sliding: iterations between one-step moves of the window

    def __post_init__(self):
        super().__post_init__()
        if self.window not in ("none", "random", "sliding"):
            raise ConfigError(f"algorithm_options.window '{self.window}' is not one of none, random, sliding")
        if self.window_size < 1 or self.window_shift_every < 1:
            raise ConfigError(f"algorithm_options.window_size and window_shift_every must be >= 1, got "
                              f"{self.window_size}, {self.window_shift_every}")


@ALGORITHMS.register("grpo", "Flow-GRPO / DanceGRPO: group advantages, PPO-clip per step, optional KL")
class GRPO(PolicyGradient):
    name = "grpo"
    config_cls = GRPOConfig

    def rollout_sampling(self, sampling, iteration, gen):
        c = self.config
        if c.window == "none":
            return sampling
        lo, hi = sampling.sde_window or (0, sampling.steps)  # the steps the window may cover
        if c.window_size > hi - lo:
            where = f"sampling.sde_window={tuple(sampling.sde_window)}" if sampling.sde_window else \
                f"sampling.steps={sampling.steps}"
            raise ConfigError(f"window_size={c.window_size} is larger than {where}")
        positions = hi - lo - c.window_size + 1
        if c.window == "random":
            start = lo + int(torch.randint(positions, (1,), generator=gen))
        else:
            start = lo + ((iteration - 1) // c.window_shift_every) % positions
        return dataclasses.replace(sampling, sde_window=(start, start + c.window_size))

    def advantages(self, rewards, prompts, group_size):
        return group_advantages(rewards, group_size, global_std=self.config.global_std, clip=self.config.adv_clip)
