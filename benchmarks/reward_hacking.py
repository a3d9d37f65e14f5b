"""Which recipes hack GenEval's rules, and does KL to the reference hold it back? Each arm is the default recipe
(`geneval-s-ar-grpo`, what `make demo` runs) with a few settings changed, trained to its recipe's end, and judged
on the held-out prompts by every reading the trainer logs: GenEval's rules, the exact reading (the named
objects and nothing else), extra objects per image, the learned GenEval-S reward (a judge no arm trains on),
per-prompt diversity, and the evaluations at which the hacking monitor warns (recomputed from each run's saved
per-image scores, so every run is judged by the monitor as it is now).

    python benchmarks/reward_hacking.py [--arms kl|default|all|NAME ...] [--seeds 0 1] [--out runs/hacking] [--table]

Arms (the KL weight is algorithm_options.kl_beta, a per-token KL to the frozen base, DPOK / Flow-GRPO's guard):
  rules-kl0.001  trained on GenEval's rules at the old default's KL (the recipe before the exact reading)
  rules-kl0.01, rules-kl0.1, rules-kl1
                 the same at larger KL weights ("KL limits reward hacking", DPOK and Flow-GRPO's claim, measured)
  default        the recipe as it stands (trained on the exact reading)
A finished run is read back, not trained again, so arms can be run one command at a time (or two at once with
VISALIGN_THREADS=1, one core each) and the table written at the end from all of them. Threads: torch's default
(every core), or VISALIGN_THREADS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from visalign import monitor
from visalign.testbed.evaluate import LOWER_IS_BETTER, READINGS
from visalign.recipe import load_train_recipe
from visalign.metrics import read_metrics
from visalign.trainer.trainer import Trainer

RECIPE = "geneval-s-ar-grpo"
ARMS = {
    "rules-kl0.001": ["reward_options.exact=false", "algorithm_options.kl_beta=0.001"],
    "rules-kl0.01": ["reward_options.exact=false", "algorithm_options.kl_beta=0.01"],
    "rules-kl0.1": ["reward_options.exact=false", "algorithm_options.kl_beta=0.1"],
    "rules-kl1": ["reward_options.exact=false", "algorithm_options.kl_beta=1"],
    "default": [],
}
PRESETS = {"kl": ["rules-kl0.001", "rules-kl0.01", "rules-kl0.1"], "default": ["default"], "all": list(ARMS)}


def run_arm(arm: str, seed: int, out: Path, train: bool = True) -> list[dict] | None:
    """Train one arm (or read it back when its run finished) -> its evaluation records; None when it has not
    finished and `train` is off."""
    run = out / f"{arm}-seed{seed}"
    recipe, resolved = load_train_recipe(RECIPE, ARMS[arm] + [f"train.seed={seed}"])
    rows = read_metrics(run)
    if not (rows and rows[-1]["iteration"] == recipe.train.iterations and "eval_overall" in rows[-1]):
        if not train:
            print(f"{arm} seed {seed}: no finished run in {run}; left out of the table", flush=True)
            return None
        if run.exists():
            import shutil

            shutil.rmtree(run)
        start = time.time()
        print(f"{arm} seed {seed}: training ({' '.join(ARMS[arm]) or 'the recipe as it stands'})", flush=True)
        Trainer(recipe, resolved, run, progress=False, log=lambda *a: None).train()
        print(f"{arm} seed {seed}: done in {(time.time() - start) / 60:.1f} min", flush=True)
        rows = read_metrics(run)
    return [r for r in rows if "eval_overall" in r]


def warned_at(run: Path) -> list[int]:
    """The evaluations (iterations) at which the hacking monitor, as it is now, warns on the run's saved
    per-image scores (RUN/evals): the table judges every run by the same monitor."""
    load = lambda p: {k: np.asarray(v) for k, v in json.loads(p.read_text())["series"].items()}  # noqa: E731
    paths = sorted((run / "evals").glob("iter-*.json"))
    base = load(paths[0])
    return [int(p.stem[5:]) for p in paths[1:] if monitor.hacking_warning(base, load(p), READINGS, lower_is_better=LOWER_IS_BETTER)]


def change(first: dict, last: dict, key: str) -> str:
    return f"{first[key]:.3f} -> {last[key]:.3f} ({last[key] - first[key]:+.3f})"


def row(arm: str, seed: int, evals: list[dict], warned: list[int]) -> list[str]:
    first, last = evals[0], evals[-1]
    judge = lambda r: r.get("eval_judges", {}).get("geneval_s_learned", float("nan"))  # noqa: E731
    return [arm, str(seed), f"{last['wall_s'] / 60:.1f}",
            change(first, last, "eval_overall"), change(first, last, "eval_exact"),
            f"{first['eval_extra']:.2f} -> {last['eval_extra']:.2f}",
            f"{judge(first):.3f} -> {judge(last):.3f}",
            f"{first['eval_diversity']:.3f} -> {last['eval_diversity']:.3f}",
            f"at {', '.join(map(str, warned))}" if warned else "no"]


def category_rows(arm: str, seed: int, evals: list[dict]) -> list[str]:
    last = evals[-1]
    cells = [f"{last['eval_categories'][c]:.2f} / {last['eval_exact_categories'][c]:.2f} / "
             f"{last['eval_extra_categories'][c]:.2f}" for c in last["eval_categories"]]
    return [f"| {arm} | {seed} | " + " | ".join(cells) + " |"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="+", default=["all"], help=f"presets {list(PRESETS)} or arms {list(ARMS)}")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--out", default="runs/hacking")
    ap.add_argument("--table", action="store_true", help="only write the table from the finished runs (train nothing)")
    args = ap.parse_args(argv)
    if "VISALIGN_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["VISALIGN_THREADS"]))
    arms = [a for name in args.arms for a in PRESETS.get(name, [name])]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        print(f"unknown arms {unknown}; accepted: {', '.join(list(PRESETS) + list(ARMS))}", file=sys.stderr)
        return 2
    out = Path(args.out)
    results = [(arm, seed, run_arm(arm, seed, out, train=not args.table)) for arm in dict.fromkeys(arms)
               for seed in args.seeds]
    results = [r for r in results if r[2] is not None]
    if not results:
        print(f"no finished runs in {out}", file=sys.stderr)
        return 2
    arms = [a for a in arms if any(r[0] == a for r in results)]
    head = ["arm", "seed", "train min", "GenEval's rules", "exact reading", "extra objects / image",
            "judge geneval_s_learned", "diversity", "hacking warning"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row(arm, seed, ev, warned_at(out / f"{arm}-seed{seed}"))) + " |"
              for arm, seed, ev in results]
    cats = list(results[0][2][-1]["eval_categories"])
    lines += ["", "Per category at the end (GenEval's rules / exact reading / extra objects per image):", "",
              "| arm | seed | " + " | ".join(cats) + " |", "|" + "---|" * (len(cats) + 2)]
    lines += [ln for arm, seed, ev in results for ln in category_rows(arm, seed, ev)]
    gains = {arm: [ev[-1]["eval_exact"] - ev[0]["eval_exact"] for a, _, ev in results if a == arm]
             for arm in dict.fromkeys(arms)}
    lines += ["", "Mean gain of the exact reading over the seeds: "
              + ", ".join(f"{arm} {np.mean(g):+.3f}" for arm, g in gains.items())]
    table = "\n".join(lines)
    print(f"recipe {RECIPE}, held-out GenEval-S (50 per category, evaluation seed 0), torch threads "
          f"{torch.get_num_threads()}\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
