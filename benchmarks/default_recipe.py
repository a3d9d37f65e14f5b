"""Runs a training recipe (default: geneval-s-ar-grpo, what `make demo` runs) and prints:
  - held-out GenEval-S overall vs training wall time and vs model evaluations (NFE), per evaluation;
  - where the wall time went, and wall time / time inside the network's forward + backward;
  - for reference (not a bar): the same training wall time spent on supervised fine-tuning of the same model
    on fresh renders (--sft: the model's SFT recipe, by default the one that belongs to the recipe's model),
    evaluated the same way.

    python benchmarks/default_recipe.py [--recipe NAME] [--sft RECIPE|none] [--out DIR] [key=value ...]

Wall time is training time (rollout + reward + advantages + update); evaluation is reported apart.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from visalign.cli import main as cli
from visalign.recipe import load_train_recipe
from visalign.testbed.evaluate import evaluate
from visalign.models.registry import PolicyGenerator, load_model
from visalign.trainer.trainer import Trainer

SFT = {"builtin:shapes-ar": "shapes-ar-sft", "builtin:shapes-flow": "shapes-flow-sft"}  # model -> its SFT recipe


def same_time_sft(sft: str, model: str, minutes: float, per_category: int, seed: int, out: Path) -> dict:
    """The SFT recipe `sft` (init: `model`, its own learning rate) for `minutes` of training wall time ->
    held-out GenEval-S of the result (per_category, seed: as the RL run evaluates), with its train_s."""
    start = time.time()
    code = cli(["pretrain", sft, "train.steps=1000000", f"train.max_minutes={minutes:.3f}",
                "train.checkpoint_every=1000000", "--out", str(out)])
    if code != 0:
        raise RuntimeError(f"visalign pretrain {sft} failed (exit code {code}); see its error line above")
    train_s = time.time() - start
    return {**evaluate(PolicyGenerator(load_model(f"{model}?path={out}")), per_category, seed), "train_s": train_s}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="geneval-s-ar-grpo")
    ap.add_argument("--sft", default=None, help="SFT recipe for the same-time reference (default: the model's; none: skip)")
    ap.add_argument("--out", default=None, help="run folder (default: runs/bench-<time>)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    out = Path(args.out or f"runs/bench-{time.strftime('%Y%m%d-%H%M%S')}")
    recipe, resolved = load_train_recipe(args.recipe, args.overrides)
    start = time.time()
    rows = Trainer(recipe, resolved, out, progress=False, log=lambda *a: None).train()
    total = time.time() - start
    evals = [r for r in rows if "eval_overall" in r]
    print(f"recipe {args.recipe} {' '.join(args.overrides)}  torch threads {torch.get_num_threads()}")
    print(f"{'iteration':>9} {'NFE':>9} {'wall_s':>8} {'eval overall':>12}  per category")
    for r in evals:
        cats = " ".join(f"{k[:6]}={v:.2f}" for k, v in r["eval_categories"].items())
        print(f"{r['iteration']:>9} {r['nfe']:>9} {r['wall_s']:>8.1f} {r['eval_overall']:>12.3f}  {cats}")
    train = [r for r in rows if r["iteration"] > 0]
    stages: dict[str, float] = {}
    for r in train:
        for k, v in r.items():
            if k.startswith("time_"):
                stages[k[5:-2]] = stages.get(k[5:-2], 0.0) + v
    wall = train[-1]["wall_s"]
    print(f"\ntraining wall time {wall:.1f} s; evaluation {stages.get('eval', 0):.1f} s; whole run {total:.1f} s")
    for k in ("rollout", "reward", "advantages", "update", "model"):
        print(f"  {k:<11} {stages.get(k, 0):8.1f} s  {stages.get(k, 0) / wall:6.1%} of wall")
    model = stages.get("model", 0.0)
    print(f"wall / model forward+backward = {wall / model:.3f}  (target <= 1.3)")
    gain = evals[-1]["eval_overall"] - evals[0]["eval_overall"]
    print(f"held-out overall {evals[0]['eval_overall']:.3f} -> {evals[-1]['eval_overall']:.3f} ({gain:+.3f})")
    sft = args.sft or SFT.get(recipe.model)
    if sft and sft != "none":
        res = same_time_sft(sft, recipe.model, wall / 60, recipe.train.eval_per_category, recipe.train.eval_seed,
                            out / "sft")
        cats = " ".join(f"{k[:6]}={v:.2f}" for k, v in res["categories"].items())
        print(f"reference, the same {wall / 60:.1f} training minutes on supervised fine-tuning ({sft}): "
              f"{evals[0]['eval_overall']:.3f} -> {res['overall']:.3f} ({res['overall'] - evals[0]['eval_overall']:+.3f})  {cats}")
    print(f"run folder: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
