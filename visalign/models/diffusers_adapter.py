"""Real diffusers backends as policy adapters: `diffusers:<path-or-hub-id>?dtype=bfloat16&resolution=512`.

The pipeline is loaded with `DiffusionPipeline.from_pretrained(..., local_files_only=True)` by default: a
local directory, or a hub id already in the local Hugging Face cache; nothing is downloaded unless the spec
says `?local_files_only=false` (a recipe: `model_options: {local_files_only: false}`), which lets diffusers
download a hub id into the cache. A visalign run folder or one of its checkpoints is refused with the
`visalign export` command that makes a pipeline (or a LoRA) of it.

  StableDiffusionPipeline, StableDiffusionXLPipeline -> DiffusersDiffusionAdapter (family "diffusion",
      DiffusionPolicy): the UNet's prediction (epsilon or v) on a DDIMScheduler schedule built from the
      pipeline's scheduler config, so visalign's deterministic sampler (kind "ode") reproduces
      `pipe(..., num_inference_steps=T, guidance_scale=w)` with a DDIMScheduler.
  StableDiffusion3Pipeline, FluxPipeline -> DiffusersFlowAdapter (family "flow", FlowPolicy): the
      transformer's velocity for x_sigma = (1 - sigma) x0 + sigma noise. The pipelines' own schedule is
      visalign's `sigma_schedule(T, shift)` with shift = `adapter.default_shift` (SD3: the scheduler's
      shift; FLUX: exp(mu) of its resolution-dependent shift); SD3's pipeline reproduces it when given
      `sigmas=linspace(1, 0, T + 1)[:-1]`, FLUX's by default.
  WanPipeline, LTXPipeline -> video adapters (family "flow", FlowPolicy; models/diffusers_video.py): latents
      [C, F_latent, h, w], decode() gives videos [B, F, 3, H, W].

Options (after '?'): dtype (float32 | bfloat16 | float16; the network and the frozen parts, default
float32), resolution (image side in pixels; default the pipeline's), flux_guidance (FLUX's distilled
guidance value, default 3.5, used when the transformer embeds guidance), max_sequence_length (T5 tokens;
default the pipeline's, 256 for SD3 and 512 for FLUX), local_files_only (true | false, default true: offline).
Video pipelines also take num_frames, height, width (resolution sets both) and, for LTX, frame_rate
(models/diffusers_video.py).

A pipeline folder with a `sampling.json` (the bundled shapes pipelines carry one) brings its
sampling defaults: num_inference_steps, guidance_scale and max_sequence_length, the pipeline-call arguments
it was trained with (a video pipeline's also num_frames, height, width, frame_rate).

Prompt encodings are cached per prompt string (the text encoders are frozen, run under no_grad). "" is
the unconditional prompt, encoded as the pipeline encodes its default negative prompt (SDXL: zeros when
`force_zeros_for_empty_prompt`).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from .pipeline_files import quiet, read_sampling

SUPPORTED = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
    "WanPipeline": "wan",
    "LTXPipeline": "ltx",
}
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class DiffusersCondition:
    """Encoded prompts. embeds [B, L, D] (the text tokens the network attends to); pooled [B, P] (SDXL,
    SD3, FLUX) or None; time_ids [B, 6] (SDXL's size/crop conditioning) or None; mask [B, L] (LTX's text
    attention mask) or None."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def __getitem__(self, idx) -> DiffusersCondition:
        return DiffusersCondition(*(None if v is None else v[idx] for v in self._values()))

    def _values(self):
        return [getattr(self, f.name) for f in fields(self)]

    def to(self, device) -> DiffusersCondition:
        return DiffusersCondition(*(None if v is None else v.to(device) for v in self._values()))

    @staticmethod
    def cat(conds: list[DiffusersCondition]) -> DiffusersCondition:
        cols = zip(*(c._values() for c in conds))
        return DiffusersCondition(*(None if col[0] is None else torch.cat(col) for col in cols))


# ------------------------------------------------------------------------------------------------ loading


def _dtype(name) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if str(name) not in DTYPES:
        raise ValueError(f"dtype '{name}' is not accepted; accepted: float32, bfloat16, float16")
    return DTYPES[str(name)]


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or Path(name).expanduser().exists() or name.count("/") > 1


