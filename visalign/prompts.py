"""Prompt sets a run trains and evaluates on: `animals` (DDPO's kind of prompt set: common animal names, for
rewards that judge the image alone, e.g. compressibility), `file:PATH` (one prompt a line), and the sets plugins
register in PROMPT_SETS (the GenEval-S testbed: `geneval-s`, its six categories, evaluated by its verifier, and
`text`, signs that say a short word, for the `ocr` reward).

A set has categories, each with train prompts and held-out eval prompts. A set with an `evaluator` (e.g.
geneval-s's verifier) is scored by it; the others by the mean of the training reward on the eval prompts
(deterministic sampler).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .registry import Registry


class PromptError(ValueError):
    """A prompt outside the grammar a model or reward reads (message is one line)."""


# name -> factory(spec) -> PromptSet; the spec is the name or `name:ARGS` (e.g. geneval-s:colors,counting).
# The doc is the accepted forms, listed when a set is unknown.
PROMPT_SETS = Registry("prompt set")

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
    # evaluator(generator, per_category, seed, return_images=False, split="eval") -> result dict (overall,
    # categories, n; with return_images also images, prompts and `readings`: per-image series the hacking monitor
    # watches); None: the set is scored by the run's reward (evaluate.evaluate_reward)
    evaluator: Callable | None = field(default=None, compare=False)
    readings: dict[str, str] = field(default_factory=dict)  # the evaluator's per-image readings -> their labels
    lower_is_better: tuple[str, ...] = ()  # readings that get worse by rising
    judges: tuple[str, ...] = ()  # the hacking monitor's default judges for runs on this set (monitor.py)
    score_label: str = ""  # what the evaluator's overall score is called ("GenEval-S")

    @property
    def verifier(self) -> bool:
        """Whether the set has its own evaluator (a verifier), so its prompts are held to a model's grammar."""
        return self.evaluator is not None

    @property
    def categories(self) -> list[str]:
        return list(self.train)

    def eval_items(self, per_category: int, seed: int, split: str = "eval") -> list[tuple[str, str, int]]:
        """[(category, prompt, seed)] in a fixed order: item i of category c is prompt i mod n_c of the split
        ("eval": the held-out prompts; "train": the train prompts, to see how much of a gain is memorised) with
        seed seed * 1_000_000 + 10_000 c + i (for geneval-s, exactly its evaluator's items)."""
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
    """'animals' | 'file:PATH' | a registered set ('geneval-s[:CAT,...]', 'text', ...) -> PromptSet (ValueError
    naming the accepted forms)."""
    name = spec.split(":", 1)[0] if isinstance(spec, str) else spec
    if isinstance(spec, str) and name not in ("file", "animals") and name in PROMPT_SETS:
        forms = [f.strip() for f in PROMPT_SETS.doc(name).split(",")]  # 'name' and/or 'name:ARGS'
        if spec == name or any(f.startswith(name + ":") for f in forms):
            return PROMPT_SETS.get(name)(spec)
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
    registered = [PROMPT_SETS.doc(n) or n for n in PROMPT_SETS.names()]
    raise ValueError(f"unknown prompt set '{spec}'; accepted: {', '.join(registered + ['animals', 'file:PATH'])}")
