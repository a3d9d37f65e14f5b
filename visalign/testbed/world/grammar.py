"""Prompt grammar of GenEval-S: prompt <-> structured spec, the six GenEval categories, and the prompt sets.

Grammar (one line per GenEval category):
    single_object  a SHAPE                          "a triangle"
    two_object     a SHAPE and a SHAPE              "a circle and a square"
    counting       NUMBER SHAPEs                    "three stars"
    colors         a COLOR SHAPE                    "a green square"
    position       a SHAPE RELATION a SHAPE         "a circle left of a triangle"
    color_attr     a COLOR SHAPE and a COLOR SHAPE  "a red circle and a blue square"
The two shapes of a two-object prompt differ, and so do the two colours of a color_attr prompt (as GenEval).

A Spec turns into GenEval's requirement lists (`include` / `exclude`) that the verifier checks: at least
the named objects, exactly N for counting, the named colour on the named object, the relation between the
two objects' boxes.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from visalign.prompts import PromptError  # noqa: F401  (the core's: what the CLI and the reward server catch)

from .vocab import (
    CATEGORIES,
    COLOR_NAMES,
    COUNT_WORDS,
    NUMBERS,
    RELATIONS,
    SHAPES,
    plural,
    vocabulary,
)

_NUMBER_WORDS = {v: k for k, v in NUMBERS.items()}
_PLURALS = {plural(s): s for s in SHAPES}


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    color: str | None = None
    count: int = 1


@dataclass(frozen=True)
class Requirement:
    """One GenEval `include` entry: at least `count` objects of `shape` (of `color`), optionally placed
    `relation` the objects matched by include entry `target`."""

    shape: str
    count: int = 1
    color: str | None = None
    relation: str | None = None
    target: int | None = None


@dataclass(frozen=True)
class Spec:
    """What a prompt asks for. For `position`, objects[0] is placed `relation` objects[1]."""

    category: str
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    @property
    def prompt(self) -> str:
        return format_prompt(self)

    def includes(self) -> list[Requirement]:
        if self.category == "position":
            a, b = self.objects
            # GenEval lists the reference object first, then the placed object pointing at entry 0.
            return [Requirement(b.shape), Requirement(a.shape, relation=self.relation, target=0)]
        return [Requirement(o.shape, o.count, o.color) for o in self.objects]

    def excludes(self) -> list[tuple[str, int]]:
        """(shape, n): the image fails if it holds n or more objects of shape (counting only)."""
        if self.category == "counting":
            (o,) = self.objects
            return [(o.shape, o.count + 1)]
        return []

    def canonical(self) -> tuple:
        """A key equal for prompts that ask for the same scene ('a circle and a square' and 'a square and
        a circle'; 'a circle left of a square' and 'a square right of a circle'): splits use it."""
        if self.category in ("two_object", "color_attr"):
            return (self.category, tuple(sorted((o.shape, o.color or "") for o in self.objects)))
        if self.category == "position":
            a, b = self.objects
            flip = {"right of": "left of", "below": "above"}
            if self.relation in flip:
                return (self.category, b.shape, flip[self.relation], a.shape)
            return (self.category, a.shape, self.relation, b.shape)
        return (self.category, self.objects)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(o: ObjectSpec) -> str:
    if o.count > 1:
        return f"{_NUMBER_WORDS[o.count]} {plural(o.shape)}"
    head = f"{o.color} {o.shape}" if o.color else o.shape
    return f"{_article(head)} {head}"


def format_prompt(spec: Spec) -> str:
    if spec.category == "position":
        a, b = spec.objects
        return f"{_noun_phrase(a)} {spec.relation} {_noun_phrase(b)}"
    return " and ".join(_noun_phrase(o) for o in spec.objects)


_FORMS = (
    "'a circle', 'a circle and a square', 'three stars', 'a red circle', "
    "'a circle left of a square', 'a red circle and a blue square'"
)


def _outside(prompt: str, why: str) -> PromptError:
    return PromptError(f"prompt {prompt!r} is outside the GenEval-S grammar ({why}); accepted forms: {_FORMS}")


def _parse_np(words: list[str], i: int, prompt: str) -> tuple[ObjectSpec, int]:
    """Parse one noun phrase starting at words[i]; return it and the index after it."""
    if i >= len(words):
        raise _outside(prompt, "a noun phrase is missing")
    w = words[i]
    if w in COUNT_WORDS:
        if i + 1 < len(words) and words[i + 1] in _PLURALS:
            return ObjectSpec(_PLURALS[words[i + 1]], count=NUMBERS[w]), i + 2
        raise _outside(prompt, f"'{w}' must be followed by a plural shape such as 'circles'")
    if w not in ("a", "an", "one"):
        raise _outside(prompt, f"expected 'a', 'an' or a number, got '{w}'")
    i += 1
    color = None
    if i < len(words) and words[i] in COLOR_NAMES:
        color, i = words[i], i + 1
    if i < len(words) and words[i] in SHAPES:
        return ObjectSpec(words[i], color=color), i + 1
    raise _outside(prompt, "a shape is missing")


def parse_prompt(prompt: str) -> Spec:
    """Prompt string -> Spec. Raises PromptError (one line) naming the unknown word or the broken form."""
    words = prompt.strip().lower().split()
    vocab = vocabulary()
    for w in words:
        if w not in vocab:
            raise PromptError(f"unknown word '{w}' in prompt {prompt!r}; accepted vocabulary: {' '.join(vocab)}")
    if not words:
        raise PromptError(f"empty prompt; accepted forms: {_FORMS}")
    first, i = _parse_np(words, 0, prompt)
    if i == len(words):
        if first.count > 1:
            return Spec("counting", (first,))
        return Spec("colors" if first.color else "single_object", (first,))
    relation = None
    if words[i] == "and":
        i += 1
    else:
        for rel in RELATIONS:
            n = len(rel.split())
            if words[i : i + n] == rel.split():
                relation, i = rel, i + n
                break
        else:
            raise _outside(prompt, f"expected 'and' or a relation ({', '.join(RELATIONS)}) after '{' '.join(words[:i])}'")
    second, i = _parse_np(words, i, prompt)
    if i != len(words):
        raise _outside(prompt, f"unexpected words after the second object: '{' '.join(words[i:])}'")
    if first.count > 1 or second.count > 1:
        raise _outside(prompt, "counts are only asked for alone, as in 'three stars'")
    if first.shape == second.shape:
        raise _outside(prompt, "the two objects must be different shapes")
    if relation is not None:
        if first.color or second.color:
            raise _outside(prompt, "position prompts name shapes without colours")
        return Spec("position", (first, second), relation)
    if bool(first.color) != bool(second.color):
        raise _outside(prompt, "either both objects have a colour or neither does")
    if first.color:
        if first.color == second.color:
            raise _outside(prompt, "the two colours must differ")
        return Spec("color_attr", (first, second))
    return Spec("two_object", (first, second))


# --------------------------------------------------------------------------------------------- prompt sets


def all_specs(category: str) -> list[Spec]:
    """Every spec of a category, in a fixed order."""
    pairs = [(a, b) for a, b in itertools.permutations(SHAPES, 2)]
    if category == "single_object":
        return [Spec(category, (ObjectSpec(s),)) for s in SHAPES]
    if category == "two_object":
        return [Spec(category, (ObjectSpec(a), ObjectSpec(b))) for a, b in pairs]
    if category == "counting":
        return [Spec(category, (ObjectSpec(s, count=NUMBERS[n]),)) for n in COUNT_WORDS for s in SHAPES]
    if category == "colors":
        return [Spec(category, (ObjectSpec(s, c),)) for c in COLOR_NAMES for s in SHAPES]
    if category == "position":
        return [Spec(category, (ObjectSpec(a), ObjectSpec(b)), r) for r in RELATIONS for a, b in pairs]
    if category == "color_attr":
        return [
            Spec(category, (ObjectSpec(a, ca), ObjectSpec(b, cb)))
            for a, b in pairs
            for ca, cb in itertools.permutations(COLOR_NAMES, 2)
        ]
    raise ValueError(f"unknown category '{category}'; accepted: {', '.join(CATEGORIES)}")


EVAL_FRACTION = 0.25
SPLIT_SEED = 0


def split_specs(category: str, split: str) -> list[Spec]:
    """The fixed train or eval specs of a category. The split is made over canonical keys with a fixed seed
    (a quarter of the keys, at least one, go to eval), so a scene asked for in two word orders never sits
    on both sides."""
    if split not in ("train", "eval"):
        raise ValueError(f"unknown split '{split}'; accepted: train, eval")
    specs = all_specs(category)
    keys = sorted({s.canonical() for s in specs}, key=repr)
    random.Random(f"{SPLIT_SEED}:{category}").shuffle(keys)
    n_eval = max(1, round(EVAL_FRACTION * len(keys)))
    eval_keys = set(keys[:n_eval])
    return [s for s in specs if (s.canonical() in eval_keys) == (split == "eval")]


def prompts(category: str, split: str) -> list[str]:
    return [s.prompt for s in split_specs(category, split)]
