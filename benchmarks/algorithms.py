"""Issue 6's comparisons, each one `visalign compare` command (written to docs/results/ as a table with the command):

  main   every algorithm family on the bundled flow model with the same training wall budget per algorithm:
         does GRPO beat DDPO per sample? Is NFT more efficient than GRPO? Does KL limit the diversity loss?
  pg     GRPO vs DDPO with the same training settings (full fine-tune, lr 3e-5, 128 per batch, 2 minibatches):
         only the advantage estimator differs (group-relative vs per-prompt running statistics).
  split  train on three GenEval-S categories, evaluate all six: DPO (offline and online) vs GRPO on held-in
         vs held-out categories (the "DPO vs GRPO" question, arXiv 2505.17017, at our scale).
  each-ar, each-flow
         does each algorithm raise held-out GenEval-S on a bundled model within its budget? The log-prob and
         likelihood algorithms (grpo, ddpo, dpok, online_dpo, rwr) on the token model builtin:shapes-ar for
         --minutes of training each; the denoising-only ones (nft, diffusion_dpo, refl, draft, alignprop) on the
         flow model builtin:shapes-flow for their recipes' own iterations (--budget-recipe). Each from its
         recipe for that model.

    python benchmarks/algorithms.py [main|pg|split|all] [--nfe 60000] [--out runs/algorithms]
    python benchmarks/algorithms.py each-ar [--minutes 15] | each-flow  [--only ALGO] [--out runs/algorithms]

A finished run is kept and read back (compare skips it), so the runs of `each-*` can be spread over
processes, one core each: `VISALIGN_THREADS=1 python benchmarks/algorithms.py each-ar --only ddpo &` (and
another algorithm beside it), then the command without --only (same VISALIGN_THREADS: the page records it)
writes the table from the finished runs.

The budget is network evaluations (NFE) per algorithm, counted in rollouts and updates (reference and old
models included). One NFE costs very different time across families (a no-grad rollout forward, a forward +
backward of an update, a backward through the learned reward), so the tables also give wall minutes,
samples, and gain per 1k samples / per 100k NFE. Run with both cores free (VISALIGN_THREADS unset).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from visalign.compare import compare, write_doc
from visalign.checkpoint import atomic_write_text

MAIN = ["grpo", "ddpo", "nft", "nft:kl_beta=0.1", "diffusion_dpo", "online_dpo", "refl"]
SPLIT = ["grpo", "online_dpo", "diffusion_dpo"]
HELD_IN = "single_object,counting,colors"
SAME = ["train.finetune=full", "train.lr=3e-5", "train.batch_size=128", "train.minibatches=2"]
# diffusion_dpo's pairs in each-flow: 2,000 train prompts x 4 samples (1,539 pairs; 100 iterations x 32 pairs
# see each about twice): +0.047. On compare's default 400 prompts (312 pairs, each seen ~10 times) colours drift
# 0.94 -> 0.62 and it ends at +0.023 (docs/results/algorithms-each-flow.md).
PAIR_PROMPTS = 2000
EACH = {"each-ar": (["grpo", "ddpo", "dpok", "online_dpo", "rwr"], "builtin:shapes-ar"),
        "each-flow": (["nft", "diffusion_dpo", "refl", "draft", "alignprop"], "builtin:shapes-flow")}
# Every row trains on the same reward, GenEval's rules (the token model's grpo recipe now trains on the exact
# reading, which would make its row a different question): the table asks which algorithms hack that reward.
# The learned reward of the flow model's reward-gradient rows has no readings to choose.
EACH_SETS = {"each-ar": ["reward_options.exact=false"], "each-flow": []}


def run(which: str, nfe: int, out: Path) -> None:
    jobs = {"main": (MAIN, "geneval-s", []), "pg": (["grpo", "ddpo"], "geneval-s", SAME),
            "split": (SPLIT, f"geneval-s:{HELD_IN}", [])}
    for name in (list(jobs) if which == "all" else [which]):
        algos, prompts, sets = jobs[name]
        start = time.time()
        res = compare(algos, budget_nfe=nfe, prompts=prompts, out=out / name, evals=3, overrides=sets)
        minutes = (time.time() - start) / 60
        cmd = (f"python benchmarks/algorithms.py {name} --nfe {nfe}   # = visalign compare "
               f"{' '.join(algos)} --budget-nfe {nfe} --prompts {prompts} --evals 3"
               + "".join(f" --set {kv}" for kv in sets))
        doc = write_doc(Path("docs/results") / f"algorithms-{name}.md", f"visalign compare: {name}", cmd, res, minutes)
        print(res["table"])
        print(f"wrote {doc}")


def run_each(which: str, minutes: float, only: str | None, out: Path) -> None:
    algos, model = EACH[which]
    if only is not None and only not in algos:
        sys.exit(f"--only {only}: {which} runs {', '.join(algos)}")
    by_recipe = which == "each-flow"  # the flow recipes are short on purpose: run longer, colours drift (README)
    res = compare([only] if only else algos, budget_minutes=0 if by_recipe else minutes, model=model,
                  out=out / which, evals=3, recipe_budget=by_recipe, pair_prompts=PAIR_PROMPTS,
                  overrides=EACH_SETS[which])
    if only:  # one run of the table: its numbers are in out/which/<algo>/metrics.jsonl
        print(res["table"])
        return
    budget = f"--budget-recipe --pair-prompts {PAIR_PROMPTS}" if by_recipe else f"--budget-minutes {minutes:g} --evals 3"
    cmd = (f"python benchmarks/algorithms.py {which}{'' if by_recipe else f' --minutes {minutes:g}'}   # = visalign "
           f"compare {' '.join(algos)} --model {model} {budget}" + "".join(f" --set {kv}" for kv in EACH_SETS[which]))
    threads = torch.get_num_threads()
    how = (f"Runs made with {threads} torch thread(s) each" + (", two at a time on the 2-core machine (--only ALGO "
           "in two processes; this command then read the finished runs back)" if threads == 1 else "")
           + "; 'wall min' is each run's training time.")
    doc = Path("docs/results") / f"algorithms-{which}.md"
    atomic_write_text(doc, f"# Each algorithm on {model}\n\n`{cmd}`\n\n{res['header']}. {how}\n\n{res['table']}\n")
    print(res["table"])
    print(f"wrote {doc}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("which", nargs="?", default="all", choices=["main", "pg", "split", "all", *EACH])
    p.add_argument("--nfe", type=int, default=60000)
    p.add_argument("--minutes", type=float, default=15.0, help="each-*: training wall minutes per algorithm")
    p.add_argument("--only", help="each-*: run this one algorithm of the table")
    p.add_argument("--out", default="runs/algorithms")
    a = p.parse_args()
    if "VISALIGN_THREADS" in os.environ:  # default: torch's own (every core)
        torch.set_num_threads(int(os.environ["VISALIGN_THREADS"]))
    if a.which in EACH:
        run_each(a.which, a.minutes, a.only, Path(a.out))
    else:
        run(a.which, a.nfe, Path(a.out))
    sys.exit(0)
