"""Evaluation helpers every prompt set uses: per-category means, a reward's scores over images, the evaluation of a
prompt set without an evaluator of its own (the mean of a reward over its held-out items), diversity, the table.

A prompt set's own evaluator (e.g. GenEval-S's verifier, visalign/testbed/evaluate.py) is `PromptSet.evaluator`.
Image i of category c uses eval prompt i mod n_c and seed `seed * 1_000_000 + 10_000 * c + i` (PromptSet.eval_items),
so two generators evaluated with the same seed see the same prompts and the same initial noise.
"""

from __future__ import annotations

import numpy as np


def category_means(categories: list[str], values, names) -> dict[str, float]:
    """Mean of per-image values by category (the image's category in `categories`), for each of `names`."""
    per = {c: [v for cat, v in zip(categories, values) if cat == c] for c in names}
    return {c: float(np.mean(s)) if s else 0.0 for c, s in per.items()}


class ProgressGenerator:
    """A generator whose generate() shows a progress bar with ETA (tqdm on stderr, only on a terminal): it asks
    the generator for its images in chunks of the generator's own batch (batch_size; 32 where it has none), so
    they are the images one call makes, the same whether a bar is shown or not."""

    def __init__(self, generator, desc: str = "eval"):
        self.generator, self.desc = generator, desc

    def __getattr__(self, name):  # everything else is the generator's (parse, validate, ...)
        return getattr(self.generator, name)

    def generate(self, prompts: list[str], seeds: list[int]) -> np.ndarray:
        from .metrics import ConsoleLog, progress_bar

        step = getattr(self.generator, "batch_size", None) or 32
        out = []
        with progress_bar(ConsoleLog, len(prompts), self.desc, "img") as bar:
            for i in range(0, len(prompts), step):
                out.append(self.generator.generate(list(prompts[i : i + step]), list(seeds[i : i + step])))
                bar.update(len(out[-1]))
        return np.concatenate(out)


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
    """Per category and overall; a verifier's result (GenEval-S, Motion) shows both readings (the lenient one under
    its `rules_label`) and the extra objects per image."""
    if "exact" not in result:
        rows = [f"{'category':<14} {'score':>6}"] + [f"{c:<14} {s:>6.3f}" for c, s in result["categories"].items()]
        rows.append(f"{'overall':<14} {result['overall']:>6.3f}   (n={result['n']})")
        return "\n".join(rows)
    rows = [f"{'category':<14} {result.get('rules_label', 'GenEval rules'):>13} {'exact':>6} {'extra objects':>13}"]
    rows += [f"{c:<14} {s:>13.3f} {result['exact_categories'][c]:>6.3f} {result['extra_categories'][c]:>13.2f}"
             for c, s in result["categories"].items()]
    rows.append(f"{'overall':<14} {result['overall']:>13.3f} {result['exact']:>6.3f} {result['extra']:>13.2f}   "
                f"(n={result['n']}; stray foreground {result['stray']:.3f} of the image)")
    return "\n".join(rows)
