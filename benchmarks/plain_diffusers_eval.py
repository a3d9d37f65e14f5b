"""Held-out GenEval-S of a diffusers pipeline folder, sampled by plain diffusers: how a user checks our claims
without trusting visalign's sampler. It imports diffusers, torch and the GenEval-S verifiers only
(visalign.testbed.world; for a video pipeline, WanPipeline or LTXPipeline, GenEval-S Motion's,
visalign.testbed.motion).

    python benchmarks/plain_diffusers_eval.py PIPELINE_DIR [--lora EXPORT_DIR] [--per-category 50] [--seed 0]
        [--split held-out|train] [--steps N] [--guidance W] [--out result.json] [--against visalign-eval.json]

The folder is loaded with `<Pipeline>.from_pretrained(dir)` (components saved as absent, e.g. SD3's T5, are
passed as None, the documented way to drop them); `--lora` calls `pipe.load_lora_weights(dir)` on a
`visalign export --format diffusers-lora` folder (a run or checkpoint folder is refused: it holds training
state, which load_lora_weights would load nothing from). Sampling arguments default to the folder's sampling.json (the
bundled pipelines carry one), else the pipeline's own defaults. Every image has its own `torch.Generator`
seeded as `visalign eval` seeds it (item i of category c: seed * 1,000,000 + 10,000 c + i), and SD3 gets the
sigmas linspace(1, 0, steps + 1)[:-1] (its pipeline otherwise stops at sigma 1/1000 instead of 0); WanPipeline takes
no `sigmas`, so its scheduler's set_timesteps is given them (LTXPipeline uses them by default). So for the
same steps and guidance the images are `visalign eval --model diffusers:DIR`'s, and `--against` (the JSON
`visalign eval --out` wrote) prints the difference per category.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from visalign.testbed.motion import grammar as motion_grammar, verify as motion_verify
from visalign.testbed.motion.vocab import CATEGORIES as MOTION_CATEGORIES
from visalign.testbed.world import grammar, verify
from visalign.testbed.world.vocab import CATEGORIES

VIDEO_PIPELINES = ("WanPipeline", "LTXPipeline")  # their __call__ returns .frames: judged by GenEval-S Motion


def world(pipeline_class: str):
    """(categories, grammar, verdict(image or clip, spec)) of the benchmark a pipeline draws for."""
    if pipeline_class in VIDEO_PIPELINES:
        return MOTION_CATEGORIES, motion_grammar, motion_verify.verify_clip
    return CATEGORIES, grammar, verify.verify


def items(per_category: int, seed: int, split: str, categories=CATEGORIES, gram=grammar) -> list[tuple[str, str, int]]:
    """[(category, prompt, seed)]: `visalign eval`'s items (split: eval = held-out prompts, or train)."""
    return [(cat, ps[i % len(ps)], seed * 1_000_000 + 10_000 * ci + i)
            for ci, cat in enumerate(categories) for ps in [gram.prompts(cat, split)] for i in range(per_category)]


def is_run_folder(path: str) -> bool:
    """Whether a folder is a visalign run, its checkpoints/ or one checkpoint: training state, which diffusers'
    loaders read as nothing, silently (a local look at the files: this script imports no visalign loader)."""
    p = Path(path)
    marks = ("recipe.json", "checkpoints/latest", "latest")
    return any((p / m).is_file() for m in marks) or all(
        (p / f).is_file() for f in ("weights.safetensors", "optimizer.pt", "state.json"))


def folder_error(pipeline: str, lora: str | None) -> str | None:
    """One line for a folder this script cannot load (and what to give instead), or None."""
    export = "visalign export RUN --format {} --out DIR"
    if lora and is_run_folder(lora):
        return (f"--lora {lora} is a visalign run or checkpoint folder, which load_lora_weights would load nothing "
                f"from; export it first: {export.format('diffusers-lora')}, then --lora DIR")
    if not (Path(pipeline) / "model_index.json").is_file():
        if is_run_folder(pipeline):
            return (f"{pipeline} is a visalign run or checkpoint folder, not a pipeline; export it first: "
                    f"{export.format('merged')}, then give DIR (or {export.format('diffusers-lora')} and --lora DIR)")
        return f"{pipeline} holds no model_index.json; give a diffusers pipeline folder"
    return None


def load(path: str, lora: str | None):
    import diffusers

    config = json.loads((Path(path) / "model_index.json").read_text())
    absent = {k: None for k, v in config.items() if not k.startswith("_") and v == [None, None]}
    pipe = getattr(diffusers, config["_class_name"]).from_pretrained(path, dtype=torch.float32, **absent)
    pipe.set_progress_bar_config(disable=True)
    if lora:
        pipe.load_lora_weights(lora)
    return pipe