def _source(name: str) -> str:
    """What from_pretrained is given: a checked local pipeline folder, or the hub id as it is."""
    from ..checkpoint import not_a_diffusers_folder, run_of_folder

    if not _looks_like_path(name):
        return name
    path = Path(name).expanduser()
    if not path.exists():
        raise ValueError(f"diffusers model '{name}': no such directory (give a diffusers pipeline folder, or a hub "
                         f"id such as stable-diffusion-v1-5/stable-diffusion-v1-5)")
    if not (path / "model_index.json").is_file():
        run = run_of_folder(path)
        if run is not None:  # diffusers' loaders would read our training state as nothing, silently
            raise ValueError(f"diffusers model {not_a_diffusers_folder(name, run, 'pipeline')}")
        raise ValueError(f"diffusers model '{name}': {path} holds no model_index.json, so it is not a diffusers "
                         f"pipeline directory (write one with pipe.save_pretrained(dir))")
    return str(path)


def _not_found(name: str, local_files_only: bool, e: Exception) -> ValueError:
    """The one line for a model that is neither a folder nor cached (offline), or that failed to download."""
    if local_files_only:
        return ValueError(
            f"diffusers model '{name}' is neither a local pipeline folder nor in the local Hugging Face cache, and "
            f"models load offline by default: add ?local_files_only=false to let diffusers download it (in a recipe: "
            f"model_options.local_files_only=false), or fetch it first with `hf download {name}` "
            f"(`huggingface-cli download {name}` on older huggingface_hub) ({_first_line(e)})")
    blocked = "; HF_HUB_OFFLINE is set, which forbids downloads" if os.environ.get("HF_HUB_OFFLINE") else ""
    return ValueError(f"diffusers model '{name}' is neither a local pipeline folder nor cached, and downloading it "
                      f"from the Hugging Face hub (local_files_only=false) failed{blocked} ({_first_line(e)})")


def load_pipeline(name: str, dtype: torch.dtype = torch.float32, local_files_only: bool = True):
    """DiffusionPipeline.from_pretrained(name, local_files_only=...): offline by default, a download from the hub
    only when asked; every failure is one ValueError line."""
    from diffusers import DiffusionPipeline

    source = _source(name)
    try:
        with warnings.catch_warnings():  # huggingface_hub's deprecation chatter
            warnings.simplefilter("ignore")
            config = DiffusionPipeline.load_config(source, local_files_only=local_files_only)
    except Exception as e:  # noqa: BLE001 - hub/cache errors come in many classes; all mean "not here"
        raise _not_found(name, local_files_only, e) from None
    cls = config.get("_class_name")
    if cls not in SUPPORTED:
        raise ValueError(f"diffusers model '{name}' is a {cls}; supported pipelines: {', '.join(SUPPORTED)}")
    # components saved as absent ([null, null] in model_index.json, e.g. SD3 without T5) are passed as None,
    # the documented way to load a pipeline without them
    absent = {k: None for k, v in config.items() if not k.startswith("_") and v in ([None, None], (None, None))}
    try:
        with warnings.catch_warnings(), quiet():  # no progress/info chatter while loading
            warnings.simplefilter("ignore", FutureWarning)
            pipe = DiffusionPipeline.from_pretrained(source, local_files_only=local_files_only, dtype=dtype, **absent)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"diffusers model '{name}' ({cls}) failed to load (local_files_only="
                         f"{str(local_files_only).lower()}): {_first_line(e)}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


OPTIONS = ("dtype", "resolution", "flux_guidance", "max_sequence_length", "local_files_only", "num_frames", "height",
           "width", "frame_rate")
VIDEO_OPTIONS = ("num_frames", "height", "width", "frame_rate")  # video pipelines only (diffusers_video.py)


def _flag(model: str, option: str, value) -> bool:
    """A true/false option (YAML-typed by the spec parser: true, false, yes, no)."""
    if isinstance(value, bool):
        return value
    raise ValueError(f"diffusers model '{model}': option {option}={value!r} is not accepted; accepted: true, false")


