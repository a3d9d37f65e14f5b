"""GenEval-S evaluation: K images per category on the held-out eval prompts, scored by the verifier.

Image i of category c uses eval prompt i mod n_c and seed `seed * 1_000_000 + 10_000 * c + i`, so two
generators evaluated with the same seed see the same prompts and the same initial noise. Score per
category = fraction of images fully correct; overall = mean of the six (as GenEval). `evaluate` is the geneval-s
prompt set's evaluator (testbed/prompts.py); READINGS are the per-image readings the hacking monitor watches.
"""

from __future__ import annotations

import numpy as np

from visalign.evaluate import category_means

from .world import grammar, verify
from .world.vocab import CATEGORIES

# The verifier's readings (per image), lower-is-better ones marked; labels for the hacking monitor's warning line.
READINGS = {"geneval_rules": "GenEval's rules", "exact": "the exact reading", "extra": "extra objects per image",
            "lenient": "images that pass GenEval's rules only with objects nobody asked for"}
LOWER_IS_BETTER = ("extra", "lenient")


def eval_items(per_category: int, seed: int, split: str = "eval") -> list[tuple[str, str, int]]:
    """[(category, prompt, seed)] in a fixed order (split: eval = the held-out prompts, or train)."""
    from visalign.prompts import load_prompt_set

    return load_prompt_set("geneval-s").eval_items(per_category, seed, split)


def score_images(images: np.ndarray, prompts: list[str]) -> list[verify.Verdict]:
    return [verify.verify(img, grammar.parse_prompt(p)) for img, p in zip(images, prompts)]


def summarize(categories: list[str], verdicts: list[verify.Verdict]) -> dict:
    """Both readings per category and overall (mean of the six, as GenEval): `categories` / `overall` under
    GenEval's rules, `exact_*` under the exact reading; `extra_*` objects nobody asked for per image, `stray`
    foreground share outside the named objects, `partial` GenEval's partial credit."""
    cats = category_means(categories, [v.score for v in verdicts], CATEGORIES)
    exact = category_means(categories, [float(v.exact) for v in verdicts], CATEGORIES)
    extra = category_means(categories, [float(v.extra) for v in verdicts], CATEGORIES)
    mean = lambda xs: float(np.mean(xs)) if verdicts else 0.0  # noqa: E731
    return {"overall": mean(list(cats.values())), "categories": cats, "n": len(verdicts),
            "exact": mean(list(exact.values())), "exact_categories": exact,
            "extra": mean([v.extra for v in verdicts]), "extra_categories": extra,
            "stray": mean([v.stray for v in verdicts]), "partial": mean([v.partial for v in verdicts])}


def evaluate(generator, per_category: int = 50, seed: int = 0, return_images: bool = False,
             split: str = "eval") -> dict:
    """Run a generator (generate(prompts, seeds) -> uint8 [B, H, W, 3]) on the eval set (split "train": on the
    train prompts instead, with the same seeds)."""
    if per_category < 1:
        raise ValueError(f"per_category must be >= 1, got {per_category}")
    items = eval_items(per_category, seed, split)
    cats, prompts, seeds = zip(*items)
    images = generator.generate(list(prompts), list(seeds))
    verdicts = score_images(images, list(prompts))
    result = summarize(list(cats), verdicts)
    if return_images:
        result["images"] = images
        result["prompts"] = list(prompts)
        result["correct"] = [v.correct for v in verdicts]
        result["readings"] = readings(verdicts)
    return result


def readings(verdicts: list[verify.Verdict]) -> dict[str, np.ndarray]:
    """The verifier's per-image readings [N] the hacking monitor watches (visalign/monitor.py): GenEval's rules,
    the exact reading, extra objects, and `lenient`: passes GenEval's rules only because they let objects nobody
    asked for in (rules and not exact), the share a policy raises when it learns that leniency."""
    rules, exact = np.array([v.score for v in verdicts]), np.array([float(v.exact) for v in verdicts])
    return {"geneval_rules": rules, "exact": exact, "extra": np.array([float(v.extra) for v in verdicts]),
            "lenient": rules - exact}
