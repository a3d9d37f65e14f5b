"""LoRA (Hu et al., 2021) through peft on any torch module: inject, save/load only the adapter weights,
and switch the adapters off (the frozen base is the reference policy for KL)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


def _short(name: str) -> str:
    """The short name of a module path: its last component, or the last two when the last is an index
    (diffusers' `to_out.0`)."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def _candidates(module: nn.Module) -> list[str]:
    """Short names of the Linear/Conv layers a LoRA could target."""
    return sorted({_short(n) for n, m in module.named_modules() if isinstance(m, _LAYERS) and n})


def resolve_targets(module: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Full module paths that `targets` name: a target matches every module whose path is it or ends with
    '.' + it (`to_q`, `attn1.to_q`, diffusers' `to_out.0`). A matched container (diffusers' `to_out`, a
    ModuleList holding the output Linear and a Dropout) stands for the Linear/Conv layers directly in it.
    Raises ValueError naming the short names that do exist when a target matches nothing."""
    modules = dict(module.named_modules())
    found, missing = [], []
    for t in targets:
        hits = [n for n in modules if n and (n == t or n.endswith("." + t))]
        if not hits:
            missing.append(t)
        for n in hits:
            m = modules[n]
            if isinstance(m, _LAYERS) or not isinstance(m, (nn.ModuleList, nn.Sequential)):
                found.append(n)
            else:
                found += [f"{n}.{c}" for c, child in m.named_children() if isinstance(child, _LAYERS)]
    if missing:
        raise ValueError(f"LoRA targets {missing} are not modules of this model; it has: {', '.join(_candidates(module))}")
    return list(dict.fromkeys(found))


def add_lora(module: nn.Module, rank: int, alpha: float, targets: tuple[str, ...]) -> list[nn.Parameter]:
    """Inject LoRA layers into every module whose path ends with one of `targets` (see resolve_targets);
    freeze the rest. The LoRA weights are kept in fp32 even in a bf16/fp16 network (peft casts the layer
    input to them and the sum back), so optimizer updates are not rounded away. -> the trainable (LoRA)
    parameters."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import cast_adapter_dtype

    paths = resolve_targets(module, tuple(targets))
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=paths), module)
    cast_adapter_dtype(module, "default")
    params = []
    for n, p in module.named_parameters():
        p.requires_grad_("lora_" in n)
        if "lora_" in n:
            params.append(p)
    return params


def lora_tensors(module: nn.Module) -> dict:
    """The module's LoRA weights under its own state-dict names (peft's, with the adapter name)."""
    return {k: v for k, v in module.state_dict().items() if "lora_" in k}


def lora_state_dict(module: nn.Module, state_dict: dict | None = None) -> dict:
    """The LoRA weights as saved (peft's names, without the adapter name); `state_dict`: lora_tensors() as
    given (e.g. gathered whole from FSDP's shards) instead of the module's own."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(module, state_dict=state_dict)


def _saved_names(module: nn.Module) -> dict[str, str]:
    """{name in lora_state_dict(): the module's own name} of every LoRA weight (peft's renaming, asked of peft:
    each tensor tagged with its index)."""
    own = list(lora_tensors(module))
    tagged = lora_state_dict(module, {k: torch.tensor(i) for i, k in enumerate(own)})
    return {k: own[int(v)] for k, v in tagged.items()}


def load_lora_state_dict(module: nn.Module, state: dict, place=None) -> None:
    """lora_state_dict()'s weights into the module. place(whole, own) -> what to load (e.g. distributed.py's
    local_state: FSDP's part of each tensor of `own`, the module's state dict); None: peft loads them as they are."""
    from peft import set_peft_model_state_dict

    if place is not None:
        names = _saved_names(module)
        unexpected = sorted(set(state) - set(names))
        if not unexpected:
            module.load_state_dict(place({names[k]: v for k, v in state.items()}, module.state_dict()), strict=False)
            return
    else:
        result = set_peft_model_state_dict(module, state)
        unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"LoRA weights do not fit this model: first unexpected keys {sorted(unexpected)[:3]}")


def has_lora(module: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


def adapters_enabled(module: nn.Module) -> tuple[bool, ...]:
    """Whether each LoRA layer of the module computes with its adapter (() without LoRA layers)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return tuple(not m.disable_adapters for m in module.modules() if isinstance(m, BaseTunerLayer))


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


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every LoRA layer into its base weights (W + alpha/r B A) and put the plain base layer back in its
    place, in place. -> the module, now without LoRA layers (its state_dict has the base model's keys)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    named = [(n, m) for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in named:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    if hasattr(module, "peft_config"):
        del module.peft_config
    return module
