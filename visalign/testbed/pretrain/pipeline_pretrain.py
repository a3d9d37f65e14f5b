"""Pretraining of the bundled diffusers pipelines (models/shapes_pipelines.py) on fresh train renders of the
shapes world, in the loop the token models use (token_pretrain._loop: warmup then cosine, a wall-time budget,
checkpoints, fp16 weights):

  vae_pretrain   AutoencoderKL on reconstruction (MSE) + kl_weight x KL per latent element (Kingma & Welling,
                 2014; the latent-diffusion autoencoder of Rombach et al., 2022, without its perceptual and GAN
                 terms: flat-coloured shapes need neither). At each save the latents' mean and 1/std over a
                 fixed batch become the config's shift_factor and scaling_factor (SD3's way), so the denoisers
                 see latents of unit variance.
  sd3_pretrain   a StableDiffusion3Pipeline around the frozen VAE: rectified flow (x_s = (1 - s) x0 + s eps, the
                 transformer predicts eps - x0; Esser et al., 2024) with logit-normal s.
  sd15_pretrain  a StableDiffusionPipeline around the frozen VAE: the DDPM loss (Ho et al., 2020) on the
                 scheduler's cosine schedule, predicting eps or v (Salimans & Ho, 2022).

Prompt dropout (cfg_dropout) teaches the unconditional prediction classifier-free guidance needs. The text
encoders train with the denoiser (text_encoders: train) or stay as initialised (frozen).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from visalign.config import ConfigError, NonNegativeFloat
from visalign.images import images_to_tensor
from ..models import shapes_pipelines as sp
from visalign.checkpoint import atomic_write_text
from .pretrain import STREAMS, sample_t
from .token_pretrain import TokenPretrainConfig, _loop

KINDS = ("vae_pretrain", "sd3_pretrain", "sd15_pretrain")
STATS_BATCH = 256  # renders the latent statistics are measured on (fixed seed)


@dataclass(frozen=True)
class PipelinePretrainRecipe:
    name: str
    description: str = ""
    vae: str = "builtin:shapes-vae"  # sd3/sd15: the frozen VAE (builtin:shapes-vae or a folder vae_pretrain wrote)
    init: str = ""  # sd3/sd15: go on training this pipeline folder (its own VAE and config; model: is ignored)
    model: dict = field(default_factory=dict)  # VAEConfig, SD3Config or SD15Config fields
    kl_weight: NonNegativeFloat = 1e-4  # vae: KL per latent element against MSE per pixel
    timestep_sampling: str = "logit_normal"  # sd3/sd15: logit_normal (SD3) | uniform
    text_encoders: str = "train"  # sd3/sd15: train (with the denoiser) | frozen (as initialised)
    train: TokenPretrainConfig = field(default_factory=TokenPretrainConfig)

    def __post_init__(self):
        if self.timestep_sampling not in ("logit_normal", "uniform"):
            raise ConfigError(f"timestep_sampling '{self.timestep_sampling}' is not one of logit_normal, uniform")
        if self.text_encoders not in ("train", "frozen"):
            raise ConfigError(f"text_encoders '{self.text_encoders}' is not one of train, frozen")
        if self.kl_weight < 0:
            raise ConfigError(f"kl_weight must be >= 0, got {self.kl_weight}")


class Trained(nn.Module):
    """The parts a run trains, as one module for the loop; save_pretrained(out, dtype) writes what `save` does
    (the whole pipeline folder, or the VAE)."""

    def __init__(self, parts: dict[str, nn.Module], save):
        super().__init__()
        self.parts = nn.ModuleDict(parts)
        self._save = save

    def save_pretrained(self, out, dtype=None) -> None:
        was = self.training
        self.eval()
        self._save(Path(out), dtype)
        self.train(was)


# --------------------------------------------------------------------------------------------------- VAE


def vae_loss(vae, x: torch.Tensor, kl_weight: float, decode=None) -> tuple[torch.Tensor, dict]:
    """x [B, 3, H, W] (or a video VAE's [B, 3, F, H, W]) in [-1, 1] -> MSE of the reconstruction from a posterior
    sample + kl_weight x KL per latent element. decode(z) -> the reconstruction (default vae.decode(z).sample)."""
    post = vae.encode(x).latent_dist
    z = post.sample()  # [B, C, h, w] ([B, C, f, h, w])
    recon = decode(z) if decode is not None else vae.decode(z).sample  # like x
    mse = F.mse_loss(recon, x)
    # KL(q(z|x) || N(0, I)) per latent element; diffusers' kl() sums dims 1-3 only, so sum the rest here
    kl = post.kl().sum() / z.numel()
    return mse + kl_weight * kl, {"mse": round(mse.item(), 5), "kl": round(kl.item(), 4)}


@torch.no_grad()
def set_latent_stats(vae, seed: int) -> tuple[float, float]:
    """shift_factor = mean and scaling_factor = 1 / std of the posterior means of STATS_BATCH fixed renders."""
    _, images = STREAMS["shapes"]([seed, 1], vae.config.sample_size).batch(STATS_BATCH)
    dev = next(vae.parameters()).device
    z = vae.encode(images_to_tensor(images).to(dev)).latent_dist.mean
    shift, scale = float(z.mean()), float(1.0 / z.std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return shift, scale


class RoundTrip:
    """A generator (generate(prompts, seeds) -> uint8 [B, H, W, 3]): the oracle's renders encoded to the
    posterior mean and decoded, so the verifier measures what the autoencoder keeps."""

    def __init__(self, vae):
        self.vae = vae

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int]):
        from visalign.images import tensor_to_images
        from ..models.registry import OracleGenerator

        x = images_to_tensor(OracleGenerator().generate(prompts, seeds)).to(next(self.vae.parameters()).device)
        return tensor_to_images(self.vae.decode(self.vae.encode(x).latent_dist.mean).sample)


def round_trip(vae, per_category: int = 20) -> dict:
    """Held-out GenEval-S of the oracle's renders through the autoencoder: both readings and extra objects."""
    from ..evaluate import evaluate

    was = vae.training
    res = evaluate(RoundTrip(vae.eval()), per_category=per_category, seed=0)
    vae.train(was)
    return {"round_trip": round(res["overall"], 4), "round_trip_exact": round(res["exact"], 4),
            "round_trip_extra": round(res["extra"], 4)}


def vae_pretrain(cfg: sp.VAEConfig, recipe: PipelinePretrainRecipe, out: str | Path, log=print):
    vae = sp.build_vae(cfg)
    t = recipe.train

    def save(path: Path, dtype) -> None:
        set_latent_stats(vae, t.seed)
        sp.save_vae(vae, path, dtype)

    def loss_fn(prompts, images):
        return vae_loss(vae, images_to_tensor(images).to(t.device), recipe.kl_weight)

    stream = lambda seed: STREAMS["shapes"](seed, cfg.resolution)  # noqa: E731
    _loop(Trained({"vae": vae}, save), t, Path(out), loss_fn, log, "AutoencoderKL", stream=stream)
    res = round_trip(vae)
    log(f"the oracle's held-out renders through the autoencoder: GenEval-S {res['round_trip']:.3f}, exact reading "
        f"{res['round_trip_exact']:.3f}, extra objects {res['round_trip_extra']:.2f} per image (20 per category)")
    atomic_write_text(Path(out) / "round_trip.json", json.dumps(res, indent=2))
    return vae.eval()


# ------------------------------------------------------------------------------------------------ denoisers


def load_vae(spec: str):
    """builtin:shapes-vae or a folder vae_pretrain wrote -> an AutoencoderKL (fp32, frozen)."""
    from diffusers import AutoencoderKL

    from ..models.registry import WEIGHTS_DIR

    path = WEIGHTS_DIR / spec.removeprefix("builtin:") if spec.startswith("builtin:") else Path(spec)
    if not (path / "config.json").is_file():
        raise ConfigError(f"vae '{spec}': {path} holds no AutoencoderKL (config.json); accepted: builtin:shapes-vae "
                          f"or a folder `visalign pretrain shapes-vae-pretrain --out DIR` wrote")
    return AutoencoderKL.from_pretrained(path, dtype=torch.float32).eval().requires_grad_(False)


def condition(pipe, kind: str, prompts: list[str], max_sequence_length: int):
    """The pipeline's own prompt encoding, with gradients (encode_prompt is not under no_grad) ->
    DiffusersCondition."""
    from visalign.models.diffusers_adapter import DiffusersCondition

    dev = pipe.text_encoder.device
    if kind == "sd15":
        return DiffusersCondition(pipe.encode_prompt(prompts, dev, 1, False)[0])
    embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, device=dev,
                                              num_images_per_prompt=1, do_classifier_free_guidance=False,
                                              max_sequence_length=max_sequence_length)
    return DiffusersCondition(embeds, pooled)


