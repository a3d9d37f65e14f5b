"""Pretraining kinds: what `visalign pretrain RECIPE` runs for a recipe's `kind`, registered by plugins (the
GenEval-S testbed registers pretrain, reward_pretrain, vq_pretrain, ar_pretrain, vae_pretrain, sd3_pretrain,
sd15_pretrain, motion_vae_pretrain and motion_wan_pretrain: visalign/testbed/pretrain/kinds.py). The core trains nothing from scratch itself: `train` is RL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .registry import Registry

PRETRAIN_KINDS = Registry("pretraining kind")


@dataclass(frozen=True)
class PretrainKind:
    recipe: type  # the recipe's dataclass (config.build(recipe, data) checks it)
    model: type  # the dataclass the recipe's `model` mapping is built as (checked by `visalign config`)
    run: Callable[[dict, str | Path, Callable], None]  # (recipe dict with its kind, out folder, log) -> trains, writes
    done: str = "pretrained in {minutes:.1f} min; model written to {out}"  # the line printed when it is done


def kinds() -> list[str]:
    """The registered kinds, in the order they were registered (the order error messages list them in)."""
    PRETRAIN_KINDS.names()  # the plugins register first
    return list(PRETRAIN_KINDS._items)
