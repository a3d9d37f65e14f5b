"""AR-GRPO on builtin:shapes-ar: held-out GenEval-S before and after, with NFE and wall time, on a training
wall-minute budget (issue 7's bar: +0.3 within 15 minutes on 2 cores). Each variant is one `visalign compare`:

  grpo    AR-GRPO, plan then image tokens trained together (geneval-s-ar-grpo)
  noplan  the same without the plan (model option plan=false, sampling.plan=false): does the plan help?
  split   AR-DPO (online_dpo, unit sequence) vs AR-GRPO trained on three categories, judged on all six

    python benchmarks/ar_grpo.py [grpo|noplan|split|all] [--minutes 15] [--out runs/ar_grpo]

NFE here is what the trainer counts for every family: rows through the network per forward call, so one
sampled token of B samples with CFG is 2B, and a teacher-forced scoring pass of B sequences is B (2B with CFG).
Writes docs/results/ar-grpo-<variant>.md. Threads: torch's default (every core), or VISALIGN_THREADS (1 = one core per run).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from visalign.compare import compare, write_doc

VARIANTS = {
    "grpo": (["grpo"], "builtin:shapes-ar", "geneval-s", []),
    "noplan": (["grpo"], "builtin:shapes-ar?plan=false", "geneval-s", ["sampling.plan=false"]),
    "split": (["online_dpo", "grpo"], "builtin:shapes-ar", "geneval-s:single_object,counting,colors", []),
}


def run(name: str, minutes: float, out: Path, note: str = "") -> None:
    algos, model, prompts, overrides = VARIANTS[name]
    start = time.time()
    res = compare(algos, budget_minutes=minutes, model=model, prompts=prompts, out=out / name, evals=1,
                  overrides=overrides)
    total = (time.time() - start) / 60
    sets = "".join(f" --set {o}" for o in overrides)
    cmd = (f"python benchmarks/ar_grpo.py {name} --minutes {minutes:g}   # = visalign compare {' '.join(algos)} "
           f"--model '{model}' --prompts {prompts} --budget-minutes {minutes:g} --evals 1{sets}")
    doc = write_doc(Path("docs/results") / f"ar-grpo-{name}.md", f"AR-GRPO benchmark: {name}", cmd, res, total, note)
    print(res["table"])
    print(f"wrote {doc}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("which", nargs="?", default="grpo", choices=[*VARIANTS, "all"])
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--out", default="runs/ar_grpo")
    p.add_argument("--note", default="", help="how the machine was used, written into the doc (e.g. 'shared with ...')")
    a = p.parse_args()
    if "VISALIGN_THREADS" in os.environ:  # default: torch's own (every core)
        torch.set_num_threads(int(os.environ["VISALIGN_THREADS"]))
    for v in VARIANTS if a.which == "all" else [a.which]:
        run(v, a.minutes, Path(a.out), a.note)
