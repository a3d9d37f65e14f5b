"""LoRA (Hu et al., 2021) through peft on any torch module: inject, save/load only the adapter weights,
and switch the adapters off (the frozen base is the reference policy for KL)."""

from __future__ import annotations

from contextlib import contextmanager

import torch.nn as nn


def _candidates(module: nn.Module) -> list[str]:
    """Short names of the Linear/Conv layers a LoRA could target."""
    short = {n.split(".")[-1] for n, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and n}
    return sorted(s for s in short if not s.isdigit())


def add_lora(module: nn.Module, rank: int, alpha: float, targets: tuple[str, ...]) -> list[nn.Parameter]:
    """Inject LoRA layers into every module whose name ends with one of `targets`; freeze the rest.
    -> the trainable (LoRA) parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    names = {n.split(".")[-1] for n, _ in module.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise ValueError(f"LoRA targets {missing} are not modules of this model; it has: {', '.join(_candidates(module))}")
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets)), module)
    params = []
    for n, p in module.named_parameters():
        p.requires_grad_("lora_" in n)
        if "lora_" in n:
            params.append(p)
    return params


def lora_state_dict(module: nn.Module) -> dict:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(module)


def load_lora_state_dict(module: nn.Module, state: dict) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(module, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"LoRA weights do not fit this model: first unexpected keys {sorted(unexpected)[:3]}")


def has_lora(module: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


@contextmanager
def adapters_disabled(module: nn.Module):
    """Inside the block the module computes as its frozen base."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)