def denoiser_loss(adapter, cond, x0: torch.Tensor, u: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x0, noise [B, C, h, w] latents; u [B] in (0, 1), 1 = noise. Flow (SD3): x_u = (1 - u) x0 + u noise,
    target noise - x0. Diffusion (SD1.5): the training timestep of u, x_t = sqrt(ab) x0 + sqrt(1 - ab) noise,
    target noise (epsilon) or sqrt(ab) noise - sqrt(1 - ab) x0 (v)."""
    if adapter.family == "flow":
        s = u[:, None, None, None]  # [B, 1, 1, 1]
        xt, target, t = (1 - s) * x0 + s * noise, noise - x0, u
    else:
        t, ab = adapter.forward_noise(u)
        a = ab.to(x0)[:, None, None, None]  # [B, 1, 1, 1]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = noise if adapter.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
    return F.mse_loss(adapter.predict(xt, t, cond).float(), target)


def denoiser_pretrain(kind: str, cfg, recipe: PipelinePretrainRecipe, out: str | Path, log=print):
    """Train a new shapes-sd3 or shapes-sd15 pipeline around the recipe's frozen VAE, or go on training a saved one
    (recipe.init)."""
    from visalign.models.diffusers_adapter import adapter_for, load_pipeline

    t = recipe.train
    torch.manual_seed(t.seed)
    if recipe.init:  # go on training a saved pipeline: its sampling defaults come with it
        pipe = load_pipeline(recipe.init)
        if type(pipe).__name__ != sp.PIPELINES[kind]:
            raise ConfigError(f"init '{recipe.init}' is a {type(pipe).__name__}; {kind}_pretrain goes on training a "
                              f"{sp.PIPELINES[kind]}")
        sampling = sp.read_sampling(recipe.init) or sp.sampling_defaults(cfg)
    else:
        with sp.quiet():
            pipe = (sp.build_sd3 if kind == "sd3" else sp.build_sd15)(cfg, load_vae(recipe.vae))
        sampling = sp.sampling_defaults(cfg)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(t.device)
    msl = int(sampling.get("max_sequence_length", 0))
    adapter = adapter_for(pipe, max_sequence_length=msl if kind == "sd3" else None)  # freezes VAE and text encoders
    vae = pipe.vae
    texts = {n: m for n, m in pipe.components.items() if n.startswith("text_encoder") and isinstance(m, nn.Module)}
    parts = {"denoiser": adapter.module.requires_grad_(True)}
    if recipe.text_encoders == "train":
        parts.update({n: m.requires_grad_(True) for n, m in texts.items()})
    gen = torch.Generator().manual_seed(t.seed)

    def save(path: Path, dtype) -> None:
        sp.save_pipeline(pipe, path, sampling, dtype)

    def loss_fn(prompts, images):
        drop = (torch.rand(len(prompts), generator=gen) < t.cfg_dropout).tolist()
        prompts = ["" if d else p for p, d in zip(prompts, drop)]
        with torch.no_grad():
            x0 = adapter.encode_images(images_to_tensor(images))  # [B, C, h, w]
        u = sample_t(len(prompts), recipe.timestep_sampling, gen).clamp(1e-4, 1 - 1e-4).to(t.device)  # [B]
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        loss = denoiser_loss(adapter, condition(pipe, kind, prompts, msl), x0, u, noise)
        return loss, {}

    stream = lambda seed: STREAMS["shapes"](seed, vae.config.sample_size)  # noqa: E731
    what = f"{sp.PIPELINES[kind]} ({recipe.text_encoders} text encoders)"
    _loop(Trained(parts, save), t, Path(out), loss_fn, log, what, stream=stream)
    return pipe


def run_recipe(data: dict, out: str | Path, log=print):
    """`visalign pretrain` of a recipe dict of kind vae_pretrain, sd3_pretrain or sd15_pretrain."""
    from visalign.config import build

    kind = data.pop("kind")
    recipe = build(PipelinePretrainRecipe, data)
    cls = {"vae_pretrain": sp.VAEConfig, "sd3_pretrain": sp.SD3Config, "sd15_pretrain": sp.SD15Config}[kind]
    cfg = build(cls, recipe.model, "model")  # typed as the recipe's own fields (model.text a TextConfig)
    if kind == "vae_pretrain":
        return vae_pretrain(cfg, recipe, out, log)
    return denoiser_pretrain(kind.removesuffix("_pretrain"), cfg, recipe, out, log)

