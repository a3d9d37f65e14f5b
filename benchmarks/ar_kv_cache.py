"""KV-cache sampling vs recomputing the whole prefix at every token, same model, prompts, seeds and run; and
the preallocated cache (models/ar.py KVCache, a step writes its slot) vs one that concatenates each step's
keys and values onto the past (copies the whole past at every token).

    python benchmarks/ar_kv_cache.py [--model builtin:shapes-ar] [--batch 64] [--repeats 3]

Both samplers draw the same tokens (checked); the table gives the wall time of each (best of --repeats),
tokens per second, and the ratio. Threads: VISALIGN_THREADS (default 1, the tests' setting).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from visalign.models.registry import load_model
from visalign.policies import make_policy
from visalign.testbed.world import grammar
from visalign.testbed.world.vocab import CATEGORIES


def best_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="builtin:shapes-ar")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("VISALIGN_THREADS", "1")))
    adapter = load_model(a.model)
    policy = make_policy(adapter)
    s = policy.eval_sampling()
    prompts = [grammar.prompts(c, "eval")[i % len(grammar.prompts(c, "eval"))]
               for i, c in enumerate(CATEGORIES[j % len(CATEGORIES)] for j in range(a.batch))]
    seeds = list(range(a.batch))
    with torch.no_grad():
        t_cache, traj = best_time(lambda: policy.sample(prompts, seeds, s), a.repeats)
        t_full, tokens = best_time(lambda: policy.sample_recompute(prompts, seeds, s), a.repeats)
        preallocated = adapter.new_cache
        adapter.new_cache = lambda: None  # the prefill then returns (k, v) tuples, which each step concatenates onto
        t_cat, cat_traj = best_time(lambda: policy.sample(prompts, seeds, s), a.repeats)
        adapter.new_cache = preallocated
    same = torch.equal(traj.states, tokens) and torch.equal(traj.states, cat_traj.states)
    n = a.batch * adapter.gen_length
    print(f"{a.model}: {a.batch} samples x {adapter.gen_length} tokens (guidance {s.guidance_scale}, plan {s.plan}), "
          f"threads {torch.get_num_threads()}, best of {a.repeats}; same tokens: {same}")
    print("| sampler | wall s | tokens/s |\n|---|---|---|")
    print(f"| KV cache, preallocated | {t_cache:.2f} | {n / t_cache:,.0f} |")
    print(f"| KV cache, concatenated | {t_cat:.2f} | {n / t_cat:,.0f} |")
    print(f"| full prefix each token | {t_full:.2f} | {n / t_full:,.0f} |")
    print(f"KV-cache speedup: {t_full / t_cache:.1f}x; preallocated vs concatenated: {t_cat / t_cache:.2f}x")


if __name__ == "__main__":
    main()
