"""Issue 9's table: for each variance-reduction / sample-efficiency option, the gradient signal share of its
update and the held-out GenEval-S gain at equal compute (the same number of rollouts per row), on the bundled
flow model, textbook Flow-GRPO first. The last row spends the default row's training wall time on supervised
fine-tuning on fresh renders (more pretraining) at the same learning rate, for reference.

    python benchmarks/variance_reduction.py [--rollouts 3200] [--rows 1,3,5] [--out runs/vr]

signal: the signal share of one update, from the trainer's in-run diagnostic (cosine of the reward-driven
gradients of the even and odd groups, averaged over the 3 diagnostics of the run, combined for the whole
batch; trainer/diagnostics.py). run: what that share adds up to over the row's optimizer steps (signal adds
linearly over steps, noise as their square root). Single-run estimates of a few % are noisy: one cosine
scatters by about +-0.2, the mean of a run's 3 by about +-0.1; `visalign diagnose --batches 8` is steadier.
Each row costs about 2-6 minutes on 2 cores at the default 3200 rollouts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from default_recipe import same_time_sft  # benchmarks/, the script's folder, is on sys.path

from visalign.config import load_recipe_dict

from visalign.recipe import load_train_recipe
from visalign.testbed.evaluate import evaluate
from visalign.models.registry import PolicyGenerator, load_model
from visalign.trainer.trainer import Trainer

# (label, recipe, overrides); the GRPO rows keep the textbook hyperparameters unless the row changes them.
ROWS = [
    ("Flow-GRPO textbook (LoRA r8, lr 3e-4, 64/update)", "geneval-s-grpo", []),
    ("Flow-GRPO + shared initial noise + SDE window [0,3)", "geneval-s-grpo",
     ["train.shared_initial_noise=true", "sampling.sde_window=[0,3]"]),
    ("Flow-GRPO, full fine-tune, lr 1e-5, 128/update, KL 0.01", "geneval-s-grpo",
     ["train.finetune=full", "train.lr=1e-5", "train.batch_size=128", "algorithm_options.kl_beta=0.01"]),
    ("DiffusionNFT, CFG-3 rollouts, LoRA r8 (lr 1e-3)", "geneval-s-nft",
     ["sampling.guidance_scale=3.0", "train.finetune=lora", "train.lr=1e-3"]),
    ("DiffusionNFT, CFG-3 rollouts, full fine-tune", "geneval-s-nft", ["sampling.guidance_scale=3.0"]),
    ("DiffusionNFT, CFG-3 rollouts, variance curriculum", "geneval-s-nft",
     ["sampling.guidance_scale=3.0", "train.curriculum=variance"]),
    ("DiffusionNFT, CFG-3 rollouts, dense partial-credit reward", "geneval-s-nft",
     ["sampling.guidance_scale=3.0", "reward_options.dense=true"]),
    # "(default)": geneval-s-nft, the flow family's default recipe; main() adds its same-time SFT row
    ("DiffusionNFT, CFG-free rollouts, full fine-tune (default)", "geneval-s-nft", []),
]


def run_row(label, recipe_name, overrides, rollouts, out):
    recipe, _ = load_train_recipe(recipe_name, overrides)
    iters = max(2, rollouts // recipe.train.batch_size)
    over = [*overrides, f"train.iterations={iters}", f"train.eval_every={iters}", f"train.checkpoint_every={iters}",
            f"train.diagnose_every={max(1, iters // 3)}"]
    recipe, resolved = load_train_recipe(recipe_name, over)
    rows = Trainer(recipe, resolved, out, progress=False, log=lambda *a: None).train()
    evals = [r for r in rows if "eval_overall" in r]
    diag = [r for r in rows if "diag_signal_share_mean" in r][-1]
    return {"label": label, "rollouts": iters * recipe.train.batch_size, "signal_share": diag["diag_signal_share_mean"],
            "run_share": diag["diag_run_signal_share"],
            "before": evals[0]["eval_overall"], "after": evals[-1]["eval_overall"], "wall_s": rows[-1]["wall_s"],
            "categories": evals[-1]["eval_categories"]}


def sft_row(minutes, lr, out):
    """shapes-flow-sft (lr = the NFT default's) for the default row's training minutes, evaluated as the rows."""
    before = evaluate(PolicyGenerator(load_model("builtin:shapes-flow")), 50, 0)
    after = same_time_sft("shapes-flow-sft", "builtin:shapes-flow", minutes, 50, 0, out)
    return {"label": f"supervised fine-tuning on renders, lr {lr:g} (same wall time)", "rollouts": 0,
            "signal_share": float("nan"), "run_share": float("nan"), "before": before["overall"],
            "after": after["overall"], "wall_s": after["train_s"], "categories": after["categories"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rollouts", type=int, default=3200, help="images sampled per row (equal compute)")
    ap.add_argument("--rows", default="", help="comma-separated 1-based rows to run (default: all)")
    ap.add_argument("--out", default=f"runs/vr-{time.strftime('%Y%m%d-%H%M%S')}")
    args = ap.parse_args(argv)
    pick = [int(i) for i in args.rows.split(",") if i] or list(range(1, len(ROWS) + 1))
    out, results = Path(args.out), []
    for i in pick:
        label, recipe, over = ROWS[i - 1]
        results.append(run_row(label, recipe, over, args.rollouts, out / f"row{i}"))
        print(json.dumps(results[-1]), flush=True)
    default = next((r for r in results if "(default)" in r["label"]), None)
    if default is not None:
        lr = load_recipe_dict("shapes-flow-sft")["train"]["lr"]
        results.append(sft_row(default["wall_s"] / 60, lr, out / "sft"))
        print(json.dumps(results[-1]), flush=True)
    print(f"\n{'option':<62} {'rollouts':>8} {'signal':>7} {'run':>5} "
          f"{'before':>7} {'after':>7} {'gain':>7} {'wall_s':>7}")
    for r in results:
        print(f"{r['label']:<62} {r['rollouts']:>8} {r['signal_share']:>7.3f} {r['run_share']:>5.2f} "
              f"{r['before']:>7.3f} {r['after']:>7.3f} {r['after'] - r['before']:>+7.3f} {r['wall_s']:>7.0f}")
    (out / "table.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
