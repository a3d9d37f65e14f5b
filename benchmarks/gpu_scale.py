"""Full-size GPU benchmark: one RL iteration of visalign's trainer on the published architectures of the
SD3.5-Medium transformer, the FLUX.1-dev transformer and the SD1.5 UNet at 512x512, built from their configs with
random weights (nothing is downloaded: an architecture is its config, and configs are facts), with full-size VAEs
and small random text encoders whose output widths match what each backbone expects (the text encoders are frozen
in these recipes, so their size does not change what is measured on the backbone).

    python benchmarks/gpu_scale.py [--models sd35-medium flux-dev sd15] [--doc docs/results/gpu-scale.md]   # on a GPU
    python benchmarks/gpu_scale.py --tiny                     # the same code path at tiny size, on CPU (a test)

Per model, a Flow-GRPO LoRA iteration (DDPO for SD1.5), the arm a user runs first, then the same with the
backbone's gradient checkpointing, and full fine-tuning with and without it where its memory fits: seconds per
iteration by stage (rollout, reward, update), peak GPU memory and images per second. The iteration runs through
the `diffusers:` adapter and visalign's Trainer (the recipe's algorithm, sampler and update loop), under bf16
autocast (train.mixed_precision), on prompts of the `animals` set scored by `compressibility` (a reward with no
model, so the reward column is the JPEG encoder's time). Each arm runs one warm-up iteration, then the measured one.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from visalign.config import TrainRecipe, build
from visalign.models import tiny_diffusers as tiny
from visalign.models.diffusers_adapter import adapter_for
from visalign.models.registry import MODELS
from visalign.checkpoint import atomic_write_text
from visalign.trainer.trainer import Trainer

# The backbones' published configs (diffusers config.json of each model's transformer / unet folder).
SD35_MEDIUM = dict(  # stabilityai/stable-diffusion-3.5-medium, transformer/config.json (2.5B parameters)
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)
FLUX_DEV = dict(  # black-forest-labs/FLUX.1-dev, transformer/config.json (11.9B parameters)
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)
SD15_UNET = dict(  # stable-diffusion-v1-5, unet/config.json (0.86B parameters)
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
VAE_BLOCKS = dict(  # the SD / SD3 / FLUX autoencoders share this layout (8x downsampling)
    in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
)
VAES = {  # latent channels and the latent normalisation of each model's VAE config
    "sd3": dict(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                use_post_quant_conv=False),
    "flux": dict(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                 use_post_quant_conv=False),
    "sd": dict(latent_channels=4, scaling_factor=0.18215),
}
MODELS_BENCH = ("sd35-medium", "flux-dev", "sd15")
RESOLUTION = 512


# ------------------------------------------------------------------------------------------------ pipelines


def _clip(cls, hidden: int, projection: int, vocab: int):
    """A 1-layer random CLIP text encoder of the given width (the real ones are frozen; only widths matter)."""
    from transformers import CLIPTextConfig

    cfg = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden, intermediate_size=64,
                         num_attention_heads=4, num_hidden_layers=1, vocab_size=vocab, projection_dim=projection,
                         max_position_embeddings=tiny.CLIP_MAX_LENGTH)
    return cls(cfg).eval()


def _vae(kind: str):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_BLOCKS, **VAES[kind], sample_size=RESOLUTION)


def full_size_pipeline(model: str):
    """The named model's pipeline: full-size backbone and VAE, small random text encoders of the right widths."""
    from diffusers import (DDIMScheduler, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel,
                           SD3Transformer2DModel, StableDiffusion3Pipeline, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tok, tok2 = tiny.clip_tokenizer(), tiny.clip_tokenizer()
    if model == "sd35-medium":  # CLIP-L and CLIP-G projections (768 + 1280) make the 2048 pooled input; no T5
        return StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(**SD35_MEDIUM), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=_vae("sd3"), tokenizer=tok, tokenizer_2=tok2, text_encoder_3=None, tokenizer_3=None,
            text_encoder=_clip(CLIPTextModelWithProjection, 64, 768, len(tok)),
            text_encoder_2=_clip(CLIPTextModelWithProjection, 64, 1280, len(tok2)))
    if model == "flux-dev":  # CLIP-L's pooled 768; a 1-layer T5 of FLUX's 4096 width
        from transformers import T5Config, T5EncoderModel

        t5 = T5EncoderModel(T5Config(vocab_size=128, d_model=4096, d_ff=64, d_kv=8, num_layers=1, num_heads=4,
                                     decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)).eval()
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                                    max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
        return FluxPipeline(transformer=FluxTransformer2DModel(**FLUX_DEV), scheduler=scheduler, vae=_vae("flux"),
                            text_encoder=_clip(CLIPTextModel, 768, 768, len(tok)), tokenizer=tok,
                            text_encoder_2=t5, tokenizer_2=tiny.t5_tokenizer())
    if model == "sd15":
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        return StableDiffusionPipeline(
            unet=UNet2DConditionModel(**SD15_UNET), scheduler=scheduler, vae=_vae("sd"), tokenizer=tok,
            text_encoder=_clip(CLIPTextModel, 768, 768, len(tok)), safety_checker=None, feature_extractor=None,
            image_encoder=None, requires_safety_checker=False)
    raise ValueError(f"unknown model '{model}'; accepted: {', '.join(MODELS_BENCH)}")


