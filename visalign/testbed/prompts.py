"""The testbed's prompt sets in the core's registry: `geneval-s` (the six categories of the shapes world, train and
held-out splits; evaluated by the verifier, judged by the learned GenEval-S reward) and `text` (signs that say a
short word, world/text.py; held-out words, for the `ocr` reward, judged by the two OCR readings)."""

from __future__ import annotations

from visalign.monitor import OCR_SECOND_READING
from visalign.prompts import PROMPT_SETS, PromptSet

from . import evaluate
from .world import grammar, text
from .world.vocab import CATEGORIES


@PROMPT_SETS.register("geneval-s", "geneval-s, geneval-s:CAT,CAT")
def geneval_s(spec: str) -> PromptSet:
    """GenEval-S: images of the shapes world in GenEval's six categories, judged by its verifier (both readings)."""
    # geneval-s:CAT,CAT trains on those categories only and still evaluates all six: the rest are
    # held-out categories (the "DPO vs GRPO" in-domain / out-of-domain question)
    train_cats = spec.split(":", 1)[1].split(",") if ":" in spec else list(CATEGORIES)
    unknown = [c for c in train_cats if c not in CATEGORIES]
    if unknown or not train_cats:
        raise ValueError(f"unknown GenEval-S categories {unknown} in '{spec}'; accepted: {', '.join(CATEGORIES)}")
    return PromptSet(spec, {c: grammar.prompts(c, "train") for c in CATEGORIES if c in train_cats},
                     {c: grammar.prompts(c, "eval") for c in CATEGORIES}, evaluator=evaluate.evaluate,
                     readings=dict(evaluate.READINGS), lower_is_better=evaluate.LOWER_IS_BETTER,
                     judges=("geneval_s_learned",), score_label="GenEval-S")


@PROMPT_SETS.register("text", "text")
def text_signs(spec: str) -> PromptSet:
    """Signs with a word (world/text.py): held-out words never trained on, scored by `ocr`."""
    return PromptSet(spec, {"text": text.prompts("train")}, {"text": text.prompts("eval")},
                     judges=("ocr", OCR_SECOND_READING))