def load_diffusers(name: str, **options):
    """The `diffusers:<name>?option=value&...` model factory -> a policy adapter (options: OPTIONS)."""
    if not name:
        raise ValueError("diffusers model spec needs a path or hub id: diffusers:<path-or-hub-id>")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"model 'diffusers:{name}' does not take options {unknown}; accepted: {', '.join(OPTIONS)}")
    dt = _dtype(options.pop("dtype", "float32"))
    pipe = load_pipeline(name, dt, _flag(name, "local_files_only", options.pop("local_files_only", True)))
    path = Path(name).expanduser()
    sampling = read_sampling(path) if path.is_dir() else {}
    video = SUPPORTED[type(pipe).__name__] in ("wan", "ltx")
    if video and "flux_guidance" in options:
        raise ValueError(f"diffusers model '{name}': option flux_guidance applies to FluxPipeline, not to a "
                         f"{type(pipe).__name__}")
    for key in ("max_sequence_length", *(VIDEO_OPTIONS if video else ())):
        if key in sampling and not (key in ("height", "width") and "resolution" in options):  # resolution: both
            options.setdefault(key, sampling[key])
    adapter = adapter_for(pipe, dtype=dt, **options)
    adapter.default_steps = int(sampling.get("num_inference_steps", adapter.default_steps))
    adapter.default_guidance = float(sampling.get("guidance_scale", adapter.default_guidance))
    adapter.source_dir = path if path.is_dir() else None  # export copies its sampling.json and tokenizer files
    return adapter


def adapter_for(pipe, dtype: torch.dtype | str | None = None, resolution: int | None = None,
                flux_guidance: float = 3.5, max_sequence_length: int | None = None, **video):
    """A loaded (or built) pipeline -> its policy adapter. `video`: VIDEO_OPTIONS, for a video pipeline."""
    kind = SUPPORTED.get(type(pipe).__name__)
    if kind is None:
        raise ValueError(f"pipeline {type(pipe).__name__} is not supported; supported pipelines: "
                         f"{', '.join(SUPPORTED)}")
    dt = _dtype(dtype) if dtype is not None else None
    if kind in ("wan", "ltx"):
        from .diffusers_video import video_adapter

        return video_adapter(pipe, kind, dt, resolution, max_sequence_length, **video)
    given = sorted(k for k, v in video.items() if v is not None)
    if given:
        raise ValueError(f"options {given} apply to video pipelines (WanPipeline, LTXPipeline), not to a "
                         f"{type(pipe).__name__}")
    if kind in ("sd", "sdxl"):
        return DiffusersDiffusionAdapter(pipe, kind, dt, resolution)
    return DiffusersFlowAdapter(pipe, kind, dt, resolution, flux_guidance, max_sequence_length)


# ----------------------------------------------------------------------------------------------- adapters


# kind -> (steps, guidance): the pipelines' __call__ defaults (FLUX: no true CFG; its distilled guidance is
# the flux_guidance option)
DEFAULTS = {"sd": (50, 7.5), "sdxl": (50, 5.0), "sd3": (28, 7.0), "flux": (28, 1.0), "wan": (50, 5.0), "ltx": (50, 3.0)}


