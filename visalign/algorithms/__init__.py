from . import ddpo, dpo, grpo, nft, reward_gradient, rwr  # noqa: F401  (registers)
from .base import ALGORITHMS, Algorithm, CapabilityError, load_algorithm

__all__ = ["ALGORITHMS", "Algorithm", "CapabilityError", "load_algorithm"]
