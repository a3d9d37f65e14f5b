"""The `ocr` reward's persistent tesseract workers (rewards/ocr.py) vs one `tesseract` command per worker and batch
(how the reward read before: each process loads tesseract's model, then reads a list of PNG files), same images,
same workers, same run.

    python benchmarks/ocr_reward_speed.py [--batch 64] [--workers 2] [--repeats 5]

The images are signs that `builtin:text-ar` draws for train-split words (seeded), the reward's real input.
Both read the same text on every image (checked). The table gives the time to read the batch (best of --repeats,
after a first call that starts the workers), images per second and the ratio.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ar_kv_cache import best_time  # the script's folder is on sys.path
from visalign.images import tensor_to_images
from visalign.models.registry import load_model
from visalign.policies import make_policy
from visalign.rewards import load_reward
from visalign.rewards.ocr import read_with_command
from visalign.testbed.world import text


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("VISALIGN_THREADS", "1")))
    policy = make_policy(load_model("builtin:text-ar"))
    words = text.split_words("train")
    prompts = [text.TextSpec(words[i * 7 % len(words)]).prompt for i in range(a.batch)]
    images = tensor_to_images(policy.sample(prompts, list(range(a.batch))).images)

    reward = load_reward("ocr", workers=a.workers)
    start = time.perf_counter()
    reward.read(images)
    first = time.perf_counter() - start
    t_workers, reads = best_time(lambda: reward.read(images), a.repeats)

    def baseline():
        with ThreadPoolExecutor(a.workers) as threads:
            return [r for rs in threads.map(read_with_command, np.array_split(images, a.workers)) for r in rs]

    t_command, command = best_time(baseline, a.repeats)
    if reads != command:
        raise SystemExit(f"the readings differ on {sum(x != y for x, y in zip(reads, command))} of {a.batch} images")
    exact = np.mean([r == text.parse_prompt(q).text for r, q in zip(reads, prompts)])
    print(f"{a.batch} signs of builtin:text-ar, {a.workers} workers, best of {a.repeats}; the same readings on "
          f"every image ({exact:.2f} of them read exactly)\n")
    print("| reading | s per batch | images / s | ratio |")
    print("|---|---|---|---|")
    print(f"| one `tesseract` command per worker and batch (before) | {t_command:.3f} | {a.batch / t_command:.0f} | 1.00x |")
    print(f"| persistent workers (`ocr` now) | {t_workers:.3f} | {a.batch / t_workers:.0f} | "
          f"{t_workers / t_command:.2f}x |")
    print(f"\nthe workers' first batch, with their start: {first:.3f} s")


if __name__ == "__main__":
    main()
