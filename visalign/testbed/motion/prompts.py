"""The `motion` prompt set in the core's registry: the six categories of GenEval-S Motion (short videos of the
shapes world), train and held-out splits, evaluated by the Motion verifier (evaluate.py)."""

from __future__ import annotations

from visalign.prompts import PROMPT_SETS, PromptSet

from . import evaluate, grammar
from .vocab import CATEGORIES


@PROMPT_SETS.register("motion", "motion, motion:CAT,CAT")
def motion(spec: str) -> PromptSet:
    """GenEval-S Motion: 9-frame clips of the shapes world in six categories, judged by its verifier (videos)."""
    from ..prompts import verified_set

    return verified_set(spec, "GenEval-S Motion", CATEGORIES, grammar, evaluate)
