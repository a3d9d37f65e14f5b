"""Agreement of the learned GenEval-S reward (`geneval_s_learned`) with the verifier on HELD-OUT prompts,
printed as a table and written to docs/results/geneval-s-reward-agreement.json:
  - each bundled generator's evaluation samples (`visalign eval`'s prompts, seeds and deterministic sampler,
    50 per category), labelled by the verifier;
  - renders of the same held-out items: the prompt's own scene, and a minimally edited scene (wrong colour,
    count, shape, relation, swapped objects or colours) shown with the prompt; half mildly blurred + noised.
Accuracy is at score 0.5; AUC is the ROC AUC of the score against the verifier's 0/1; pearson / spearman
compare per-prompt means (per generator and prompt) of the score and of the verifier.

    python benchmarks/reward_agreement.py [--path DIR] [--per-category 50] [--out docs/results/geneval-s-reward-agreement.json]

Runs on 1 torch thread unless VISALIGN_THREADS says otherwise (about a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    torch.set_num_threads(int(os.environ.get("VISALIGN_THREADS", "1")))
    from visalign.testbed.models.reward_net import WEIGHTS_NAME, RewardNet
    from visalign.testbed.rewards.learned import DEFAULT_DIR
    from visalign.testbed.pretrain.reward_pretrain import format_agreement, measure_agreement

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", default=str(DEFAULT_DIR), help="reward model directory (default: the bundled one)")
    ap.add_argument("--per-category", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "geneval-s-reward-agreement.json"))
    args = ap.parse_args(argv)
    path = Path(args.path)
    net = RewardNet.from_pretrained(path)
    start = time.time()
    result = measure_agreement(net, per_category=args.per_category, seed=args.seed, log=lambda m: None)
    result["seconds"] = round(time.time() - start, 1)
    result["params"] = sum(p.numel() for p in net.parameters())
    result["weights_bytes"] = (path / WEIGHTS_NAME).stat().st_size
    log = path / "pretrain_log.jsonl"
    if log.is_file():
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        result["pretraining"] = next((r for r in rows if r.get("summary")), None)
    try:
        result["model"] = str(path.resolve().relative_to(ROOT))
    except ValueError:
        result["model"] = str(path)
    print(f"learned GenEval-S reward {result['model']}: {result['params'] / 1e3:.0f}k params, "
          f"{result['weights_bytes'] / 2**20:.2f} MiB; held-out agreement with the verifier "
          f"({args.per_category} per category and source, {result['seconds']:.0f} s)")
    print(format_agreement(result))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
