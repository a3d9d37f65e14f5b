"""The world's layout language: what a plan-then-draw model writes before its image tokens (the small-scale
form of a semantic chain of thought, T2I-R1, Jiang et al., 2025, arXiv 2505.00703).

    plan   := object (' ; ' object)*            at most MAX_OBJECTS objects
    object := COLOR SHAPE '@' CELL              e.g. "red circle @ left ; blue square @ top-right"
CELL names the cell of a 3x3 grid over the image that holds the object's centre. Pretraining plans come
from the renderer's ground-truth scene (`plan_of`), in the order the renderer placed the objects.

As tokens a plan is its words then END, right-padded with PAD to PLAN_LENGTH, so every plan has the same
length and a batch of sequences stays aligned. `allowed_next` is the grammar as a token mask: a model that
samples under it always writes a plan that parses.
"""

from __future__ import annotations

import torch

from .grammar import PromptError
from .vocab import COLOR_NAMES, MAX_OBJECTS, SHAPES

CELLS = ("top-left", "top", "top-right", "left", "center", "right", "bottom-left", "bottom", "bottom-right")
AT, SEP, END, PAD = "@", ";", "<end>", "<pad>"
WORDS = COLOR_NAMES + SHAPES + CELLS + (AT, SEP, END, PAD)
IDS = {w: i for i, w in enumerate(WORDS)}
OBJECT_WORDS = 5  # COLOR SHAPE @ CELL and the separator (or END after the last object)
PLAN_LENGTH = MAX_OBJECTS * OBJECT_WORDS  # the longest plan's words + END


class PlanError(PromptError):
    """A plan outside the layout language (message is one line)."""


def cell_of(cx: float, cy: float, resolution: int) -> str:
    col = min(int(3 * cx / resolution), 2)
    row = min(int(3 * cy / resolution), 2)
    return CELLS[3 * row + col]


def plan_of(objects, resolution: int) -> str:
    """Render SceneObjects -> the plan text of that scene."""
    return " ; ".join(f"{o.color} {o.shape} {AT} {cell_of(o.cx, o.cy, resolution)}" for o in objects)


def parse_plan(text: str) -> list[tuple[str, str, str]]:
    """Plan text -> [(colour, shape, cell)]. Raises PlanError naming what is wrong and the accepted form."""
    form = f"'COLOR SHAPE @ CELL ; ...' with at most {MAX_OBJECTS} objects, e.g. 'red circle @ left ; blue square @ right'"
    parts = [p.split() for p in text.strip().lower().split(SEP)]
    if len(parts) > MAX_OBJECTS:
        raise PlanError(f"plan {text!r} has {len(parts)} objects; accepted: {form}")
    out = []
    for words in parts:
        if len(words) != 4 or words[2] != AT:
            raise PlanError(f"plan {text!r}: object '{' '.join(words)}' is not 'COLOR SHAPE @ CELL'; accepted: {form}")
        color, shape, _, cell = words
        for word, allowed, what in ((color, COLOR_NAMES, "colour"), (shape, SHAPES, "shape"), (cell, CELLS, "cell")):
            if word not in allowed:
                raise PlanError(f"plan {text!r}: unknown {what} '{word}'; accepted: {', '.join(allowed)}")
        out.append((color, shape, cell))
    return out


def encode_plan(text: str) -> list[int]:
    """Plan text -> PLAN_LENGTH ids (words, END, PADs); "" is the empty plan. Raises PlanError if it does not
    parse."""
    objects = parse_plan(text) if text.strip() else []
    words = [w for obj in objects for w in (*obj[:2], AT, obj[2], SEP)][:-1] + [END]
    return [IDS[w] for w in words] + [IDS[PAD]] * (PLAN_LENGTH - len(words))


def decode_plan(ids) -> str:
    """PLAN_LENGTH ids -> plan text (the words before END)."""
    words = []
    for i in ids:
        w = WORDS[int(i)]
        if w in (END, PAD):
            break
        words.append(w)
    return " ".join(words)


# [j mod OBJECT_WORDS, word]: the words each position of an object accepts
_CLASS = torch.zeros(OBJECT_WORDS, len(WORDS), dtype=torch.bool)
for _k, _words in enumerate((COLOR_NAMES, SHAPES, (AT,), CELLS, (SEP, END))):
    _CLASS[_k, [IDS[w] for w in _words]] = True
_PAD_ONLY = torch.zeros(len(WORDS), dtype=torch.bool)
_PAD_ONLY[IDS[PAD]] = True
_END_ONLY = torch.zeros(len(WORDS), dtype=torch.bool)
_END_ONLY[IDS[END]] = True


def allowed_next(prefix: torch.Tensor, enabled: bool = True) -> torch.Tensor:
    """The grammar as a mask: prefix [R, j] plan ids written so far -> [R, len(WORDS)] bool, the words
    position j accepts. After END only PAD; the last object is followed by END. With enabled=False the plan
    is the empty one (END, then PADs): a model pretrained with empty plans some of the time draws without one."""
    r, j = prefix.shape
    if j >= PLAN_LENGTH:
        raise ValueError(f"a plan has {PLAN_LENGTH} positions; position {j} is past its end")
    allowed = _CLASS[j % OBJECT_WORDS].expand(r, -1).clone()  # [R, W]
    if j == 0 and not enabled:
        allowed[:] = _END_ONLY
    if j == PLAN_LENGTH - 1:
        allowed[:] = _END_ONLY
    if j > 0:
        done = ((prefix == IDS[END]) | (prefix == IDS[PAD])).any(1)  # [R]
        allowed[done] = _PAD_ONLY
    return allowed
