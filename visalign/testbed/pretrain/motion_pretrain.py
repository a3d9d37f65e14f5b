"""Pretraining of the bundled text-to-video pipeline (models/motion_pipelines.py) on fresh train-split clips of
GenEval-S Motion (testbed/motion), in the loop the other pretraining kinds use (token_pretrain._loop: warmup
then cosine, a wall-time budget, checkpoints, fp16 weights):

  motion_vae_pretrain  AutoencoderKLWan on reconstruction (MSE) + kl_weight x KL per latent element, the loss
                       vae_pretrain trains the image VAE with (pipeline_pretrain.vae_loss), on the decoder's
                       output before the clamp to [-1, 1] that decode() applies. At each save the
                       per-channel mean and std of the latents over a fixed batch of clips become the config's
                       latents_mean and latents_std (Wan's normalisation), so the transformer sees latents of
                       unit variance. It ends with the round trip of held-out clips through the autoencoder:
                       their MSE, and the Motion verifier's reading of the oracle's clips encoded and decoded.
  motion_wan_pretrain  a WanPipeline around the frozen VAE: rectified flow (x_s = (1 - s) x0 + s eps, the
                       transformer predicts eps - x0 at timestep 1000 s, the scheduler's scale) with
                       logit-normal s, the UMT5 text encoder trained with it (text_encoders: train) or left as
                       initialised (frozen); prompt dropout (train.cfg_dropout) teaches the unconditional
                       prediction classifier-free guidance needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from visalign.checkpoint import atomic_write_text
from visalign.config import ConfigError, NonNegativeFloat
from visalign.images import images_to_tensor

from ..models import motion_pipelines as mp
from ..motion import grammar
from ..motion.vocab import CATEGORIES, FRAMES, RESOLUTION
from .pipeline_pretrain import Trained, vae_loss
from .pretrain import sample_t
from .token_pretrain import TokenPretrainConfig, _loop

KINDS = ("motion_vae_pretrain", "motion_wan_pretrain")
STATS_BATCH = 256  # clips the latent statistics are measured on (fixed seed)
ROUND_TRIP_CLIPS = 64  # held-out clips the round-trip MSE is measured on
ROUND_TRIP_PER_CATEGORY = 20  # oracle clips per category the verifier reads after the round trip


@dataclass(frozen=True)
class MotionPretrainRecipe:
    name: str
    description: str = ""
    vae: str = "builtin:motion-vae"  # wan: the frozen VAE (builtin:motion-vae, a folder motion_vae_pretrain wrote, or a
    # WanPipeline folder: its vae)
    init: str = ""  # wan: go on training this WanPipeline folder or builtin:motion-wan (its own VAE and config; model:
    # is ignored)
    model: dict = field(default_factory=dict)  # WanVAEConfig or WanConfig fields
    kl_weight: NonNegativeFloat = 1e-4  # vae: KL per latent element against MSE per pixel
    timestep_sampling: str = "logit_normal"  # wan: logit_normal (SD3, Wan) | uniform
    text_encoders: str = "train"  # wan: train (with the transformer) | frozen (as initialised)
    train: TokenPretrainConfig = field(default_factory=TokenPretrainConfig)

    def __post_init__(self):
        if self.timestep_sampling not in ("logit_normal", "uniform"):
            raise ConfigError(f"timestep_sampling '{self.timestep_sampling}' is not one of logit_normal, uniform")
        if self.text_encoders not in ("train", "frozen"):
            raise ConfigError(f"text_encoders '{self.text_encoders}' is not one of train, frozen")


class MotionStream:
    """Random prompts of a split (uniform over the six categories, then over the category's specs) and a fresh
    clip of each: batch(n) -> (prompts, uint8 [n, F, H, W, 3])."""

    def __init__(self, seed, split: str = "train"):
        self.rng = np.random.default_rng(seed)
        self.specs = {c: grammar.split_specs(c, split) for c in CATEGORIES}

    def batch(self, n: int) -> tuple[list[str], np.ndarray]:
        from ..motion.render import render_clip

        prompts, clips = [], []
        for _ in range(n):
            specs = self.specs[CATEGORIES[self.rng.integers(len(CATEGORIES))]]
            spec = specs[self.rng.integers(len(specs))]
            prompts.append(spec.prompt)
            clips.append(render_clip(spec, self.rng, RESOLUTION, FRAMES))
        return prompts, np.stack(clips)


def clips_to_tensor(clips: np.ndarray) -> torch.Tensor:
    """uint8 [B, F, H, W, 3] -> float [B, 3, F, H, W] in [-1, 1], the layout diffusers' video VAEs take."""
    return images_to_tensor(clips).permute(0, 2, 1, 3, 4)


def decode_unclamped(vae, z: torch.Tensor) -> torch.Tensor:
    """AutoencoderKLWan's decode(z).sample before its final clamp to [-1, 1], [B, 3, F, H, W]: the clamp passes
    no gradient where it saturates, so a decoder that has learned the black background (below -1) would clamp
    the objects away with it and never learn them. The decoder's outputs (one call per latent frame) are
    collected by a hook and put together as decode does."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    chunks = []
    handle = vae.decoder.register_forward_hook(lambda module, args, out: chunks.append(out))
    try:
        vae.decode(z)
    finally:
        handle.remove()
    out = torch.cat(chunks, 2)
    return unpatchify(out, vae.config.patch_size) if vae.config.patch_size else out


def _latent_stats(vae) -> tuple[torch.Tensor, torch.Tensor]:
    """The config's per-channel latents_mean and latents_std as [1, C, 1, 1, 1] tensors."""
    c = vae.config
    shape = (1, c.z_dim, 1, 1, 1)
    return torch.tensor(c.latents_mean).view(shape), torch.tensor(c.latents_std).view(shape)


def encode_clips(vae, clips: np.ndarray) -> torch.Tensor:
    """uint8 clips [B, F, H, W, 3] -> the latents the transformer learns, [B, C, f, h, w]: the posterior mean,
    normalised as WanPipeline un-normalises before decoding ((z - latents_mean) / latents_std)."""
    dev = next(vae.parameters()).device
    z = vae.encode(clips_to_tensor(clips).to(dev, vae.dtype)).latent_dist.mean.float()
    mean, std = _latent_stats(vae)
    return (z - mean.to(z)) / std.to(z)


@torch.no_grad()
def set_latent_stats(vae, seed: int) -> tuple[list[float], list[float]]:
    """latents_mean and latents_std = the per-channel mean and std of the posterior means of STATS_BATCH fixed
    train clips."""
    _, clips = MotionStream([seed, 1]).batch(STATS_BATCH)
    dev = next(vae.parameters()).device
    zs = [vae.encode(clips_to_tensor(clips[i : i + 32]).to(dev)).latent_dist.mean for i in range(0, len(clips), 32)]
    z = torch.cat(zs).float().transpose(0, 1).flatten(1)  # [C, B * f * h * w]
    mean, std = [round(float(v), 5) for v in z.mean(1)], [round(float(v), 5) for v in z.std(1)]
    vae.register_to_config(latents_mean=mean, latents_std=std)
    return mean, std


@torch.no_grad()
def reconstruct(vae, clips: np.ndarray) -> np.ndarray:
    """uint8 clips -> encoded to the posterior mean, decoded -> uint8 clips."""
    from visalign.images import tensor_to_images

    dev = next(vae.parameters()).device
    x = vae.decode(vae.encode(clips_to_tensor(clips).to(dev)).latent_dist.mean).sample  # [B, 3, F, H, W]
    return tensor_to_images(x.permute(0, 2, 1, 3, 4).float().cpu())


def round_trip(vae, per_category: int | None = None, seed: int = 0) -> dict:
    """Held-out clips through the autoencoder: round_trip_mse, the MSE (in [-1, 1] units) of ROUND_TRIP_CLIPS
    eval-split clips; and the Motion verifier's reading of per_category oracle clips of each category's eval
    prompts (drawn with replacement where a category has fewer), encoded and decoded: round_trip (the lenient
    rules), round_trip_exact (the exact reading), round_trip_extra (objects nobody asked for, per clip)."""
    from ..motion.render import render_clip
    from ..motion.verify import verify_clip

    per_category = ROUND_TRIP_PER_CATEGORY if per_category is None else per_category
    was = vae.training
    vae.eval()
    _, clips = MotionStream([seed, 2], "eval").batch(ROUND_TRIP_CLIPS)
    mse = float(((clips_to_tensor(reconstruct(vae, clips)) - clips_to_tensor(clips)) ** 2).mean())
    rng = np.random.default_rng([seed, 3])
    verdicts = []
    for c in CATEGORIES:
        specs = grammar.split_specs(c, "eval")
        picked = [specs[i] for i in rng.choice(len(specs), per_category, replace=len(specs) < per_category)]
        clips = np.stack([render_clip(s, rng, RESOLUTION, FRAMES) for s in picked])
        recon = np.concatenate([reconstruct(vae, clips[i : i + 32]) for i in range(0, len(clips), 32)])
        verdicts += [verify_clip(clip, s) for clip, s in zip(recon, picked)]
    vae.train(was)
    n = len(verdicts)
    return {"round_trip_mse": round(mse, 5), "round_trip": round(sum(v.correct for v in verdicts) / n, 4),
            "round_trip_exact": round(sum(v.exact for v in verdicts) / n, 4),
            "round_trip_extra": round(sum(v.extra for v in verdicts) / n, 4)}


def motion_vae_pretrain(cfg: mp.WanVAEConfig, recipe: MotionPretrainRecipe, out: str | Path, log=print):
    vae = mp.build_vae(cfg)
    t = recipe.train

    def save(path: Path, dtype) -> None:
        set_latent_stats(vae, t.seed)
        mp.save_vae(vae, path, dtype)

    def loss_fn(prompts, clips):
        return vae_loss(vae, clips_to_tensor(clips).to(t.device), recipe.kl_weight,
                        decode=lambda z: decode_unclamped(vae, z))

    _loop(Trained({"vae": vae}, save), t, Path(out), loss_fn, log, "AutoencoderKLWan", stream=MotionStream)
    res = round_trip(vae)
    log(f"held-out clips through the autoencoder: MSE {res['round_trip_mse']:.5f} (in [-1, 1] units); the oracle's "
        f"eval clips: GenEval-S Motion {res['round_trip']:.3f}, exact reading {res['round_trip_exact']:.3f}, extra "
        f"objects {res['round_trip_extra']:.2f} per clip ({ROUND_TRIP_PER_CATEGORY} per category)")
    atomic_write_text(Path(out) / "round_trip.json", json.dumps(res, indent=2))
    return vae.eval()


# -------------------------------------------------------------------------------------------------- Wan


def _folder(spec: str) -> Path:
    from ..models.registry import WEIGHTS_DIR

    return WEIGHTS_DIR / spec.removeprefix("builtin:") if spec.startswith("builtin:") else Path(spec)


def load_vae(spec: str):
    """builtin:motion-vae, a folder motion_vae_pretrain wrote, or a WanPipeline folder (its vae) ->
    an AutoencoderKLWan (fp32, frozen)."""
    from diffusers import AutoencoderKLWan

    path = _folder(spec)
    if (path / "model_index.json").is_file():
        path = path / "vae"
    cfg = path / "config.json"
    if not cfg.is_file() or json.loads(cfg.read_text()).get("_class_name") != "AutoencoderKLWan":
        raise ConfigError(f"vae '{spec}': {path} holds no AutoencoderKLWan; accepted: builtin:motion-vae, a folder "
                          f"`visalign pretrain motion-vae-pretrain --out DIR` wrote, or a WanPipeline folder")
    with mp.quiet():
        return AutoencoderKLWan.from_pretrained(path, dtype=torch.float32).eval().requires_grad_(False)


def flow_loss(transformer, embeds: torch.Tensor, x0: torch.Tensor, u: torch.Tensor, noise: torch.Tensor,
              timescale: float = 1000.0) -> torch.Tensor:
    """x0, noise [B, C, f, h, w] latents; u [B] in (0, 1), 1 = noise: x_u = (1 - u) x0 + u noise, the transformer
    at timestep timescale x u predicts noise - x0 (what FlowMatchEulerDiscreteScheduler.step integrates)."""
    s = u.view(-1, 1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    pred = transformer(hidden_states=xt.to(transformer.dtype), timestep=u * timescale, encoder_hidden_states=embeds,
                       return_dict=False)[0]
    return F.mse_loss(pred.float(), noise - x0)


def motion_wan_pretrain(cfg: mp.WanConfig, recipe: MotionPretrainRecipe, out: str | Path, log=print):
    """Train a new WanPipeline around the recipe's frozen VAE, or go on training a saved one (recipe.init)."""
    t = recipe.train
    torch.manual_seed(t.seed)
    if recipe.init:  # go on training a saved pipeline: its sampling defaults come with it
        path = _folder(recipe.init)
        index = path / "model_index.json"
        cls = json.loads(index.read_text()).get("_class_name") if index.is_file() else None
        if cls != mp.PIPELINE:
            raise ConfigError(f"init '{recipe.init}' is {'a ' + cls if cls else 'no pipeline folder'}; "
                              f"motion_wan_pretrain goes on training a {mp.PIPELINE} folder")
        pipe, sampling = mp.load_pipeline(path)
        sampling = sampling or mp.sampling_defaults(cfg)
    else:
        with mp.quiet():
            pipe = mp.build_wan(cfg, load_vae(recipe.vae))
        sampling = mp.sampling_defaults(cfg)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(t.device)
    vae = pipe.vae.eval().requires_grad_(False)
    transformer, text = pipe.transformer.requires_grad_(True), pipe.text_encoder
    parts = {"transformer": transformer}
    text.requires_grad_(recipe.text_encoders == "train")
    if recipe.text_encoders == "train":
        parts["text_encoder"] = text
    msl = int(sampling.get("max_sequence_length", cfg.text.max_length))
    timescale = float(pipe.scheduler.config.num_train_timesteps)
    gen = torch.Generator().manual_seed(t.seed)

    def save(path: Path, dtype) -> None:
        mp.save_pipeline(pipe, path, sampling, dtype)

    def loss_fn(prompts, clips):
        drop = (torch.rand(len(prompts), generator=gen) < t.cfg_dropout).tolist()
        prompts = ["" if d else p for p, d in zip(prompts, drop)]
        with torch.no_grad():
            x0 = encode_clips(vae, clips)  # [B, C, f, h, w]
        u = sample_t(len(prompts), recipe.timestep_sampling, gen).clamp(1e-4, 1 - 1e-4).to(t.device)  # [B]
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        embeds = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=msl,
                                    device=torch.device(t.device))[0]  # with gradients: encode_prompt has none off
        return flow_loss(transformer, embeds, x0, u, noise, timescale), {}

    what = f"{mp.PIPELINE} (text encoder {'trained with it' if recipe.text_encoders == 'train' else 'frozen'})"
    _loop(Trained(parts, save), t, Path(out), loss_fn, log, what, stream=MotionStream)
    return pipe


def run_recipe(data: dict, out: str | Path, log=print):
    """`visalign pretrain` of a recipe dict of kind motion_vae_pretrain or motion_wan_pretrain."""
    from visalign.config import build

    kind = data.pop("kind")
    recipe = build(MotionPretrainRecipe, data)
    cls = {"motion_vae_pretrain": mp.WanVAEConfig, "motion_wan_pretrain": mp.WanConfig}[kind]
    cfg = build(cls, recipe.model, "model")  # typed as the recipe's own fields (model.text a UMT5Config)
    if kind == "motion_vae_pretrain":
        return motion_vae_pretrain(cfg, recipe, out, log)
    return motion_wan_pretrain(cfg, recipe, out, log)
