"""Prompt sets a run trains and evaluates on: `geneval-s` (the six categories of the shapes world, train and
held-out splits; evaluated by the verifier), `animals` (DDPO's kind of prompt set: common animal
names, for rewards that judge the image alone, e.g. compressibility), `text` (signs that say a short word,
world/text.py; held-out words, for the `ocr` reward), or `file:PATH` (one prompt a line).

A set has categories, each with train prompts and held-out eval prompts; runs on a set other than
geneval-s are evaluated by the mean of the training reward on the eval prompts (deterministic sampler).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

# Common animals (our list, in the spirit of DDPO's "simple animals" prompts)
ANIMALS = (
    "cat dog horse cow sheep goat pig rabbit fox wolf bear lion tiger leopard cheetah zebra giraffe elephant "
    "rhinoceros hippopotamus camel deer moose kangaroo koala panda monkey gorilla squirrel hedgehog otter beaver "
    "raccoon owl eagle parrot penguin flamingo swan duck chicken turkey frog turtle snake lizard crocodile shark "
    "dolphin whale octopus crab butterfly bee ladybug snail"
).split()


@dataclass(frozen=True)
class PromptSet:
    name: str
    train: dict[str, list[str]]  # category -> train prompts
    eval: dict[str, list[str]]  # category -> held-out prompts
    verifier: bool = False  # evaluated by the GenEval-S verifier (else by the run's reward)

    @property
    def categories(self) -> list[str]:
        return list(self.train)

    def eval_items(self, per_category: int, seed: int, split: str = "eval") -> list[tuple[str, str, int]]:
        """[(category, prompt, seed)] in a fixed order: item i of category c is prompt i mod n_c of the split
        ("eval": the held-out prompts; "train": the train prompts, to see how much of a gain is memorised) with
        seed seed * 1_000_000 + 10_000 c + i (for geneval-s, exactly visalign.evaluate's items)."""
        if split not in ("eval", "train"):
            raise ValueError(f"split '{split}' is not one of eval (the held-out prompts), train")
        prompts = self.eval if split == "eval" else self.train
        return [(cat, ps[i % len(ps)], seed * 1_000_000 + 10_000 * ci + i)
                for ci, (cat, ps) in enumerate(prompts.items()) for i in range(per_category)]


def _split(prompts: list[str], name: str) -> tuple[list[str], list[str]]:
    """A quarter of the prompts (at least one) held out, chosen with a fixed seed; a single prompt is both."""
    if len(prompts) == 1:
        return prompts, prompts
    shuffled = sorted(dict.fromkeys(prompts))
    random.Random(f"visalign-prompts:{name}").shuffle(shuffled)
    n_eval = max(1, round(0.25 * len(shuffled)))
    return shuffled[n_eval:], shuffled[:n_eval]


def load_prompt_set(spec: str) -> PromptSet:
    """'geneval-s[:CAT,...]' | 'animals' | 'file:PATH' -> PromptSet (ValueError naming the accepted forms)."""
    if spec == "geneval-s" or spec.startswith("geneval-s:"):
        from .world import grammar
        from .world.vocab import CATEGORIES

        # geneval-s:CAT,CAT trains on those categories only and still evaluates all six: the rest are
        # held-out categories (the "DPO vs GRPO" in-domain / out-of-domain question)
        train_cats = spec.split(":", 1)[1].split(",") if ":" in spec else list(CATEGORIES)
        unknown = [c for c in train_cats if c not in CATEGORIES]
        if unknown or not train_cats:
            raise ValueError(f"unknown GenEval-S categories {unknown} in '{spec}'; accepted: {', '.join(CATEGORIES)}")
        return PromptSet(spec, {c: grammar.prompts(c, "train") for c in CATEGORIES if c in train_cats},
                         {c: grammar.prompts(c, "eval") for c in CATEGORIES}, verifier=True)
    if spec == "text":  # signs with a word (world/text.py): held-out words never trained on, scored by `ocr`
        from .world import text

        return PromptSet(spec, {"text": text.prompts("train")}, {"text": text.prompts("eval")})
    if spec == "animals":
        train, held = _split([f"a {a}" for a in ANIMALS], spec)
        return PromptSet(spec, {"animals": train}, {"animals": held})
    if spec.startswith("file:"):
        path = Path(spec[5:])
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise ValueError(f"prompt file {path} {what}; give file:PATH to a text file with one prompt a line")
        try:
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except UnicodeDecodeError as e:
            raise ValueError(f"prompt file {path} is not a text file (byte {e.start} is not UTF-8); give file:PATH "
                             f"to a text file with one prompt a line") from None
        if not lines:
            raise ValueError(f"prompt file {path} holds no prompts (one prompt a line)")
        train, held = _split(lines, spec)
        return PromptSet(spec, {path.stem: train}, {path.stem: held})
    raise ValueError(f"unknown prompt set '{spec}'; accepted: geneval-s, geneval-s:CAT,CAT, text, animals, "
                     f"file:PATH")
