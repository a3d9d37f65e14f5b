"""Policies by family: a model adapter says its `family`, the family's policy samples and scores it."""

from .autoregressive import ARSampling, AutoregressivePolicy
from .diffusion import DiffusionPolicy, DiffusionSampling
from .flow import FlowPolicy, FlowSampling

POLICY_FAMILIES = {"flow": FlowPolicy, "diffusion": DiffusionPolicy, "autoregressive": AutoregressivePolicy}


def policy_class(adapter):
    family = getattr(adapter, "family", None)
    if family not in POLICY_FAMILIES:
        raise ValueError(f"no policy for model family '{family}'; supported: {sorted(POLICY_FAMILIES)}")
    return POLICY_FAMILIES[family]


def make_policy(adapter, sampling=None):
    return policy_class(adapter)(adapter, sampling)


__all__ = ["ARSampling", "AutoregressivePolicy", "DiffusionPolicy", "DiffusionSampling", "FlowPolicy", "FlowSampling", "make_policy", "policy_class"]
