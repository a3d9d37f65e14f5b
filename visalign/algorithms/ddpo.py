"""DDPO (Black et al., 2023, arXiv 2305.13301) and DPOK (Fan et al., 2023, arXiv 2305.16381): policy gradient on
the denoising MDP with per-prompt reward statistics instead of groups.

DDPO: each prompt's advantages are normalised by the mean and std of its own last `stat_buffer` rewards
(once it has `stat_min_count` of them; the batch's before that); loss per step: PPO-clip on the importance
ratio (DDPO-IS, estimator "ppo") or the score function (DDPO-SF, estimator "sf", one epoch). DPOK: the same
policy gradient plus kl_beta x the per-step KL to the pretrained (reference) policy, which keeps the fine-tuned
model close to where it started (the paper's regulariser against reward over-optimisation).
Both run on every policy with log-probs: DDIM with eta > 0 (what the papers trained) and the flow SDE.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigError
from ..math.advantages import PerPromptStatTracker, group_advantages
from .base import ALGORITHMS
from .policy_gradient import PGConfig, PolicyGradient


@dataclass(frozen=True)
class DDPOConfig(PGConfig):
    per_prompt_stats: bool = True  # normalise by each prompt's running statistics (False: by the batch's)
    stat_buffer: int = 32  # rewards kept per prompt
    stat_min_count: int = 16  # a prompt uses its own statistics once it has this many rewards

    def __post_init__(self):
        super().__post_init__()
        if self.stat_buffer < 1 or not 1 <= self.stat_min_count <= self.stat_buffer:
            raise ConfigError(f"algorithm_options.stat_min_count must be in [1, stat_buffer={self.stat_buffer}], "
                              f"got {self.stat_min_count}")


@ALGORITHMS.register("ddpo", "DDPO: per-prompt reward statistics, PPO-clip (IS) or score-function (SF) per step")
class DDPO(PolicyGradient):
    name = "ddpo"
    config_cls = DDPOConfig

    def __init__(self, config):
        super().__init__(config)
        self.tracker = PerPromptStatTracker(config.stat_buffer, config.stat_min_count, clip=config.adv_clip)

    def advantages(self, rewards, prompts, group_size):
        if not self.config.per_prompt_stats:  # the whole batch as one group
            return group_advantages(rewards, len(rewards), eps=1e-6, clip=self.config.adv_clip)
        return self.tracker.update(prompts, rewards)

    def state_dict(self) -> dict:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state)


@dataclass(frozen=True)
class DPOKConfig(DDPOConfig):
    kl_beta: float = 0.01  # DPOK's KL weight (the paper's beta); must be > 0

    def __post_init__(self):
        super().__post_init__()
        if self.kl_beta <= 0:
            raise ConfigError(f"algorithm_options.kl_beta must be > 0 for dpok (it is its KL), got {self.kl_beta}; "
                              f"use ddpo for no KL")


@ALGORITHMS.register("dpok", "DPOK: DDPO's policy gradient + KL to the pretrained policy per step")
class DPOK(DDPO):
    name = "dpok"
    config_cls = DPOKConfig
