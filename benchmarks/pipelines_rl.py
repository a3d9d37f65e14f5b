"""RL through the diffusers path on the bundled pipelines (builtin:shapes-sd3, builtin:shapes-sd15): each recipe
trained for its 30 training minutes per seed, judged on the held-out prompts by GenEval's rules, the exact reading
and extra objects per image, with the final model's train-split score beside it (how much of a gain is
memorised) and, for a LoRA run, the held-out score plain diffusers gives with the exported LoRA loaded
(`pipe.load_lora_weights`, benchmarks/plain_diffusers_eval.py) against the base pipeline in plain diffusers.

    python benchmarks/pipelines_rl.py [--arms sd3-grpo sd3-nft sd15-ddpo sd15-dpok] [--seeds 0 1]
        [--out runs/pipelines-rl] [--doc docs/results/pipelines-rl.md] [--no-plain]

Arms: the recipes geneval-s-<arm>; ARM:S,S runs that arm on those seeds instead of --seeds (sd3-nft:0). A finished run (OUT/<arm>-s<seed> with its report.html) is read back, not
trained again, so arms can be run one command at a time (or two at once with VISALIGN_THREADS=1, one core each)
and the doc written at the end from all of them. Training wall time excludes evaluation; it depends on what else
runs on the machine (the recipes' budget is 30 training minutes), so the doc says how the runs were made.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from visalign.cli import main as cli
from visalign.recipe import load_train_recipe
from visalign.testbed.evaluate import evaluate
from visalign.models.registry import load_generator
from visalign.checkpoint import atomic_write_text
from visalign.metrics import read_metrics
from visalign.trainer.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plain_diffusers_eval as plain  # noqa: E402

ARMS = ("sd3-grpo", "sd3-nft", "sd15-ddpo", "sd15-dpok")
BUNDLED = {"sd3": "visalign/weights/shapes-sd3", "sd15": "visalign/weights/shapes-sd15"}


def train_or_read(arm: str, seed: int, out: Path) -> tuple[Path, list[dict]]:
    """The run OUT/<arm>-s<seed>: trained unless it finished before (report.html is written last)."""
    run = out / f"{arm}-s{seed}"
    if not (run / "report.html").is_file():
        shutil.rmtree(run, ignore_errors=True)
        recipe, resolved = load_train_recipe(f"geneval-s-{arm}", [f"train.seed={seed}"])
        Trainer(recipe, resolved, run, progress=False, log=lambda *a, **k: None).train()
    return run, [r for r in read_metrics(run) if "eval_overall" in r]


def exported(run: Path, fmt: str) -> Path:
    """`visalign export RUN --format fmt` into RUN/export-<fmt> (made once)."""
    dest = run / f"export-{fmt}"
    if not dest.is_dir() and cli(["export", str(run), "--format", fmt, "--out", str(dest)]) != 0:
        raise RuntimeError(f"visalign export {run} --format {fmt} failed; see its error line above")
    return dest


def plain_scores(pipeline: str, lora: Path | None, per_category: int) -> dict:
    """Held-out GenEval-S of the pipeline folder (+ the LoRA) sampled by plain diffusers."""
    its = plain.items(per_category, 0, "eval")
    pipe = plain.load(pipeline, str(lora) if lora else None)
    images = plain.generate(pipe, [p for _, p, _ in its], [s for _, _, s in its], plain.call_args(pipe, pipeline, None, None))
    return plain.score(images, its)


def judge(arm: str, seed: int, out: Path, with_plain: bool, base_plain: dict) -> dict:
    run, evals = train_or_read(arm, seed, out)
    train = json.loads((run / "recipe.json").read_text())["train"]  # as the run was made
    first, last = evals[0], evals[-1]
    best = max(evals, key=lambda r: r["eval_overall"])
    per = train["eval_per_category"]
    row = {"arm": arm, "seed": seed, "run": str(run), "minutes": last["wall_s"] / 60, "iterations": last["iteration"],
           "rollouts": last["iteration"] * train["batch_size"], "curve": evals, "per": per, "finetune": train["finetune"],
           "rules": (first["eval_overall"], last["eval_overall"]), "exact": (first["eval_exact"], last["eval_exact"]),
           "extra": (first["eval_extra"], last["eval_extra"]), "best": (best["iteration"], best["eval_overall"]),
           "warned": [r["iteration"] for r in evals if r.get("eval_hacking")]}
    cache = run / "pipelines_rl.json"  # the judgements below, made once per run
    done = json.loads(cache.read_text()) if cache.is_file() else {}
    if "train_split" not in done:
        merged = exported(run, "merged")
        ts = evaluate(load_generator(f"diffusers:{merged}"), per, train["eval_seed"], split="train")
        done["train_split"] = {k: ts[k] for k in ("overall", "exact", "extra", "categories")}
    if with_plain and train["finetune"] == "lora" and "plain" not in done:
        kind = arm.split("-")[0]
        if kind not in base_plain:
            base_plain[kind] = plain_scores(BUNDLED[kind], None, per)
        lora = plain_scores(BUNDLED[kind], exported(run, "diffusers-lora"), per)
        done["plain"] = (base_plain[kind]["geneval_rules"]["overall"], lora["geneval_rules"]["overall"],
                         base_plain[kind]["exact"]["overall"], lora["exact"]["overall"])
    atomic_write_text(cache, json.dumps(done))
    return {**row, **done}


def base_train_split(kind: str, per: int) -> dict:
    """The bundled base on the train prompts (its memorisation gap beside the runs')."""
    return evaluate(load_generator(f"builtin:shapes-{kind}"), per, 0, split="train")


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    return names[0] if names else platform.machine()


def doc(rows: list[dict], bases: dict, cmd: str, minutes: float) -> str:
    threads = torch.get_num_threads()
    lines = [f"# RL on the bundled diffusers pipelines ({time.strftime('%Y-%m-%d')})", "", f"`{cmd}`", "",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"this command ran with {threads} thread(s) and took {minutes:.1f} min (runs it read back count ~0; "
             "a run it trained ran with the same threads). "
             f"Held-out GenEval-S, {rows[0]['per']} prompts per category, evaluation seed 0; 'min' is training wall time "
             "(evaluation excluded). Train split: the final model on the train prompts with the same seeds.", "",
             "| run | min | iterations x batch | GenEval's rules | exact reading | extra objects | best (iteration) "
             "| train split: rules / exact | base train split | hacking warning at | plain diffusers + LoRA: rules / exact |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kind = r["arm"].split("-")[0]
        b = bases[kind]
        plain_cell = (f"{r['plain'][0]:.3f} -> {r['plain'][1]:.3f} ({r['plain'][1] - r['plain'][0]:+.3f}) / "
                      f"{r['plain'][2]:.3f} -> {r['plain'][3]:.3f}" if "plain" in r
                      else "not checked (--no-plain)" if r["finetune"] == "lora" else "full fine-tune: no LoRA")
        lines.append(
            f"| {r['arm']} seed {r['seed']} | {r['minutes']:.1f} | {r['iterations']} x {r['rollouts'] // max(r['iterations'], 1)} "
            f"| {r['rules'][0]:.3f} -> {r['rules'][1]:.3f} ({r['rules'][1] - r['rules'][0]:+.3f}) "
            f"| {r['exact'][0]:.3f} -> {r['exact'][1]:.3f} ({r['exact'][1] - r['exact'][0]:+.3f}) "
            f"| {r['extra'][0]:.2f} -> {r['extra'][1]:.2f} | {r['best'][1]:.3f} ({r['best'][0]}) "
            f"| {r['train_split']['overall']:.3f} / {r['train_split']['exact']:.3f} | {b['overall']:.3f} / {b['exact']:.3f} "
            f"| {', '.join(map(str, r['warned'])) or '-'} | {plain_cell} |")
    for arm in dict.fromkeys(r["arm"] for r in rows):
        lines += ["", f"## {arm}: held-out curve", "",
                  "| seed | iteration | training min | rules | exact | extra | " + " | ".join(
                      c[:6] for c in rows[0]["curve"][0]["eval_categories"]) + " |",
                  "|---|---|---|---|---|---|" + "---|" * len(rows[0]["curve"][0]["eval_categories"])]
        for r in (r for r in rows if r["arm"] == arm):
            for e in r["curve"]:
                cats = " | ".join(f"{v:.2f}" for v in e["eval_categories"].values())
                lines.append(f"| {r['seed']} | {e['iteration']} | {e['wall_s'] / 60:.1f} | {e['eval_overall']:.3f} "
                             f"| {e['eval_exact']:.3f} | {e['eval_extra']:.2f} | {cats} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arms", nargs="+", default=list(ARMS), help=f"of {', '.join(ARMS)}, each optionally ARM:SEED,SEED")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--out", default="runs/pipelines-rl")
    p.add_argument("--doc", default="docs/results/pipelines-rl.md")
    p.add_argument("--no-plain", action="store_true", help="skip the plain-diffusers check of the LoRA exports")
    a = p.parse_args(argv)
    if "VISALIGN_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["VISALIGN_THREADS"]))
    from diffusers.utils import logging as dlogging

    from transformers.utils import logging as tlogging

    dlogging.set_verbosity_error()  # load_lora_weights' "no LoRA keys for the text encoders" (there are none)
    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()
    start = time.time()
    rows, base_plain = [], {}
    for spec in a.arms:
        arm, _, seeds = spec.partition(":")
        if arm not in ARMS:
            p.error(f"arm '{arm}' is not one of {', '.join(ARMS)}")
        for seed in [int(s) for s in seeds.split(",")] if seeds else a.seeds:
            rows.append(judge(arm, seed, Path(a.out), not a.no_plain, base_plain))
    bases = {r["arm"].split("-")[0]: r["per"] for r in rows}
    bases = {kind: base_train_split(kind, per) for kind, per in bases.items()}
    seeds = "" if all(":" in arm for arm in a.arms) else f" --seeds {' '.join(map(str, a.seeds))}"
    cmd = (f"python benchmarks/pipelines_rl.py --arms {' '.join(a.arms)}{seeds}"
           + (" --no-plain" if a.no_plain else ""))
    text = doc(rows, bases, cmd, (time.time() - start) / 60)
    atomic_write_text(Path(a.doc), text)
    print(text)
    print(f"wrote {a.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
