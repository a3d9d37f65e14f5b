"""An algorithm variant: GRPO with rank advantages (`algorithm: visalign_example_plugin.algos:RankGRPO`). Its
config dataclass's fields are the recipe's `algorithm_options`, typed and range-checked like the built-ins'."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from visalign.algorithms.grpo import GRPO, GRPOConfig
from visalign.config import PositiveFloat


@dataclass(frozen=True)
class RankGRPOConfig(GRPOConfig):
    scale: PositiveFloat = 1.0  # the best sample of a group gets +scale, the worst -scale


class RankGRPO(GRPO):
    """Each sample's advantage is its rank within its group, centred and scaled to [-scale, scale]: insensitive to
    the reward's units and outliers. Everything else (PPO-clip per step, KL, windows) is GRPO's."""

    name = "rank_grpo"
    config_cls = RankGRPOConfig

    def advantages(self, rewards: torch.Tensor, prompts: list[str], group_size: int) -> torch.Tensor:
        groups = rewards.float().view(-1, group_size)  # [G, g]
        ranks = groups.argsort(dim=1).argsort(dim=1).float()  # [G, g] 0 = worst
        centred = ranks - (group_size - 1) / 2
        return (centred / max((group_size - 1) / 2, 1) * self.config.scale).flatten()
