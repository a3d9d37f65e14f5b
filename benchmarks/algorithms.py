"""Issue 6's comparisons, each one `visalign compare` command (written to docs/ as a table with the command):

  main   every algorithm family on the bundled flow model with the same training wall budget per algorithm:
         does GRPO beat DDPO per sample? Is NFT more efficient than GRPO? Does KL limit the diversity loss?
  split  train on three GenEval-S categories, evaluate all six: DPO (offline and online) vs GRPO on held-in
         vs held-out categories (the "DPO vs GRPO" question, arXiv 2505.17017, at our scale).

    python benchmarks/algorithms.py [main|split|all] [--minutes 6] [--out runs/algorithms]

Wall budgets (not NFE) by default because one network evaluation costs very different time across families:
a no-grad rollout forward, a forward + backward of a policy-gradient update, or a backward through the
learned reward. The tables also give samples and NFE, and gain per 1k samples / per 100k NFE.
Run with both cores free (VISALIGN_THREADS unset); on 2 cores `main` takes about 55 minutes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from visalign.compare import compare

MAIN = ["grpo", "ddpo", "nft", "nft:kl_beta=0.1", "diffusion_dpo", "online_dpo", "refl"]
SPLIT = ["grpo", "online_dpo", "diffusion_dpo"]
HELD_IN = "single_object,counting,colors"


def run(which: str, minutes: float, out: Path) -> None:
    jobs = {"main": (MAIN, "geneval-s"), "split": (SPLIT, f"geneval-s:{HELD_IN}")}
    for name in (["main", "split"] if which == "all" else [which]):
        algos, prompts = jobs[name]
        res = compare(algos, budget_minutes=minutes, prompts=prompts, out=out / name, evals=3)
        cmd = (f"python benchmarks/algorithms.py {name} --minutes {minutes:g}   # = visalign compare "
               f"{' '.join(algos)} --budget-minutes {minutes:g} --prompts {prompts} --evals 3")
        doc = Path("docs") / f"algorithms-{name}.md"
        doc.write_text(f"# visalign compare: {name}\n\n`{cmd}`\n\n{res['header']}\n\n{res['table']}\n")
        print(res["table"])
        print(f"wrote {doc}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("which", nargs="?", default="all", choices=["main", "split", "all"])
    p.add_argument("--minutes", type=float, default=6.0)
    p.add_argument("--out", default="runs/algorithms")
    a = p.parse_args()
    run(a.which, a.minutes, Path(a.out))
    sys.exit(0)
