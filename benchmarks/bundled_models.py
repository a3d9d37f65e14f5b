"""Sampling speed of every bundled generator at its own defaults (steps, guidance), the same held-out prompts and
seeds, in this process one after another: seconds per image and the ratio to builtin:shapes-flow (the custom
flow UNet the CPU comparisons use). Held-out GenEval-S of each is `visalign eval --model M` (docs/results).

    python benchmarks/bundled_models.py [--per-category 10] [--repeats 2]

Threads: torch's default (every core), or VISALIGN_THREADS. Best of `repeats` timings per model.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from visalign.testbed.evaluate import eval_items
from visalign.models.registry import load_generator

MODELS = ("builtin:shapes-flow", "builtin:shapes-sd3", "builtin:shapes-ddpm", "builtin:shapes-sd15",
          "builtin:shapes-ar")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per-category", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    if "VISALIGN_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["VISALIGN_THREADS"]))
    _, prompts, seeds = zip(*eval_items(a.per_category, 0))
    rows = []
    for spec in MODELS:
        gen = load_generator(spec)
        best = float("inf")
        for _ in range(a.repeats):
            start = time.perf_counter()
            gen.generate(list(prompts), list(seeds))
            best = min(best, time.perf_counter() - start)
        rows.append((spec, best / len(prompts)))
    ref = rows[0][1]
    print(f"{len(prompts)} held-out prompts, torch threads {torch.get_num_threads()}, best of {a.repeats}")
    print(f"{'model':<22} {'s / image':>10} {'x shapes-flow':>14}")
    for spec, s in rows:
        print(f"{spec:<22} {s:>10.4f} {s / ref:>14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
