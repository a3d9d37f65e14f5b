"""trl 0.23.1 side of benchmarks/vs_trl_ddpo.py. Runs inside .bench/trl-venv (trl, not visalign, is installed
there), one process per run so its peak RSS is its own. Reads its settings as JSON from argv[1] and writes
its result as JSON to argv[2]: seconds of each `DDPOTrainer.step(epoch, global_step)` (one DDPO epoch:
sampling, reward, advantages, all optimizer steps) and this process's peak RSS.

Not a visalign module: it imports only trl/diffusers/torch/PIL. See vs_trl_ddpo.py for what is matched."""

from __future__ import annotations

import io
import json
import os
import random
import resource
import sys
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the pipeline is a local directory; nothing may be downloaded
os.environ.setdefault("WANDB_MODE", "disabled")


def main() -> int:
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    out_path = sys.argv[2]

    import torch

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    warnings.filterwarnings("ignore")

    from accelerate import PartialState
    from diffusers.utils import logging as dlogging
    from peft import LoraConfig
    from PIL import Image
    from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    dlogging.set_verbosity_error()
    # DDPOTrainer on CPU needs an initialised accelerate state (docs/architecture.md#facts-the-testbed-relies-on)
    PartialState()

    rank, alpha = cfg["lora_rank"], cfg["lora_alpha"]

    class Pipeline(DefaultDDPOStableDiffusionPipeline):
        """trl's default pipeline with the LoRA rank/alpha of the benchmark (trl hardcodes r=4, alpha=4 on
        to_q/to_k/to_v/to_out.0; everything else is trl's) and no progress bars (visalign shows none)."""

        def get_trainable_layers(self):
            self.sd_pipeline.unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                                         target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
            return self.sd_pipeline.unet

        def set_progress_bar_config(self, *args, **kwargs):
            self.sd_pipeline.set_progress_bar_config(disable=True)

    pipe = Pipeline(cfg["pipeline_dir"], use_lora=True)

    prompts = cfg["prompts"]
    rng = random.Random(cfg["seed"])

    def prompt_fn():
        return rng.choice(prompts), {}

    def reward_fn(images, prompts, metadata):
        """-JPEG size in kB at quality 95 (visalign's `compressibility`). images [B, 3, H, W] in [0, 1]."""
        arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        sizes = []
        for img in arr:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=95)
            sizes.append(-buf.tell() / 1000)
        return torch.tensor(sizes, dtype=torch.float32), {}

    n, m, s = cfg["samples_per_epoch"], cfg["minibatches"], cfg["steps"]
    logdir = tempfile.mkdtemp(prefix="trl-ddpo-")
    config = DDPOConfig(
        num_epochs=cfg["epochs"],
        seed=cfg["seed"],
        log_with=None,
        mixed_precision="no",
        save_freq=10**9,  # never checkpoint inside the timed epochs
        logdir=logdir,
        project_kwargs={"project_dir": logdir},
        sample_num_steps=s,
        sample_eta=cfg["eta"],
        sample_guidance_scale=cfg["guidance_scale"],
        sample_batch_size=n,  # all N samples of an epoch in one batch, as visalign samples them
        sample_num_batches_per_epoch=1,
        train_batch_size=n // m,  # M optimizer steps of N/M samples each, every timestep in each
        train_gradient_accumulation_steps=1,
        train_num_inner_epochs=1,
        train_cfg=True,  # trl's default: the training forward is guided, like the sampling one
        train_timestep_fraction=1.0,
        train_learning_rate=cfg["lr"],
        train_clip_range=cfg["clip_range"],
        train_adv_clip_max=cfg["adv_clip"],
        train_max_grad_norm=cfg["grad_clip"],
        per_prompt_stat_tracking=True,
        per_prompt_stat_tracking_buffer_size=cfg["stat_buffer"],
        per_prompt_stat_tracking_min_count=cfg["stat_min_count"],
        async_reward_computation=False,
    )
    trainer = DDPOTrainer(config, reward_fn, prompt_fn, pipe)

    # per-stage wall time of each epoch: trl's own methods, wrapped with a timer (nothing else changes)
    stage_s: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                stage_s[name] = stage_s.get(name, 0.0) + time.perf_counter() - t
        return wrapper

    trainer._generate_samples = timed("sample", trainer._generate_samples)
    trainer.compute_rewards = timed("reward", trainer.compute_rewards)
    trainer._train_batched_samples = timed("train", trainer._train_batched_samples)

    epoch_s, epoch_stages = [], []
    global_step = 0
    for epoch in range(cfg["epochs"]):
        t0 = time.perf_counter()
        global_step = trainer.step(epoch, global_step)
        epoch_s.append(time.perf_counter() - t0)
        epoch_stages.append(dict(stage_s))
        stage_s.clear()
        print(f"trl epoch {epoch}: {epoch_s[-1]:.2f} s", flush=True)

    timed_epochs = epoch_stages[1:] or epoch_stages
    result = {
        "epoch_s": epoch_s,
        "optimizer_steps": global_step,
        "epoch_stages_s": epoch_stages,
        "stages_s": {k: sum(e[k] for e in timed_epochs) / len(timed_epochs) for k in epoch_stages[0]},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": {k: __import__(k).__version__ for k in ("trl", "torch", "diffusers", "transformers", "peft",
                                                            "accelerate")},
        "lora_params": sum(p.numel() for p in pipe.unet.parameters() if p.requires_grad),
        "unet_dtype": str(next(pipe.unet.parameters()).dtype),
        "torch_threads": torch.get_num_threads(),
    }
    with open(out_path, "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