class _DiffusersAdapter:
    family = ""

    def __init__(self, pipe, kind: str, dtype: torch.dtype | None, resolution: int | None):
        self.pipe, self.kind = pipe, kind
        if dtype is not None:
            from diffusers.utils import logging as dlogging

            verbosity = dlogging.get_verbosity()
            dlogging.set_verbosity_error()  # "modules that should be kept in float32: []"
            try:
                for part in [self.module, *self._frozen()]:
                    if next(part.parameters()).dtype != dtype:
                        part.to(dtype)
            finally:
                dlogging.set_verbosity(verbosity)
        self.dtype = self.module.dtype
        vae = pipe.vae
        if self.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            vae.to(torch.float32)  # fp16 VAEs overflow; SDXL's pipeline upcasts the same way
        for part in self._frozen():
            part.requires_grad_(False)
            part.eval()
        self._set_shape(resolution)
        self.default_steps, self.default_guidance = DEFAULTS[kind]
        self._cache: dict[str, DiffusersCondition] = {}

    def _set_shape(self, resolution: int | None) -> None:
        """vae_scale_factor, resolution and latent_shape [C, h, w] (a video adapter sets its own)."""
        vae = self.pipe.vae
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        res = resolution if resolution is not None else self._default_resolution()
        multiple = self.vae_scale_factor * self._latent_multiple()
        if int(res) <= 0 or int(res) % multiple:
            raise ValueError(f"resolution {res} must be a positive multiple of {multiple} for this "
                             f"{type(self.pipe).__name__} (VAE scale factor {self.vae_scale_factor} x latent multiple "
                             f"{self._latent_multiple()})")
        self.resolution = int(res)
        side = self.resolution // self.vae_scale_factor
        self.latent_shape = (self._latent_channels(), side, side)

    # -------------------------------------------------------------------------------- common interface

    @property
    def module(self) -> nn.Module:
        """The trainable network: the UNet or the transformer."""
        return self.pipe.unet if self.kind in ("sd", "sdxl") else self.pipe.transformer

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def to(self, device) -> _DiffusersAdapter:
        self.pipe.to(device)
        self._cache = {p: c.to(device) for p, c in self._cache.items()}
        return self

    def enable_gradient_checkpointing(self) -> None:
        """train.gradient_checkpointing: the network's own diffusers checkpointing (UNet2DConditionModel,
        SD3Transformer2DModel and FluxTransformer2DModel have it). diffusers (>= 0.32) gates it on
        torch.is_grad_enabled(), not on train mode, so it acts in updates with the network in eval mode, as visalign
        keeps it, and not in no_grad rollouts."""
        from ..config import ConfigError

        net = self.module
        if not getattr(net, "_supports_gradient_checkpointing", False):
            raise ConfigError(f"train.gradient_checkpointing: diffusers' {type(net).__name__} has no gradient "
                              f"checkpointing; supported: UNet2DConditionModel, SD3Transformer2DModel, "
                              f"FluxTransformer2DModel")
        net.enable_gradient_checkpointing()

    def _frozen(self) -> list[nn.Module]:
        names = ("vae", "text_encoder", "text_encoder_2", "text_encoder_3")
        return [m for m in (getattr(self.pipe, n, None) for n in names) if isinstance(m, nn.Module)]

    def encode(self, prompts: list[str]) -> DiffusersCondition:
        """Encoded prompts [B, ...], each prompt string encoded once and cached."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            with torch.no_grad():
                new = self._encode(missing)
            for i, p in enumerate(missing):
                self._cache[p] = new[i : i + 1]
        return DiffusersCondition.cat([self._cache[p] for p in prompts])

    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: DiffusersCondition) -> torch.Tensor:
        """The network's output [B, C, h, w] (in its dtype, on its device) at x [B, C, h, w], time t [B].

        On CUDA the attention runs on the flash, memory-efficient or math kernels, not cuDNN's: measured on an
        H200 (torch 2.11 + cuDNN 9.19), cuDNN attention's backward in bf16 gave NaN / 1e38 LoRA gradients
        through the tiny FLUX transformer's joint attention while its forward was right; the other kernels
        gave the CPU's gradients. The backward uses the kernel the forward chose, so this covers it."""
        if self.device.type != "cuda":
            return self._predict(x, t, cond)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            return self._predict(x, t, cond)

    @property
    def _vae_dtype(self) -> torch.dtype:
        return next(self.pipe.vae.parameters()).dtype

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, C, h, w] -> images [B, 3, H, W] in [-1, 1] (fp32), through the VAE as the pipeline does."""
        cfg = self.pipe.vae.config
        z = latents.to(self.device, self._vae_dtype)
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        if self.kind == "sdxl" and mean is not None and std is not None:
            shape = (1, len(mean), 1, 1)
            z = z * torch.tensor(std).view(shape).to(z) / cfg.scaling_factor + torch.tensor(mean).view(shape).to(z)
        else:
            z = z / cfg.scaling_factor
            if getattr(cfg, "shift_factor", None) is not None and self.kind in ("sd3", "flux"):
                z = z + cfg.shift_factor
        return self.pipe.vae.decode(z, return_dict=False)[0].float().clamp(-1, 1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] -> latents [B, C, h, w] (fp32): the VAE posterior's mean, scaled as
        the pipeline scales latents, the inverse of decode()."""
        cfg = self.pipe.vae.config
        z = self.pipe.vae.encode(images.to(self.device, self._vae_dtype)).latent_dist.mean
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        if self.kind == "sdxl" and mean is not None and std is not None:
            shape = (1, len(mean), 1, 1)
            z = (z - torch.tensor(mean).view(shape).to(z)) * cfg.scaling_factor / torch.tensor(std).view(shape).to(z)
        else:
            if getattr(cfg, "shift_factor", None) is not None and self.kind in ("sd3", "flux"):
                z = z - cfg.shift_factor
            z = z * cfg.scaling_factor
        return z.float()

    # ------------------------------------------------------------------------------------ per kind

    def _default_resolution(self) -> int:
        raise NotImplementedError

    def _latent_multiple(self) -> int:
        return 1

    def _latent_channels(self) -> int:
        raise NotImplementedError

    def _encode(self, prompts: list[str]) -> DiffusersCondition:
        raise NotImplementedError

    def _predict(self, x: torch.Tensor, t: torch.Tensor, cond: DiffusersCondition) -> torch.Tensor:
        raise NotImplementedError


