"""GenEval-S evaluation: K images per category on the held-out eval prompts, scored by the verifier.

Image i of category c uses eval prompt i mod n_c and seed `seed * 1_000_000 + 10_000 * c + i`, so two
generators evaluated with the same seed see the same prompts and the same initial noise. Score per
category = fraction of images fully correct; overall = mean of the six (as GenEval).
"""

from __future__ import annotations

import numpy as np

from .world import grammar, verify
from .world.vocab import CATEGORIES


def eval_items(per_category: int, seed: int, split: str = "eval") -> list[tuple[str, str, int]]:
    """[(category, prompt, seed)] in a fixed order (split: eval = the held-out prompts, or train)."""
    from .prompts import load_prompt_set

    return load_prompt_set("geneval-s").eval_items(per_category, seed, split)


def score_images(images: np.ndarray, prompts: list[str]) -> list[verify.Verdict]:
    return [verify.verify(img, grammar.parse_prompt(p)) for img, p in zip(images, prompts)]


def category_means(categories: list[str], values, names=CATEGORIES) -> dict[str, float]:
    """Mean of per-image values by category (the image's category in `categories`), for each of `names`."""
    per = {c: [v for cat, v in zip(categories, values) if cat == c] for c in names}
    return {c: float(np.mean(s)) if s else 0.0 for c, s in per.items()}


def summarize(categories: list[str], verdicts: list[verify.Verdict]) -> dict:
    """Both readings per category and overall (mean of the six, as GenEval): `categories` / `overall` under
    GenEval's rules, `exact_*` under the exact reading; `extra_*` objects nobody asked for per image, `stray`
    foreground share outside the named objects, `partial` GenEval's partial credit."""
    cats = category_means(categories, [v.score for v in verdicts])
    exact = category_means(categories, [float(v.exact) for v in verdicts])
    extra = category_means(categories, [float(v.extra) for v in verdicts])
    mean = lambda xs: float(np.mean(xs)) if verdicts else 0.0  # noqa: E731
    return {"overall": mean(list(cats.values())), "categories": cats, "n": len(verdicts),
            "exact": mean(list(exact.values())), "exact_categories": exact,
            "extra": mean([v.extra for v in verdicts]), "extra_categories": extra,
            "stray": mean([v.stray for v in verdicts]), "partial": mean([v.partial for v in verdicts])}


class ProgressGenerator:
    """A generator whose generate() shows a progress bar with ETA (tqdm on stderr, only on a terminal): it asks
    the generator for its images in chunks of the generator's own batch (batch_size; 32 where it has none), so
    they are the images one call makes, the same whether a bar is shown or not."""

    def __init__(self, generator, desc: str = "eval"):
        self.generator, self.desc = generator, desc

    def __getattr__(self, name):  # everything else is the generator's (parse, validate, ...)
        return getattr(self.generator, name)

    def generate(self, prompts: list[str], seeds: list[int]) -> np.ndarray:
        from .trainer.logging import ConsoleLog, progress_bar

        step = getattr(self.generator, "batch_size", None) or 32
        out = []
        with progress_bar(ConsoleLog, len(prompts), self.desc, "img") as bar:
            for i in range(0, len(prompts), step):
                out.append(self.generator.generate(list(prompts[i : i + step]), list(seeds[i : i + step])))
                bar.update(len(out[-1]))
        return np.concatenate(out)


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


def reward_scores(reward, images: np.ndarray, prompts: list[str], batch: int = 64) -> np.ndarray:
    """A reward's per-image scores [N] of uint8 images [N, H, W, 3], in batches (no grouping metadata: a
    `combine` reward gives its raw weighted sum, comparable across evaluations)."""
    import torch

    from .images import images_to_tensor

    with torch.no_grad():
        return torch.cat([reward(images_to_tensor(images[i : i + batch]), list(prompts[i : i + batch]))
                          .scores.float().cpu() for i in range(0, len(prompts), batch)]).numpy()


def evaluate_reward(generator, reward, prompt_set, per_category: int = 50, seed: int = 0, split: str = "eval") -> dict:
    """A prompt set without a verifier: the mean of `reward` over its eval items (split "train": its train
    prompts, same seeds), per category and overall (the same result layout as evaluate(), images and per-image
    scores included)."""
    if per_category < 1:
        raise ValueError(f"per_category must be >= 1, got {per_category}")
    cats, prompts, seeds = zip(*prompt_set.eval_items(per_category, seed, split))
    images = generator.generate(list(prompts), list(seeds))
    scores = reward_scores(reward, images, list(prompts))  # [N]
    per = category_means(cats, scores, prompt_set.categories)
    return {"overall": float(np.mean(list(per.values()))), "categories": per, "n": len(prompts),
            "images": images, "prompts": list(prompts), "scores": scores}


def diversity(images: np.ndarray, prompts: list[str]) -> float:
    """Mean pairwise pixel distance between the images of one prompt (mean |a - b| / 255 over pixels),
    averaged over the prompts that have >= 2 images: it falls when a run collapses each prompt onto one
    picture (mode collapse, reward hacking). images uint8 [N, H, W, 3]."""
    by_prompt: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_prompt.setdefault(p, []).append(i)
    per = []
    for idx in by_prompt.values():
        if len(idx) >= 2:
            x = images[idx].reshape(len(idx), -1).astype(np.float32) / 255  # [k, D]
            d = np.abs(x[:, None] - x[None]).mean(-1)  # [k, k]
            per.append(d.sum() / (len(idx) * (len(idx) - 1)))
    return float(np.mean(per)) if per else 0.0


def format_table(result: dict) -> str:
    """Per category and overall; a GenEval-S result shows both readings and the extra objects per image."""
    if "exact" not in result:
        rows = [f"{'category':<14} {'score':>6}"] + [f"{c:<14} {s:>6.3f}" for c, s in result["categories"].items()]
        rows.append(f"{'overall':<14} {result['overall']:>6.3f}   (n={result['n']})")
        return "\n".join(rows)
    rows = [f"{'category':<14} {'GenEval rules':>13} {'exact':>6} {'extra objects':>13}"]
    rows += [f"{c:<14} {s:>13.3f} {result['exact_categories'][c]:>6.3f} {result['extra_categories'][c]:>13.2f}"
             for c, s in result["categories"].items()]
    rows.append(f"{'overall':<14} {result['overall']:>13.3f} {result['exact']:>6.3f} {result['extra']:>13.2f}   "
                f"(n={result['n']}; stray foreground {result['stray']:.3f} of the image)")
    return "\n".join(rows)
