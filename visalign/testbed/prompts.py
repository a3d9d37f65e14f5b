"""The testbed's prompt sets in the core's registry: `geneval-s` (the six categories of the shapes world, train and
held-out splits; evaluated by the verifier, judged by the learned GenEval-S reward) and `text` (signs that say a
short word, world/text.py; held-out words, for the `ocr` reward, judged by the two OCR readings)."""

from __future__ import annotations

from visalign.monitor import OCR_SECOND_READING
from visalign.prompts import PROMPT_SETS, PromptSet

from . import evaluate
from .world import grammar, text
from .world.vocab import CATEGORIES


def verified_set(spec: str, label: str, categories, gram, evaluation, judges: tuple[str, ...] = ()) -> PromptSet:
    """A world's prompt set judged by its verifier: `name:CAT,CAT` trains on those categories only and still
    evaluates all of them (the rest are held-out categories: the "DPO vs GRPO" in-domain / out-of-domain
    question). gram.prompts(category, split) gives the prompts; evaluation holds evaluate, READINGS, LOWER_IS_BETTER."""
    train_cats = spec.split(":", 1)[1].split(",") if ":" in spec else list(categories)
    unknown = [c for c in train_cats if c not in categories]
    if unknown or not train_cats:
        raise ValueError(f"unknown {label} categories {unknown} in '{spec}'; accepted: {', '.join(categories)}")
    return PromptSet(spec, {c: gram.prompts(c, "train") for c in categories if c in train_cats},
                     {c: gram.prompts(c, "eval") for c in categories}, evaluator=evaluation.evaluate,
                     readings=dict(evaluation.READINGS), lower_is_better=evaluation.LOWER_IS_BETTER,
                     judges=judges, score_label=label)


@PROMPT_SETS.register("geneval-s", "geneval-s, geneval-s:CAT,CAT")
def geneval_s(spec: str) -> PromptSet:
    """GenEval-S: images of the shapes world in GenEval's six categories, judged by its verifier (both readings)."""
    return verified_set(spec, "GenEval-S", CATEGORIES, grammar, evaluate, judges=("geneval_s_learned",))


@PROMPT_SETS.register("text", "text")
def text_signs(spec: str) -> PromptSet:
    """Signs with a word (world/text.py): held-out words never trained on, scored by `ocr`."""
    return PromptSet(spec, {"text": text.prompts("train")}, {"text": text.prompts("eval")},
                     judges=("ocr", OCR_SECOND_READING))
