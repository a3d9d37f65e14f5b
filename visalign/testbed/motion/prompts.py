"""The `motion` prompt set in the core's registry: the six categories of GenEval-S Motion (short videos of the
shapes world), train and held-out splits, evaluated by the Motion verifier (evaluate.py)."""

from __future__ import annotations

from visalign.prompts import PROMPT_SETS, PromptSet

from . import evaluate, grammar
from .vocab import CATEGORIES


@PROMPT_SETS.register("motion", "motion, motion:CAT,CAT")
def motion(spec: str) -> PromptSet:
    """GenEval-S Motion: 9-frame clips of the shapes world in six categories, judged by its verifier (videos)."""
    # motion:CAT,CAT trains on those categories only and still evaluates all six (the rest are held-out
    # categories), as geneval-s:CAT,CAT does
    train_cats = spec.split(":", 1)[1].split(",") if ":" in spec else list(CATEGORIES)
    unknown = [c for c in train_cats if c not in CATEGORIES]
    if unknown or not train_cats:
        raise ValueError(f"unknown GenEval-S Motion categories {unknown} in '{spec}'; accepted: {', '.join(CATEGORIES)}")
    return PromptSet(spec, {c: grammar.prompts(c, "train") for c in CATEGORIES if c in train_cats},
                     {c: grammar.prompts(c, "eval") for c in CATEGORIES}, evaluator=evaluate.evaluate,
                     readings=dict(evaluate.READINGS), lower_is_better=evaluate.LOWER_IS_BETTER,
                     score_label="GenEval-S Motion")
