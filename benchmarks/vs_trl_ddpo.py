"""visalign's DDPO vs trl 0.23.1's DDPOTrainer on identical work: seconds per epoch, their ratio, peak memory.

    .venv/bin/python benchmarks/vs_trl_ddpo.py [--samples-per-epoch 32] [--steps 20] [--minibatches 2]
        [--lora-rank 4] [--epochs 4] [--rounds 2] [--threads 2] [--json out.json]

Both sides train the same tiny random-weight StableDiffusionPipeline (visalign.models.tiny_diffusers "sd15":
DDIMScheduler, 32x32 images, 16x16x4 latents), saved once to a local directory and loaded offline by each.
trl 0.23.1 (the last trl release with DDPOTrainer) is not a project dependency: on first run this script
makes its own virtualenv, .bench/trl-venv (git-ignored), with torch==2.13.0 (CPU) and trl==0.23.1 plus the
diffusers/transformers/peft/accelerate versions of the interpreter running this script, and runs
benchmarks/_trl_ddpo_worker.py there. Each side runs in a fresh subprocess (its peak RSS is its own, read
with os.wait4), on `--threads` torch threads (OMP_NUM_THREADS, VISALIGN_THREADS, torch.set_num_threads;
default 2, the machine's two cores: the sides never run at the same time).

What is matched, and how (read from trl 0.23.1's trainer/ddpo_trainer.py and models/modeling_sd_base.py):
  - Epoch = sample N images, score them, per-prompt advantages, then M optimizer steps. visalign: one
    `visalign train sd-ddpo-compressibility` iteration with train.batch_size=N, train.minibatches=M,
    train.epochs=1. trl: one `DDPOTrainer.step(epoch, global_step)` with sample_batch_size=N,
    sample_num_batches_per_epoch=1, train_batch_size=N/M, train_gradient_accumulation_steps=1,
    train_num_inner_epochs=1 (trl accumulates over every trained timestep, so N/M samples x S timesteps per
    optimizer step on both sides; `optimizer_steps` in the output checks M per epoch).
  - Batching (how the same work is cut into network calls, which each library chooses): visalign scores all
    N/M samples x S timesteps of a minibatch in one UNet forward (train.micro_batch=0, train.step_chunk=0;
    the recipe's values 8 / 1 are for a 512px UNet on a GPU); trl loops over the S timesteps, one forward
    of 2 N/M rows each.
  - Sampling: S DDIM steps, eta 1.0, classifier-free guidance w (the recipe's 5.0) with the empty prompt as
    the unconditional one, all N samples in one batch; both run the UNet once on the 2N concatenated batch
    per step. Same UNet work per step.
  - Training: every timestep of every sample (train_timestep_fraction=1.0, visalign's default
    timestep_fraction 1.0); the tiny pipeline's scheduler has set_alpha_to_one=False, so all S steps have
    a non-zero variance and both sides train all S. Both recompute the guided prediction with CFG in
    training (trl's train_cfg=True default), i.e. two UNet passes per (sample, timestep). One difference
    that is visalign's design, not the benchmark's: trl backpropagates through both halves of its 2N
    batch (conditional and unconditional), visalign runs the unconditional pass under no_grad and
    backpropagates through the conditional one only (the LoRA gradient of the unconditional branch is
    dropped). visalign's backward covers half the rows. The forward work differs in one place: in the
    first minibatch the weights are still the rollout's, so visalign takes the unconditional outputs the
    rollout computed (policies/denoising.py, UncondCache) where trl runs the UNet again for the same numbers.
  - Compilation: by default visalign runs with train.compile=true (torch.compile of the UNet in place;
    --no-compile runs it eager); trl 0.23.1's DDPOTrainer has no such option. The compilation falls in
    the first (warm-up) epoch, printed as "first epoch s" (inductor keeps compiled kernels in its on-disk
    cache, so a second run compiles faster).
  - Log-probs: the DDIM step Gaussian, mean over latent elements (trl) / visalign's ddim_step; PPO-clip loss
    with the recipe's clip range 1e-4, advantage clip 5, grad-norm clip 1.0, AdamW lr 3e-4.
  - LoRA: rank R, alpha (the recipe's 4.0) on to_q, to_k, to_v, to_out.0 of the UNet (trl's default
    pipeline hardcodes r=4/alpha=4 on exactly these; the worker subclasses it to take R and alpha). The
    UNet, VAE and text encoder stay in fp32 on both sides (trl: mixed_precision="no"; visalign: dtype
    float32), no autocast.
  - Reward: -(JPEG size in kB at quality 95), PIL, on uint8 images (visalign's `compressibility`; the
    worker reimplements it in ten lines). Prompts: "a <animal>" drawn uniformly from visalign's `animals`
    train split, per-prompt statistics with the recipe's buffer 16 / min count 16 on both sides.
  - No logging backends (trl log_with=None), no image hooks, no checkpoints inside the timed epochs
    (trl save_freq huge; visalign checkpoints only after the last iteration, outside wall_s). visalign's
    held-out evaluation (before the first and after the last iteration, 1 image) is outside wall_s too.
  - Timing: visalign's metrics.jsonl wall_s (training wall time, evaluation and checkpoints excluded) per
    iteration; trl's wall time around each step() call. Seconds per epoch = the mean over the epochs after
    the first (warm-up) one; with --rounds R each side runs R times, interleaved (v, t, t, v, ...), and
    reports its fastest round, since other load on a shared machine only ever adds time. Text encoding: trl runs the text encoder on every sampled batch; visalign
    caches encodings per prompt string (part of what is measured, as each library ships it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "_trl_ddpo_worker.py"
RECIPE = "sd-ddpo-compressibility"
TRL_VERSION = "0.23.1"
TORCH_PIN = "torch==2.13.0"  # the CPU build; an unpinned torch would pull several GB of CUDA wheels
SAME_AS_VISALIGN = ("diffusers", "transformers", "peft", "accelerate", "pillow")
TRL_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def log(msg: str) -> None:
    print(f"[vs_trl_ddpo] {msg}", file=sys.stderr, flush=True)


def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VISALIGN_THREADS"):
        env[k] = str(threads)
    env["HF_HUB_OFFLINE"] = "1"  # both sides load a local directory; nothing is downloaded
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def run_measured(cmd: list[str], env: dict, log_path: Path) -> tuple[int, float]:
    """Run cmd to completion with its output in log_path -> (exit code, the child's peak RSS in MB)."""
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024  # Linux: kB


def ensure_trl_venv(venv: Path) -> Path:
    """Create venv with torch==2.13.0, trl==0.23.1 and this interpreter's diffusers/transformers/peft/
    accelerate/pillow versions, unless it already has them (a stamp file records a finished install)."""
    py = venv / "bin" / "python"
    pins = [TORCH_PIN, f"trl=={TRL_VERSION}"] + [f"{p}=={metadata.version(p)}" for p in SAME_AS_VISALIGN]
    stamp = venv / ".installed"
    if py.exists() and stamp.exists() and stamp.read_text().split() == pins:
        return py
    log(f"installing {' '.join(pins)} into {venv} (once)")
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *pins], check=True)
    subprocess.run([str(py), "-c", "from trl import DDPOTrainer, DDPOConfig, DefaultDDPOStableDiffusionPipeline"],
                   check=True, env=thread_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stamp.write_text("\n".join(pins) + "\n")
    return py


def write_pipeline(path: Path, threads: int) -> None:
    """Write the tiny pipeline afresh every run (a few seconds), so it always follows tiny_diffusers.py."""
    shutil.rmtree(path, ignore_errors=True)
    log(f"writing the tiny sd15 pipeline to {path}")
    subprocess.run([sys.executable, "-m", "visalign.models.tiny_diffusers", "sd15", str(path)], check=True,
                   env=thread_env(threads), stdout=subprocess.DEVNULL)


def per_epoch(epoch_s: list[float]) -> float:
    timed = epoch_s[1:] if len(epoch_s) > 1 else epoch_s
    return sum(timed) / len(timed)


def run_visalign(args, pipe_dir: Path, run_dir: Path) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    e = args.epochs
    overrides = [
        f"model=diffusers:{pipe_dir}", f"sampling.steps={args.steps}", "sampling.eta=1.0",
        f"sampling.guidance_scale={args.guidance}", f"train.batch_size={args.samples_per_epoch}",
        f"train.minibatches={args.minibatches}", "train.epochs=1", f"train.lora_rank={args.lora_rank}",
        f"train.lora_alpha={args.lora_alpha}", f"train.iterations={e}", f"train.eval_every={e}",
        "train.eval_per_category=1", f"train.checkpoint_every={e}", f"eval.steps={args.steps}",
        "train.diagnose_every=0", f"train.seed={args.seed}", "train.micro_batch=0", "train.step_chunk=0",
        f"train.compile={str(args.compile).lower()}",
    ]
    cmd = [sys.executable, "-m", "visalign.cli", "train", RECIPE, *overrides, "--out", str(run_dir)]
    log("visalign: " + " ".join(cmd[2:]))
    rc, rss = run_measured(cmd, thread_env(args.threads), run_dir.parent / f"{run_dir.name}.log")
    if rc != 0:
        tail = (run_dir.parent / f"{run_dir.name}.log").read_text()[-3000:]
        raise SystemExit(f"visalign run failed (exit {rc}):\n{tail}")
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    recs = [r for r in recs if r["iteration"] >= 1]
    walls = [0.0] + [r["wall_s"] for r in recs]
    epoch_s = [b - a for a, b in itertools.pairwise(walls)]
    stages = {}
    for key in ("time_rollout_s", "time_reward_s", "time_advantages_s", "time_update_s", "time_model_s"):
        vals = [r.get(key, 0.0) for r in recs[1:]] or [recs[0].get(key, 0.0)]
        stages[key[5:-2]] = sum(vals) / len(vals)
    return {"epoch_s": epoch_s, "sec_per_epoch": per_epoch(epoch_s), "peak_rss_mb": rss, "stages_s": stages,
            "optimizer_steps": len(recs) * args.minibatches, "run_dir": str(run_dir)}


def run_trl(args, py: Path, pipe_dir: Path, recipe, prompts: list[str], work: Path) -> dict:
    algo = recipe.algorithm_options
    cfg = {
        "pipeline_dir": str(pipe_dir), "threads": args.threads, "seed": args.seed,
        "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha, "prompts": prompts,
        "samples_per_epoch": args.samples_per_epoch, "minibatches": args.minibatches, "steps": args.steps,
        "epochs": args.epochs, "eta": 1.0, "guidance_scale": args.guidance, "lr": recipe.train.lr,
        "clip_range": algo.get("clip_range", 1e-4), "adv_clip": algo.get("adv_clip", 5.0),
        "grad_clip": recipe.train.grad_clip, "stat_buffer": algo.get("stat_buffer", 16),
        "stat_min_count": algo.get("stat_min_count", 16),
    }
    cfg_path, out_path = work / "trl-config.json", work / "trl-result.json"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    out_path.unlink(missing_ok=True)
    cmd = [str(py), str(WORKER), str(cfg_path), str(out_path)]
    log("trl: " + " ".join(cmd))
    rc, rss = run_measured(cmd, thread_env(args.threads), work / "trl.log")
    if rc != 0 or not out_path.is_file():
        raise SystemExit(f"trl worker failed (exit {rc}):\n{(work / 'trl.log').read_text()[-3000:]}")
    res = json.loads(out_path.read_text())
    res["sec_per_epoch"] = per_epoch(res["epoch_s"])
    res["peak_rss_mb"] = rss
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples-per-epoch", type=int, default=32, help="N images sampled per epoch (default 32)")
    p.add_argument("--steps", type=int, default=20, help="S DDIM steps per sample, all trained (default 20)")
    p.add_argument("--minibatches", type=int, default=2, help="M optimizer steps per epoch (default 2)")
    p.add_argument("--lora-rank", type=int, default=4, help="LoRA rank R (default 4, trl's)")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: the recipe's, 4.0)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the recipe's, 5.0)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per side; the first is warm-up (default 4)")
    p.add_argument("--rounds", type=int, default=2,
                   help="runs per side, interleaved; each side reports its fastest round (default 2)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads per side (default 2: the 2 cores of the target machine; each side runs alone)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="visalign with train.compile (torch.compile of the UNet; default on, --no-compile: eager)")
    p.add_argument("--workdir", type=Path, default=ROOT / ".bench", help="venv, pipeline, runs (default .bench/)")
    p.add_argument("--json", type=Path, default=None, help="also write the table (and details) as JSON here")
    p.add_argument("--only", choices=("visalign", "trl"), default=None, help="run one side only")
    args = p.parse_args(argv)

    try:
        from visalign.recipe import load_train_recipe
        from visalign.prompts import load_prompt_set
    except ImportError:
        raise SystemExit("run this with the project's interpreter (visalign importable), e.g. .venv/bin/python "
                         "benchmarks/vs_trl_ddpo.py") from None

    recipe, _ = load_train_recipe(RECIPE)
    if args.guidance is None:
        args.guidance = float(recipe.sampling.get("guidance_scale", 5.0))
    if args.lora_alpha is None:
        args.lora_alpha = float(recipe.train.lora_alpha)
    if tuple(recipe.train.lora_targets) != TRL_LORA_TARGETS:
        raise SystemExit(f"recipe LoRA targets {recipe.train.lora_targets} differ from trl's {TRL_LORA_TARGETS}")
    if args.samples_per_epoch % args.minibatches or args.epochs < 1 or args.rounds < 1:
        raise SystemExit("--samples-per-epoch must be a multiple of --minibatches, --epochs and --rounds >= 1")
    prompt_set = load_prompt_set(recipe.prompts)
    prompts = [q for qs in prompt_set.train.values() for q in qs]

    t_start = time.perf_counter()
    work = args.workdir.resolve()
    (work / "runs").mkdir(parents=True, exist_ok=True)
    pipe_dir = work / "tiny-sd15"
    write_pipeline(pipe_dir, args.threads)
    sides = [s for s in ("visalign", "trl") if args.only in (None, s)]
    py = ensure_trl_venv(work / "trl-venv") if "trl" in sides else None
    rounds: dict[str, list[dict]] = {s: [] for s in sides}
    for k in range(args.rounds):
        for side in sides if k % 2 == 0 else sides[::-1]:  # alternate the order: drift hits both sides alike
            if side == "visalign":
                r = run_visalign(args, pipe_dir, work / "runs" / "vs-trl-visalign")
            else:
                r = run_trl(args, py, pipe_dir, recipe, prompts, work / "runs")
            rounds[side].append(r)
            log(f"round {k + 1} {side}: epochs (s) {[round(x, 2) for x in r['epoch_s']]}, "
                f"{r['sec_per_epoch']:.2f} s/epoch, peak RSS {r['peak_rss_mb']:.0f} MB")
    # a side's number: its least-disturbed round (the machine is shared; other load only ever adds time)
    results = {}
    for side, rs in rounds.items():
        best = dict(min(rs, key=lambda r: r["sec_per_epoch"]))
        best["rounds_sec_per_epoch"] = [r["sec_per_epoch"] for r in rs]
        best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rs)
        results[side] = best

    rows = []
    header = ("side", "sec/epoch", "first epoch s", "peak RSS MB", "samples/epoch", "steps", "LoRA rank")
    for side, r in results.items():
        rows.append((side, f"{r['sec_per_epoch']:.2f}", f"{r['epoch_s'][0]:.1f}", f"{r['peak_rss_mb']:.0f}",
                     str(args.samples_per_epoch),
                     str(args.steps), str(args.lora_rank)))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]

    def line(cells):
        return " | ".join(c.ljust(w) for c, w in zip(cells, widths))

    print(f"DDPO epoch: {args.samples_per_epoch} samples x {args.steps} DDIM steps (eta 1, CFG {args.guidance:g}), "
          f"{args.minibatches} optimizer steps over all timesteps, LoRA r{args.lora_rank} (alpha {args.lora_alpha:g}), "
          f"fp32, {args.threads} torch thread(s); mean of epochs 2..{args.epochs}, fastest of {args.rounds} "
          f"interleaved round(s) per side; visalign {'with' if args.compile else 'without'} train.compile (its first "
          f"epoch holds the compilation)")
    print(line(header))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
    out = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "table": [dict(zip(header, row)) for row in rows], "results": results}
    if "visalign" in results and "trl" in results:
        ratio = results["visalign"]["sec_per_epoch"] / results["trl"]["sec_per_epoch"]
        verdict = "yes" if ratio <= 0.5 else "no"
        print(f"ratio visalign/trl = {ratio:.2f}  (<= 0.5: {verdict})")
        v = results["visalign"]["stages_s"]
        print(f"visalign per epoch: rollout {v['rollout']:.2f} s, reward {v['reward']:.2f} s, update {v['update']:.2f} s "
              f"(UNet forward+backward inside them: {v['model']:.2f} s)")
        t = results["trl"].get("stages_s")
        if t:
            print(f"trl per epoch: sampling {t['sample']:.2f} s, reward {t['reward']:.2f} s, "
                  f"training {t['train']:.2f} s")
        out["ratio"] = ratio
        out["ratio_le_0.5"] = ratio <= 0.5
    out["total_s"] = time.perf_counter() - t_start
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    log(f"done in {out['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
