"""Prompt grammar of GenEval-S Motion: prompt <-> MotionSpec, the six categories, and their train/eval splits.

Grammar (one line per category):
    direction    a COLOR SHAPE moving DIR                               "a red circle moving right"
    two_motions  a COLOR SHAPE moving DIR and a COLOR SHAPE moving DIR  "a red circle moving left and a blue
                                                                         square moving up"
    speed        a COLOR SHAPE moving SPEED DIR                         "a green star moving quickly left"
    constancy    a COLOR SHAPE staying still                            "a purple square staying still"
    change       a COLOR SHAPE turning COLOR                            "a red circle turning green"
    counting     NUMBER SHAPEs moving DIR                               "three stars moving right"
DIR is left, right, up or down; SPEED slowly or quickly.

Design choices (where the issue's list left room), each so that a category tests one thing:
- two_motions: the two objects differ in shape, colour and direction, so a clip that swaps the motions (the
  circle goes up, the square left) fails: the category tests binding a motion to its object.
- speed: "moving quickly left", not "moving quickly to the left": one direction word for all four directions
  ("to the up" is no English) keeps the vocabulary one word per concept, shared with `direction`.
- constancy: the object stays still. A moving one would repeat `direction`; a still one isolates what the
  category is about, that the named shape and colour hold in every frame (no flicker, no drift into another
  shape), and "staying still" is itself a motion a video model must get right (a model that always moves fails).
- change: both colours are named ("a red circle turning green", not "a square that turns blue"), so both the
  before and the after are checkable; the two colours differ and the object stays still.
- counting: two to four objects (GenEval's counting range) moving together in the named direction, their
  colours free.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from visalign.prompts import PromptError  # the core's: what the CLI and the reward server catch

from .vocab import CATEGORIES, COLOR_NAMES, COUNT_WORDS, DIRECTIONS, NUMBERS, SHAPES, SPEEDS, plural, vocabulary

_NUMBER_WORDS = {v: k for k, v in NUMBERS.items()}
_PLURALS = {plural(s): s for s in SHAPES}


@dataclass(frozen=True)
class Mover:
    """One noun phrase and what it does: `count` objects of `shape` (of `color`; None: any colour), moving in
    `direction` (None: staying still) at `speed` (None: any speed), turning `turns_to` midway (None: no change)."""

    shape: str
    color: str | None = None
    count: int = 1
    direction: str | None = None
    speed: str | None = None
    turns_to: str | None = None


@dataclass(frozen=True)
class MotionSpec:
    """What a Motion prompt asks for: its category and its noun phrases (two for two_motions, else one)."""

    category: str
    objects: tuple[Mover, ...]

    @property
    def prompt(self) -> str:
        return format_prompt(self)

    @property
    def n_objects(self) -> int:
        """How many objects the prompt names (every frame should hold exactly these)."""
        return sum(o.count for o in self.objects)

    def canonical(self) -> tuple:
        """A key equal for prompts that ask for the same scene ("a red circle moving left and a blue square
        moving up" and the two clauses swapped): splits use it."""
        if self.category == "two_motions":
            return (self.category, tuple(sorted(self.objects, key=repr)))
        return (self.category, self.objects)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _clause(o: Mover) -> str:
    if o.count > 1:
        subject = f"{_NUMBER_WORDS[o.count]} {plural(o.shape)}"
    else:
        head = f"{o.color} {o.shape}" if o.color else o.shape
        subject = f"{_article(head)} {head}"
    if o.turns_to:
        return f"{subject} turning {o.turns_to}"
    if o.direction is None:
        return f"{subject} staying still"
    return f"{subject} moving {o.speed + ' ' if o.speed else ''}{o.direction}"


def format_prompt(spec: MotionSpec) -> str:
    return " and ".join(_clause(o) for o in spec.objects)


_FORMS = ("'a red circle moving right', 'a red circle moving left and a blue square moving up', "
          "'a green star moving quickly left', 'a purple square staying still', 'a red circle turning green', "
          "'three stars moving right'")


def _outside(prompt: str, why: str) -> PromptError:
    return PromptError(f"prompt {prompt!r} is outside the GenEval-S Motion grammar ({why}); accepted forms: {_FORMS}")


def _parse_clause(words: list[str], i: int, prompt: str) -> tuple[Mover, int]:
    """Parse one clause (noun phrase + what it does) starting at words[i]; return it and the index after it."""
    if i >= len(words):
        raise _outside(prompt, "a noun phrase is missing")
    w = words[i]
    color, count = None, 1
    if w in COUNT_WORDS:
        if i + 1 >= len(words) or words[i + 1] not in _PLURALS:
            raise _outside(prompt, f"'{w}' must be followed by a plural shape such as 'circles'")
        shape, count, i = _PLURALS[words[i + 1]], NUMBERS[w], i + 2
    elif w in ("a", "an"):
        i += 1
        if i < len(words) and words[i] in COLOR_NAMES:
            color, i = words[i], i + 1
        if i >= len(words) or words[i] not in SHAPES:
            raise _outside(prompt, "a shape is missing")
        shape, i = words[i], i + 1
    else:
        raise _outside(prompt, f"expected 'a', 'an' or a number, got '{w}'")
    verb = words[i] if i < len(words) else None
    if verb == "moving":
        speed = words[i + 1] if i + 1 < len(words) and words[i + 1] in SPEEDS else None
        j = i + 1 + (speed is not None)
        if j >= len(words) or words[j] not in DIRECTIONS:
            raise _outside(prompt, f"'moving' takes an optional speed ({', '.join(SPEEDS)}) and a direction "
                                   f"({', '.join(DIRECTIONS)})")
        return Mover(shape, color, count, words[j], speed), j + 1
    if verb == "staying":
        if i + 1 >= len(words) or words[i + 1] != "still":
            raise _outside(prompt, "'staying' must be followed by 'still'")
        return Mover(shape, color, count), i + 2
    if verb == "turning":
        if i + 1 >= len(words) or words[i + 1] not in COLOR_NAMES:
            raise _outside(prompt, f"'turning' must be followed by a colour ({', '.join(COLOR_NAMES)})")
        return Mover(shape, color, count, turns_to=words[i + 1]), i + 2
    raise _outside(prompt, "each object must be 'moving DIR', 'moving SPEED DIR', 'staying still' or 'turning COLOR'")


def _categorize(o: Mover, prompt: str) -> str:
    """The category of a one-clause prompt; PromptError for a clause no category asks for."""
    if o.count > 1:
        if o.direction is None or o.speed:
            raise _outside(prompt, "counted objects move in a direction at no named speed, as in 'three stars moving right'")
        return "counting"
    if o.color is None:
        raise _outside(prompt, "a single object is named with its colour, as in 'a red circle'")
    if o.turns_to:
        if o.turns_to == o.color:
            raise _outside(prompt, "an object turns into a different colour")
        return "change"
    if o.direction is None:
        return "constancy"
    return "speed" if o.speed else "direction"


def parse_prompt(prompt: str) -> MotionSpec:
    """Prompt string -> MotionSpec. Raises PromptError (one line) naming the unknown word or the broken form."""
    words = prompt.strip().lower().split()
    vocab = vocabulary()
    for w in words:
        if w not in vocab:
            raise PromptError(f"unknown word '{w}' in prompt {prompt!r}; accepted vocabulary: {' '.join(vocab)}")
    if not words:
        raise PromptError(f"empty prompt; accepted forms: {_FORMS}")
    first, i = _parse_clause(words, 0, prompt)
    if i == len(words):
        return MotionSpec(_categorize(first, prompt), (first,))
    if words[i] != "and":
        raise _outside(prompt, f"expected 'and' or the end after '{' '.join(words[:i])}'")
    second, i = _parse_clause(words, i + 1, prompt)
    if i != len(words):
        raise _outside(prompt, f"unexpected words after the second object: '{' '.join(words[i:])}'")
    a, b = first, second
    if any(o.count > 1 or o.color is None or o.direction is None or o.speed or o.turns_to for o in (a, b)):
        raise _outside(prompt, "two objects are each 'a COLOR SHAPE moving DIR', as in 'a red circle moving left "
                               "and a blue square moving up'")
    if a.shape == b.shape or a.color == b.color or a.direction == b.direction:
        raise _outside(prompt, "the two objects must differ in shape, in colour and in direction")
    return MotionSpec("two_motions", (a, b))


# --------------------------------------------------------------------------------------------- prompt sets


def all_specs(category: str) -> list[MotionSpec]:
    """Every spec of a category, in a fixed order."""
    objects = list(itertools.product(COLOR_NAMES, SHAPES))
    if category == "direction":
        return [MotionSpec(category, (Mover(s, c, direction=d),)) for d in DIRECTIONS for c, s in objects]
    if category == "two_motions":
        return [MotionSpec(category, (Mover(sa, ca, direction=da), Mover(sb, cb, direction=db)))
                for da, db in itertools.permutations(DIRECTIONS, 2)
                for sa, sb in itertools.permutations(SHAPES, 2)
                for ca, cb in itertools.permutations(COLOR_NAMES, 2)]
    if category == "speed":
        return [MotionSpec(category, (Mover(s, c, direction=d, speed=v),))
                for v in SPEEDS for d in DIRECTIONS for c, s in objects]
    if category == "constancy":
        return [MotionSpec(category, (Mover(s, c),)) for c, s in objects]
    if category == "change":
        return [MotionSpec(category, (Mover(s, a, turns_to=b),))
                for a, b in itertools.permutations(COLOR_NAMES, 2) for s in SHAPES]
    if category == "counting":
        return [MotionSpec(category, (Mover(s, count=NUMBERS[n], direction=d),))
                for n in COUNT_WORDS for d in DIRECTIONS for s in SHAPES]
    raise ValueError(f"unknown category '{category}'; accepted: {', '.join(CATEGORIES)}")


EVAL_FRACTION = 0.25
SPLIT_SEED = 0


def split_specs(category: str, split: str) -> list[MotionSpec]:
    """The fixed train or eval specs of a category. The split is made over canonical keys with a fixed seed
    (a quarter of the keys, at least one, go to eval), so a scene asked for in two word orders never sits
    on both sides: eval prompts are scenes never trained on."""
    if split not in ("train", "eval"):
        raise ValueError(f"unknown split '{split}'; accepted: train, eval")
    specs = all_specs(category)
    keys = sorted({s.canonical() for s in specs}, key=repr)
    random.Random(f"motion:{SPLIT_SEED}:{category}").shuffle(keys)
    n_eval = max(1, round(EVAL_FRACTION * len(keys)))
    eval_keys = set(keys[:n_eval])
    return [s for s in specs if (s.canonical() in eval_keys) == (split == "eval")]


def prompts(category: str, split: str) -> list[str]:
    return [s.prompt for s in split_specs(category, split)]
