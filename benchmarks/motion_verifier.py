"""How exactly the GenEval-S Motion verifier reads the oracle's clips: per category, on exact renders, on renders
blurred and noised frame by frame (world/render.perturb's defaults: sigma 0.6 px, noise std 0.04), on renders
with one object nobody asked for (the lenient rules should pass them, the exact reading should not; counted only
where the object fits: four moving objects leave no room for a fifth), and on near misses (the clip of a prompt
one word away, "moving left" for "moving right", "slowly" for "quickly", "three" for "two", judged against this
prompt: it should fail).

    python benchmarks/motion_verifier.py [--per-category 200] [--seed 0]

Prompts are drawn uniformly from every scene of each category (train and held-out alike), one seed per clip.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from visalign.testbed.motion import grammar, render, verify
from visalign.testbed.motion.vocab import CATEGORIES


def near_misses(spec, specs) -> list:
    """The specs of other scenes whose prompt differs from spec's in one word (articles aside)."""
    words = [w for w in spec.prompt.split() if w not in ("a", "an")]
    out = []
    for other in specs:
        ow = [w for w in other.prompt.split() if w not in ("a", "an")]
        if len(ow) == len(words) and sum(x != y for x, y in zip(ow, words)) == 1 and other.canonical() != spec.canonical():
            out.append(other)
    return out


def measure(category: str, n: int, seed: int) -> dict[str, float]:
    """The readings of n clips of a category under each condition, and the verifier's time per clip."""
    specs = grammar.all_specs(category)
    rng = np.random.default_rng([seed, CATEGORIES.index(category)])
    out = {k: 0.0 for k in ("clean", "clean_exact", "perturbed", "perturbed_exact", "extra", "extra_exact", "wrong")}
    seconds, fitted = 0.0, 0
    for _ in range(n):
        spec = specs[rng.integers(len(specs))]
        clip = render.render_clip(spec, rng)
        start = time.perf_counter()
        v = verify.verify_clip(clip, spec)
        seconds += time.perf_counter() - start
        p = verify.verify_clip(render.perturb_clip(clip, rng), spec)
        tracks = render.sample_tracks(spec, rng, distractors=1)
        if len(tracks) > spec.n_objects:
            e = verify.verify_clip(render.draw_clip(tracks), spec)
            fitted += 1
            out["extra"] += e.correct
            out["extra_exact"] += e.exact
        misses = near_misses(spec, specs)
        w = verify.verify_clip(render.render_clip(misses[rng.integers(len(misses))], rng), spec)
        for key, verdict in (("clean", v), ("perturbed", p)):
            out[key] += verdict.correct / n
            out[key + "_exact"] += verdict.exact / n
        out["wrong"] += w.correct / n
    out["extra"], out["extra_exact"] = out["extra"] / max(fitted, 1), out["extra_exact"] / max(fitted, 1)
    out["ms"], out["fitted"] = 1000 * seconds / n, fitted
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--per-category", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.per_category < 1:
        raise SystemExit(f"--per-category must be >= 1, got {a.per_category}")
    rows = {c: measure(c, a.per_category, a.seed) for c in CATEGORIES}
    head = ("| category | exact renders: lenient | exact | blur+noise: lenient | exact | 1 extra object: lenient "
            "| exact | (clips) | near miss accepted | verify ms/clip |")
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    cols = ("clean", "clean_exact", "perturbed", "perturbed_exact", "extra", "extra_exact", "wrong")
    for c, r in rows.items():
        cells = [f"{r[k]:.3f}" for k in cols]
        print(f"| {c} | " + " | ".join(cells[:6] + [str(r["fitted"])] + cells[6:]) + f" | {r['ms']:.1f} |")
    mean = {k: float(np.mean([r[k] for r in rows.values()])) for k in (*cols, "ms")}
    cells = [f"{mean[k]:.3f}" for k in cols]
    print("| **mean** | " + " | ".join(cells[:6] + [""] + cells[6:]) + f" | {mean['ms']:.1f} |")
    print(f"\n{a.per_category} clips per category and condition, seed {a.seed}")


if __name__ == "__main__":
    main()
