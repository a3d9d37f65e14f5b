"""The memory options of a run, behind the adapter interface so the trainer needs no model-specific code.

train.optimizer: torch's AdamW, or bitsandbytes' 8-bit AdamW, which keeps its two moment estimates in 8 bits
(about a quarter of AdamW's state memory: what a full fine-tune of a big network spends most on). bitsandbytes is
optional and not a dependency: a run that asks for it without it installed stops with one line saying how to get it.

train.gradient_checkpointing: the model adapter's enable_gradient_checkpointing() (the backbone's own: diffusers'
enable_gradient_checkpointing, the built-in networks' blocks under torch.utils.checkpoint). Active wherever
gradients are on, whatever the module's train/eval mode (visalign keeps networks in eval mode), so rollouts under
no_grad run as before and updates recompute activations in the backward.
"""

from __future__ import annotations

import torch

from ..config import OPTIMIZERS, ConfigError
from ..protocols import optional


def make_optimizer(params: list[torch.nn.Parameter], cfg) -> torch.optim.Optimizer:
    """cfg: a TrainConfig (optimizer, lr, adam_betas, weight_decay) -> the optimizer over `params`."""
    kwargs = {"lr": cfg.lr, "betas": tuple(cfg.adam_betas), "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    if cfg.optimizer == "adamw8bit":
        return _bitsandbytes().optim.AdamW8bit(params, **kwargs)
    raise ConfigError(f"train.optimizer '{cfg.optimizer}' is not one of {', '.join(OPTIMIZERS)}")


def _bitsandbytes():
    """The bitsandbytes module, imported only when a run asks for it."""
    try:
        import bitsandbytes
    except ImportError:
        raise ConfigError(f"train.optimizer=adamw8bit needs bitsandbytes (pip install bitsandbytes); accepted: "
                          f"{', '.join(OPTIMIZERS)}") from None
    return bitsandbytes


# the models whose adapters have enable_gradient_checkpointing()
CHECKPOINTING_MODELS = ("builtin:shapes-flow, builtin:shapes-ddpm, builtin:text-flow, builtin:shapes-ar, builtin:text-ar "
                        "(and their saved folders), diffusers SD1.5 / SDXL / SD3 / FLUX pipelines")


def enable_gradient_checkpointing(adapter, model: str) -> None:
    """train.gradient_checkpointing=true: the adapter's own, or one line naming the models that have it."""
    enable = optional(adapter, "enable_gradient_checkpointing")
    if enable is None:
        raise ConfigError(f"train.gradient_checkpointing: model '{model}' has no gradient checkpointing; supported: "
                          f"{CHECKPOINTING_MODELS}")
    enable()