TINY_KIND = {"sd35-medium": "sd3", "flux-dev": "flux", "sd15": "sd15"}


def build_adapter(model: str, tiny_size: bool, lora: bool, device: torch.device):
    """The model's adapter, built on `device`. LoRA arms keep the frozen backbone in bf16 (the LoRA weights stay
    fp32, lora.py); full fine-tuning keeps fp32 master weights and runs forwards under bf16 autocast."""
    dtype = torch.bfloat16 if lora else torch.float32
    if tiny_size:
        pipe = tiny.build_tiny_pipeline(TINY_KIND[model])
        return adapter_for(pipe.to(device), dtype=dtype, resolution=tiny.RESOLUTION)
    with torch.device(device):  # initialise on the GPU: a 12B model's random init on CPU takes minutes
        pipe = full_size_pipeline(model)
    return adapter_for(pipe, dtype=dtype, resolution=RESOLUTION)


# ------------------------------------------------------------------------------------------------ arms

# The Trainer loads its model by spec; this one hands it the adapter the arm built in memory (a full-size model
# would take minutes to save and reload).
SPEC = "gpu-scale:current"
CURRENT: dict = {"adapter": None}
MODELS.register(SPEC, "the adapter benchmarks/gpu_scale.py built for its current arm")(lambda: CURRENT["adapter"])


def recipe(model: str, spec: str, finetune: str, checkpointing: bool, tiny_size: bool) -> dict:
    """The arm's train recipe: Flow-GRPO as published (LoRA r32, clip 1e-4, noise 0.7, KL 0.04) for the
    transformers; DDPO-IS (DDIM eta 1, clip 1e-4) for SD1.5, with the same LoRA rank so the arms compare."""
    flow = model != "sd15"
    algo = ("grpo", {"clip_range": 1e-4, "global_std": True, "kl_beta": 0.04}) if flow else \
        ("ddpo", {"estimator": "ppo", "clip_range": 1e-4})
    sampling = {"kind": "flow", "steps": 10, "guidance_scale": 1.0 if model == "flux-dev" else 4.5,
                "noise_level": 0.7} if flow else {"kind": "ddim", "eta": 1.0, "steps": 10, "guidance_scale": 7.5}
    batch = 4 if tiny_size else 8
    return {
        "name": f"gpu-scale-{model}-{finetune}", "model": spec, "prompts": "animals", "reward": "compressibility", "algorithm": algo[0],
        "algorithm_options": algo[1], "sampling": sampling,
        "train": {"iterations": 2, "batch_size": batch, "group_size": batch // 2, "minibatches": 2,
                  "micro_batch": 2, "step_chunk": 1, "lr": 3e-4, "finetune": finetune, "lora_rank": 32,
                  "lora_alpha": 64.0, "lora_targets": ["to_q", "to_k", "to_v", "to_out.0"],
                  "gradient_checkpointing": checkpointing, "mixed_precision": "bf16", "eval_every": 1000,
                  "checkpoint_every": 1000, "eval_per_category": 1, "diagnose_every": 0, "seed": 0},
    }


def fits_full(params: int, device: torch.device) -> str | None:
    """Why full fine-tuning cannot fit, or None: fp32 weights, gradients and AdamW's two moments take 16 bytes a
    parameter, plus 4 for the frozen fp32 copy KL's reference needs."""
    if device.type != "cuda":
        return None
    need = params * 20
    have = torch.cuda.get_device_properties(device).total_memory
    return None if need < 0.9 * have else f"needs {need / 2**30:.0f} GiB for weights, gradients, AdamW and the reference"