class DiffusersDiffusionAdapter(_DiffusersAdapter):
    """SD1.5 / SDXL for DiffusionPolicy: predict(x, t, cond) is the UNet output (prediction_type of the
    scheduler config) at the integer training timestep t."""

    family = "diffusion"

    def __init__(self, pipe, kind, dtype, resolution):
        super().__init__(pipe, kind, dtype, resolution)
        from diffusers import DDIMScheduler

        self.scheduler_config = dict(pipe.scheduler.config)
        sched = DDIMScheduler.from_config(pipe.scheduler.config)
        self.prediction_type = sched.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"scheduler prediction_type '{self.prediction_type}' is not one of epsilon, v_prediction, "
                             f"sample")
        self.clip_sample = float(sched.config.clip_sample_range) if sched.config.clip_sample else None
        self.num_train_timesteps = int(sched.config.num_train_timesteps)
        self.alphas_cumprod = sched.alphas_cumprod.float().clone()  # [N]
        self._schedules: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _default_resolution(self) -> int:
        return int(self.pipe.unet.config.sample_size) * self.vae_scale_factor

    def _latent_channels(self) -> int:
        return int(self.pipe.unet.config.in_channels)

    def schedule(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (timesteps [T] (int64, DDIMScheduler's), alpha_bars [T+1]): alphas_cumprod at each timestep, and
        for the final state the alpha_bar DDIMScheduler.step moves the last step to (final_alpha_cumprod when
        the previous timestep is < 0)."""
        if steps not in self._schedules:
            from diffusers import DDIMScheduler

            sched = DDIMScheduler.from_config(self.scheduler_config)
            sched.set_timesteps(steps)
            ts = sched.timesteps.long().cpu()  # [T]
            ac = sched.alphas_cumprod.float()
            prev = int(ts[-1]) - sched.config.num_train_timesteps // sched.num_inference_steps
            last = ac[prev] if prev >= 0 else torch.as_tensor(sched.final_alpha_cumprod, dtype=torch.float32)
            self._schedules[steps] = (ts, torch.cat([ac[ts], last.reshape(1)]).float())
        ts, ab = self._schedules[steps]
        return ts.clone(), ab.clone()

    def forward_noise(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u [B] in (0, 1), 1 = noise -> (integer training timesteps [B], their alphas_cumprod [B])."""
        n = self.num_train_timesteps
        t = (u.float() * n).long().clamp(0, n - 1)
        return t, self.alphas_cumprod.to(t.device)[t]

    def _predict(self, x: torch.Tensor, t: torch.Tensor, cond: DiffusersCondition) -> torch.Tensor:
        """x [B, C, h, w], t [B] training timesteps -> the UNet's output [B, C, h, w] in the network's dtype."""
        kwargs = {}
        if self.kind == "sdxl":
            kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled.to(self.device),
                                           "time_ids": cond.time_ids.to(self.device)}
        return self.pipe.unet(x.to(self.device, self.dtype), t.to(self.device), encoder_hidden_states=cond.embeds.to(self.device),
                              return_dict=False, **kwargs)[0]

    def _encode(self, prompts):
        pipe, dev = self.pipe, self.device
        if self.kind == "sd":
            embeds, _ = pipe.encode_prompt(prompts, dev, 1, False)
            return DiffusersCondition(embeds)
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, device=dev, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        if pipe.config.force_zeros_for_empty_prompt:  # what the pipeline uses as its negative for no prompt
            empty = torch.tensor([p == "" for p in prompts], device=embeds.device)
            embeds = torch.where(empty[:, None, None], torch.zeros_like(embeds), embeds)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        size = (self.resolution, self.resolution)
        proj = int(pooled.shape[-1])
        time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=embeds.dtype, text_encoder_projection_dim=proj)
        return DiffusersCondition(embeds, pooled, time_ids.to(dev).repeat(len(prompts), 1))


class DiffusersFlowAdapter(_DiffusersAdapter):
    """SD3 / FLUX for FlowPolicy: predict(x, sigma [B], cond) is the transformer's velocity for
    x_sigma = (1 - sigma) x0 + sigma noise. SD3's transformer takes timestep = 1000 sigma; FLUX's takes sigma
    (it multiplies by 1000 inside) and sees 2x2-packed latents with image ids, which predict() packs."""

    family = "flow"

    def __init__(self, pipe, kind, dtype, resolution, flux_guidance: float = 3.5,
                 max_sequence_length: int | None = None):
        super().__init__(pipe, kind, dtype, resolution)
        cfg = pipe.scheduler.config
        self.num_train_timesteps = int(cfg.num_train_timesteps)
        self.flux_guidance = float(flux_guidance)
        self.max_sequence_length = int((256 if kind == "sd3" else 512) if max_sequence_length is None
                                       else max_sequence_length)
        self.default_shift = self._shift()

    def _default_resolution(self) -> int:
        if self.kind == "sd3":
            return int(self.pipe.transformer.config.sample_size) * self.vae_scale_factor
        return 128 * self.vae_scale_factor  # FluxPipeline.default_sample_size

    def _latent_multiple(self) -> int:
        return 2 if self.kind == "flux" else int(self.pipe.transformer.config.patch_size)

    def _latent_channels(self) -> int:
        c = int(self.pipe.transformer.config.in_channels)
        return c // 4 if self.kind == "flux" else c

    def _shift(self) -> float:
        """The shift s of sigma = s t / (1 + (s - 1) t) that the pipeline's scheduler applies at this
        resolution: the config's shift, or exp(mu) with dynamic shifting (mu from the image's token count, as
        the pipeline computes it)."""
        cfg = self.pipe.scheduler.config
        if not cfg.get("use_dynamic_shifting", False):
            return float(cfg.get("shift", 1.0))
        _, h, w = self.latent_shape
        p = 2 if self.kind == "flux" else int(self.pipe.transformer.config.patch_size)
        seq = (h // p) * (w // p)
        base_len, max_len = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
        base, top = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15 if self.kind == "flux" else 1.16)
        m = (top - base) / (max_len - base_len)
        mu = seq * m + base - m * base_len
        if cfg.get("time_shift_type", "exponential") != "exponential":
            raise ValueError(f"scheduler time_shift_type '{cfg.get('time_shift_type')}' has no shift equivalent; "
                             f"accepted: exponential")
        return math.exp(mu)

    def _predict(self, x: torch.Tensor, t: torch.Tensor, cond: DiffusersCondition) -> torch.Tensor:
        """x [B, C, h, w], sigma [B] -> the velocity [B, C, h, w] in the network's dtype."""
        dev, dt = self.device, self.dtype
        x = x.to(dev, dt)
        sigma = t.to(dev).float()
        tr = self.pipe.transformer
        if self.kind == "sd3":
            return tr(hidden_states=x, timestep=sigma * self.num_train_timesteps,
                      encoder_hidden_states=cond.embeds.to(dev), pooled_projections=cond.pooled.to(dev),
                      return_dict=False)[0]
        b, c, h, w = x.shape
        packed = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
        img_ids = torch.zeros(h // 2, w // 2, 3, device=dev)
        img_ids[..., 1] += torch.arange(h // 2, device=dev)[:, None]
        img_ids[..., 2] += torch.arange(w // 2, device=dev)[None, :]
        txt_ids = torch.zeros(cond.embeds.shape[1], 3, device=dev, dtype=cond.embeds.dtype)
        guidance = None
        if tr.config.guidance_embeds:
            guidance = torch.full((b,), self.flux_guidance, device=dev, dtype=torch.float32)
        out = tr(hidden_states=packed, timestep=sigma.to(dt), guidance=guidance, pooled_projections=cond.pooled.to(dev),
                 encoder_hidden_states=cond.embeds.to(dev), txt_ids=txt_ids, img_ids=img_ids.reshape(-1, 3).to(dt),
                 return_dict=False)[0]  # [B, h/2 * w/2, 4 C]
        return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)

    def _encode(self, prompts):
        pipe, dev = self.pipe, self.device
        if self.kind == "sd3":
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompt=prompts, prompt_2=None, prompt_3=None, device=dev, num_images_per_prompt=1,
                do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length)
            return DiffusersCondition(embeds, pooled)
        embeds, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=dev, num_images_per_prompt=1,
                                               max_sequence_length=self.max_sequence_length)
        return DiffusersCondition(embeds, pooled)
