"""DDPO with the JPEG compressibility reward (DDPO's first experiment): it raises the reward on the bundled
diffusion model, and the `sd-ddpo-compressibility` recipe runs end to end on a tiny diffusers SD pipeline.

Why the reward rise is shown on builtin:shapes-ddpm and not on the tiny random SD pipeline: a random VAE
decoder ends in GroupNorm -> SiLU -> conv, so the decoded images' global statistics (brightness, JPEG size:
1.60 +- 0.01 kB over samples) hardly depend on the latents; measured, neither DDPO nor a LoRA scaled to 10x
moved them by more than 0.01 kB. A pretrained model, whose images follow the denoiser, is where it shows."""

import json

from safetensors.torch import load_file

from visalign.cli import main
from visalign.models.tiny_diffusers import save_tiny_pipeline


def _rewards(run):
    return [json.loads(line)["reward_mean"] for line in (run / "metrics.jsonl").read_text().splitlines()][1:]


def test_ddpo_raises_compressibility_on_the_bundled_diffusion_model(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "geneval-s-ddpo", "reward=compressibility", "train.batch_size=32", "train.group_size=4",
                 "sampling.steps=5", "train.iterations=10", "train.eval_every=10", "train.eval_per_category=1",
                 "train.checkpoint_every=10", "train.lr=3e-4", "train.diagnose_every=0",
                 "algorithm_options.stat_min_count=4", "--out", str(run)]) == 0
    r = _rewards(run)  # minus JPEG kB; about -1.19 at the start
    assert sum(r[-3:]) / 3 > sum(r[:2]) / 2 + 0.05, r


def test_sd_ddpo_compressibility_recipe_runs_on_a_tiny_sd_pipeline(tmp_path):
    save_tiny_pipeline("sd15", tmp_path / "sd")
    run = tmp_path / "run"
    assert main(["train", "sd-ddpo-compressibility", f"model=diffusers:{tmp_path / 'sd'}", "sampling.steps=3",
                 "eval.steps=3", "train.batch_size=8", "train.iterations=2", "train.eval_every=2",
                 "train.eval_per_category=2", "train.checkpoint_every=2", "train.micro_batch=2", "--out", str(run)]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["reward_mean"] < 0 for r in rows[1:]) and rows[0]["eval_categories"].keys() == {"animals"}
    lora = load_file(str(run / "checkpoints" / "iter-000002" / "weights.safetensors"))
    b = [v for k, v in lora.items() if "lora_B" in k]
    assert len(b) >= 4 and all(bool((v != 0).any()) for v in b)  # every LoRA B left its zero start
    assert (run / "report.html").exists()