def call_args(pipe, path: str, steps: int | None, guidance: float | None) -> dict:
    f = Path(path) / "sampling.json"
    kw = json.loads(f.read_text()) if f.is_file() else {}
    if steps is not None:
        kw["num_inference_steps"] = steps
    if guidance is not None:
        kw["guidance_scale"] = guidance
    sigmas = lambda n: list(np.linspace(1.0, 0.0, n + 1)[:-1])  # noqa: E731
    if type(pipe).__name__ == "StableDiffusion3Pipeline":
        kw["sigmas"] = sigmas(kw.get("num_inference_steps", 28))
    if type(pipe).__name__ == "WanPipeline":  # no `sigmas` argument: the scheduler is handed them
        real = pipe.scheduler.set_timesteps
        pipe.scheduler.set_timesteps = lambda n, device=None, **k: real(sigmas=sigmas(n), device=device)
    return kw


def generate(pipe, prompts: list[str], seeds: list[int], kw: dict, batch: int = 50) -> np.ndarray:
    """uint8 [N, H, W, 3] (a video pipeline: [N, F, H, W, 3]), one generator per image."""
    out = []
    video = type(pipe).__name__ in VIDEO_PIPELINES
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i : i + batch]]
        with torch.no_grad():
            res = pipe(prompts[i : i + batch], generator=gens, output_type="pt", **kw)
        x = res.frames if video else res.images  # [B, (F,) 3, H, W] in [0, 1]
        out.append((x.clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).numpy())
    return np.concatenate(out)


def score(images: np.ndarray, its: list[tuple[str, str, int]], pipeline_class: str = "") -> dict:
    """GenEval's rules (Motion: all checks), the exact reading and extra objects per image, per category and
    overall (mean of six)."""
    categories, gram, judge = world(pipeline_class)
    verdicts = [judge(img, gram.parse_prompt(p)) for img, (_, p, _) in zip(images, its)]
    res = {}
    for name, get in (("geneval_rules", lambda v: v.score), ("exact", lambda v: float(v.exact)),
                      ("extra", lambda v: float(v.extra))):
        per = {c: float(np.mean([get(v) for v, (cat, _, _) in zip(verdicts, its) if cat == c])) for c in categories}
        res[name] = {"overall": float(np.mean(list(per.values()))), "categories": per}
    return res


def table(res: dict, against: dict | None = None) -> str:
    lines = [f"{'category':<14} {'GenEval rules':>13} {'exact':>6} {'extra objects':>13}"
             + (f" {'visalign eval':>13} {'diff':>7}" if against else "")]
    for c in [*res["geneval_rules"]["categories"], "overall"]:
        get = lambda name: res[name]["overall"] if c == "overall" else res[name]["categories"][c]  # noqa: E731
        row = f"{c:<14} {get('geneval_rules'):>13.3f} {get('exact'):>6.3f} {get('extra'):>13.2f}"
        if against:
            theirs = against["overall"] if c == "overall" else against["categories"][c]
            row += f" {theirs:>13.3f} {get('geneval_rules') - theirs:>+7.3f}"
        lines.append(row)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pipeline", help="a diffusers pipeline folder (model_index.json)")
    p.add_argument("--lora", default=None, help="a `visalign export --format diffusers-lora` folder to load")
    p.add_argument("--per-category", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=("held-out", "train"), default="held-out")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--out", default=None, help="write the result as JSON")
    p.add_argument("--against", default=None, help="a `visalign eval --out` JSON to print the difference to")
    a = p.parse_args(argv)
    error = folder_error(a.pipeline, a.lora)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if "VISALIGN_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["VISALIGN_THREADS"]))
    cls = json.loads((Path(a.pipeline) / "model_index.json").read_text())["_class_name"]
    categories, gram, _ = world(cls)
    its = items(a.per_category, a.seed, "eval" if a.split == "held-out" else "train", categories, gram)
    pipe = load(a.pipeline, a.lora)
    kw = call_args(pipe, a.pipeline, a.steps, a.guidance)
    start = time.time()
    images = generate(pipe, [p for _, p, _ in its], [s for _, _, s in its], kw)
    res = score(images, its, cls)
    res.update(pipeline=a.pipeline, lora=a.lora, split=a.split, per_category=a.per_category, seed=a.seed,
               call={k: v for k, v in kw.items() if k != "sigmas"})
    against = json.loads(Path(a.against).read_text()) if a.against else None
    print(f"plain diffusers: {type(pipe).__name__} {a.pipeline}" + (f" + LoRA {a.lora}" if a.lora else "")
          + f", {a.split} {'GenEval-S Motion' if cls in VIDEO_PIPELINES else 'GenEval-S'} ({a.per_category} per category, seed {a.seed}), {res['call']}")
    print(table(res, against))
    print(f"{len(its)} images in {time.time() - start:.1f} s")
    if a.out:
        fd, tmp = tempfile.mkstemp(dir=Path(a.out).resolve().parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(res, f, indent=2)
        os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
