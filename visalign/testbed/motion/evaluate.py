"""GenEval-S Motion evaluation: K clips per category on the held-out eval prompts, scored by the verifier.

The same protocol as the image evaluator (testbed/evaluate.py): clip i of category c uses eval prompt i mod n_c
and seed `seed * 1_000_000 + 10_000 * c + i`; score per category = fraction of clips fully correct under the
lenient rules; overall = mean of the six; the result dict has the image evaluator's keys, so the trainer, the
eval table and the hacking monitor read it unchanged. `evaluate` is the `motion` prompt set's evaluator
(motion/prompts.py); OracleMotionGenerator renders each prompt's clip, to measure the verifier, not a model.
"""

from __future__ import annotations

import numpy as np

from visalign.evaluate import category_means

from . import grammar, render, verify
from .vocab import CATEGORIES, FRAMES, RESOLUTION

# The verifier's readings (per clip), lower-is-better ones marked; labels for the hacking monitor's warning line.
READINGS = {"geneval_rules": "the lenient rules", "exact": "the exact reading",
            "extra": "extra objects per clip (most in any frame)",
            "lenient": "clips that pass the lenient rules only with objects nobody asked for"}
LOWER_IS_BETTER = ("extra", "lenient")


class OracleMotionGenerator:
    """Renders each prompt's clip exactly from its seed (random trajectories satisfying it); with `perturb`,
    every frame blurred and noised by world/render.perturb's defaults (or `blur` / `noise` given); with
    `distractors`, that many objects nobody asked for beside it (what the lenient rules let through and the
    exact reading does not). generate(prompts, seeds) -> uint8 [N, F, H, W, 3]."""

    parse = staticmethod(grammar.parse_prompt)  # the grammar its prompts are held to

    def __init__(self, perturb: bool = False, blur: float | None = None, noise: float | None = None,
                 distractors: int = 0, resolution: int = RESOLUTION, frames: int = FRAMES):
        if distractors < 0:
            raise ValueError(f"oracle: distractors must be >= 0, got {distractors}")
        self.blur = (0.6 if perturb else 0.0) if blur is None else blur
        self.noise = (0.04 if perturb else 0.0) if noise is None else noise
        self.distractors, self.resolution, self.frames = distractors, resolution, frames

    def generate(self, prompts: list[str], seeds: list[int]) -> np.ndarray:
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts and {len(seeds)} seeds; give one seed per prompt")
        out = []
        for p, s in zip(prompts, seeds):
            rng = np.random.default_rng(int(s))
            clip = render.render_clip(grammar.parse_prompt(p), rng, self.resolution, self.frames, self.distractors)
            if self.blur or self.noise:
                clip = render.perturb_clip(clip, rng, self.blur, self.noise)
            out.append(clip)
        return np.stack(out)  # [N, F, H, W, 3]


def eval_items(per_category: int, seed: int, split: str = "eval") -> list[tuple[str, str, int]]:
    """[(category, prompt, seed)] in a fixed order (split: eval = the held-out prompts, or train)."""
    from visalign.prompts import load_prompt_set

    return load_prompt_set("motion").eval_items(per_category, seed, split)


def score_clips(clips: np.ndarray, prompts: list[str]) -> list[verify.MotionVerdict]:
    return [verify.verify_clip(c, grammar.parse_prompt(p)) for c, p in zip(clips, prompts)]


def summarize(categories: list[str], verdicts: list[verify.MotionVerdict]) -> dict:
    """Both readings per category and overall (mean of the six): `categories` / `overall` under the lenient
    rules, `exact_*` under the exact reading; `extra_*` objects nobody asked for per clip (the most in any
    frame), `stray` foreground share outside the named objects, `partial` the fraction of checks that hold."""
    cats = category_means(categories, [v.score for v in verdicts], CATEGORIES)
    exact = category_means(categories, [float(v.exact) for v in verdicts], CATEGORIES)
    extra = category_means(categories, [float(v.extra) for v in verdicts], CATEGORIES)
    mean = lambda xs: float(np.mean(xs)) if verdicts else 0.0
    return {"overall": mean(list(cats.values())), "categories": cats, "n": len(verdicts),
            "exact": mean(list(exact.values())), "exact_categories": exact,
            "extra": mean([v.extra for v in verdicts]), "extra_categories": extra,
            "stray": mean([v.stray for v in verdicts]), "partial": mean([v.partial for v in verdicts]),
            "rules_label": "all checks"}


def evaluate(generator, per_category: int = 50, seed: int = 0, return_images: bool = False,
             split: str = "eval") -> dict:
    """Run a generator (generate(prompts, seeds) -> uint8 [N, F, H, W, 3]) on the eval set (split "train": on
    the train prompts instead, with the same seeds)."""
    if per_category < 1:
        raise ValueError(f"per_category must be >= 1, got {per_category}")
    items = eval_items(per_category, seed, split)
    cats, prompts, seeds = zip(*items)
    clips = np.asarray(generator.generate(list(prompts), list(seeds)))
    if clips.ndim != 5:
        raise ValueError(f"a Motion generator returns videos uint8 [N, F, H, W, 3], got shape {tuple(clips.shape)}")
    verdicts = score_clips(clips, list(prompts))
    result = summarize(list(cats), verdicts)
    if return_images:
        result["images"] = clips
        result["prompts"] = list(prompts)
        result["correct"] = [v.correct for v in verdicts]
        result["readings"] = readings(verdicts)
    return result


def readings(verdicts: list[verify.MotionVerdict]) -> dict[str, np.ndarray]:
    """The verifier's per-clip readings [N] the hacking monitor watches: the lenient rules (under the image
    evaluator's key, geneval_rules), the exact reading, extra objects, and `lenient`: passes the lenient rules
    only because they let objects nobody asked for in (rules and not exact)."""
    rules, exact = np.array([v.score for v in verdicts]), np.array([float(v.exact) for v in verdicts])
    return {"geneval_rules": rules, "exact": exact, "extra": np.array([float(v.extra) for v in verdicts]),
            "lenient": rules - exact}