def run_arm(model: str, finetune: str, checkpointing: bool, tiny_size: bool, device: torch.device) -> dict:
    row = {"model": model, "finetune": finetune, "checkpointing": "on" if checkpointing else "off"}
    start = time.perf_counter()
    adapter = build_adapter(model, tiny_size, finetune == "lora", device)
    row["build_s"] = time.perf_counter() - start
    params = sum(p.numel() for p in adapter.module.parameters())
    row["params"] = params
    why = fits_full(params, device) if finetune == "full" else None
    if why:
        return {**row, "skipped": why}
    CURRENT["adapter"] = adapter
    data = recipe(model, SPEC, finetune, checkpointing, tiny_size)
    run = Path(tempfile.mkdtemp(prefix="gpu-scale-"))
    trainer = None
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trainer = Trainer(build(TrainRecipe, data), data, run, progress=False, log=lambda *a, **k: None)
        trainer.train_iteration(1)  # warm-up: allocator, kernels, AdamW state
        trainer.sw.pop()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        trainer.train_iteration(2)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        total = time.perf_counter() - start
        stages = trainer.sw.pop()
        row.update({f"{k}_s": stages.get(k, 0.0) for k in ("rollout", "reward", "update")})
        row.update(iteration_s=total, images_per_s=data["train"]["batch_size"] / total)
        if device.type == "cuda":
            row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    except torch.OutOfMemoryError as e:
        row["skipped"] = f"out of memory ({str(e).splitlines()[0][:60]})"
    finally:
        trainer = adapter = CURRENT["adapter"] = None  # noqa: F841 - free the GPU before the next arm
        shutil.rmtree(run, ignore_errors=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def arms(models: list[str]) -> list[tuple[str, str, bool]]:
    return [(m, ft, ck) for m in models for ft in ("lora", "full") for ck in (False, True)]


# ------------------------------------------------------------------------------------------------ table


def format_table(rows: list[dict]) -> str:
    """Markdown table; the ratio column compares each arm's iteration time with its model's LoRA arm without
    checkpointing, measured in the same process."""
    head = ("| model | parameters | fine-tune | grad. checkpointing | rollout s | reward s | update s | iteration s | "
            "x LoRA | images / s | peak GiB |")
    lines = [head, "|" + "---|" * 11]
    base = {r["model"]: r["iteration_s"] for r in rows
            if r["finetune"] == "lora" and r["checkpointing"] == "off" and "iteration_s" in r}
    for r in rows:
        size = f"{r['params'] / 1e9:.2f}B" if r["params"] >= 1e8 else f"{r['params'] / 1e6:.2f}M"
        lead = f"| {r['model']} | {size} | {r['finetune']} | {r['checkpointing']} |"
        if "skipped" in r:
            lines.append(lead + f" {r['skipped']} |" + " |" * 6)
            continue
        ratio = f"{r['iteration_s'] / base[r['model']]:.2f}" if r["model"] in base else "-"
        peak = f"{r['peak_gib']:.1f}" if "peak_gib" in r else "-"
        lines.append(lead + f" {r['rollout_s']:.2f} | {r['reward_s']:.2f} | {r['update_s']:.2f} | "
                            f"{r['iteration_s']:.2f} | {ratio} | {r['images_per_s']:.2f} | {peak} |")
    return "\n".join(lines)


def machine(device: torch.device) -> str:
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "CPU")
    return f"{what}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS_BENCH), choices=MODELS_BENCH)
    p.add_argument("--tiny", action="store_true", help="tiny configs on CPU: the code path, not a measurement")
    p.add_argument("--lora-only", action="store_true", help="only the LoRA arms (a quick look)")
    p.add_argument("--doc", default=None, help="also write the table to this markdown file")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type == "cpu" and not args.tiny:
        print("no GPU: run with --tiny for the code path on CPU; the full-size arms need a GPU", file=sys.stderr)
        return 2
    rows = []
    for model, finetune, checkpointing in arms(args.models):
        if args.lora_only and finetune != "lora":
            continue
        rows.append(run_arm(model, finetune, checkpointing, args.tiny, device))
        print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    table = format_table(rows)
    size = "tiny configs (32x32), the code path only" if args.tiny else f"{RESOLUTION}x{RESOLUTION}, published configs"
    print(f"\n{machine(device)}; {size}\n\n{table}")
    if args.doc:
        text = (f"# Full-size RL iterations on a GPU\n\nMeasured {time.strftime('%Y-%m-%d')} on {machine(device)}, "
                f"{size}.\n\n```bash\npython benchmarks/gpu_scale.py {' '.join(argv or sys.argv[1:])}\n```\n\n"
                f"{table}\n")
        atomic_write_text(Path(args.doc), text)
        print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
