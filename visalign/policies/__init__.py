"""Policies by family: a model adapter says its `family`, the family's policy samples and scores it."""

from .flow import FlowPolicy, FlowSampling

POLICY_FAMILIES = {"flow": FlowPolicy}


def make_policy(adapter, sampling=None):
    family = getattr(adapter, "family", None)
    if family not in POLICY_FAMILIES:
        raise ValueError(f"no policy for model family '{family}'; supported: {sorted(POLICY_FAMILIES)}")
    cls = POLICY_FAMILIES[family]
    return cls(adapter, sampling) if sampling is not None else cls(adapter)


__all__ = ["FlowPolicy", "FlowSampling", "make_policy"]
