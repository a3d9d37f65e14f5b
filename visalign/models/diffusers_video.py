"""Video pipelines through the `diffusers:` adapter: WanPipeline (Wan 2.1) and LTXPipeline (LTX-Video) as flow
policies (family "flow", FlowPolicy), `diffusers:<dir>?num_frames=9&resolution=256`.

A video adapter has `is_video = True` and `frames` (F, the frames of a decoded video). Its latents are
[C, F_latent, h, w] (F_latent = (F - 1) / the VAE's temporal compression + 1), normalised as the pipeline
normalises them; decode() gives videos [B, F, 3, H, W] in [-1, 1] and encode_images() takes them back (the VAE
posterior's mean). predict(x, sigma [B], cond) is the transformer's velocity for x_sigma = (1 - sigma) x0 +
sigma noise; both transformers take timestep = 1000 sigma (the scheduler's timesteps).

  WanPipeline   WanTransformer3DModel on latents [B, C, F_latent, h, w]; AutoencoderKLWan's latents normalised
                with the VAE config's latents_mean / latents_std; UMT5 prompts (the pipeline's zero-padded
                embeddings). The schedule's shift is the scheduler's `shift` (FlowMatchEulerDiscreteScheduler) or
                `flow_shift` (the UniPCMultistepScheduler with use_flow_sigmas the Wan checkpoints ship: a
                multistep solver of the same ODE, so visalign's Euler sampler follows the same path, not the
                same discretisation). Wan 2.2's two-expert pipelines (transformer_2) are refused; its
                expand_timesteps (TI2V) gives every latent token the step's timestep, as the pipeline does.
  LTXPipeline   LTXVideoTransformer3DModel on the pipeline's packed tokens (predict packs [C, F_latent, h, w]
                into them and back, so visalign's states stay 5-D); AutoencoderKLLTXVideo's latents normalised
                with its latents_mean / latents_std buffers and scaling_factor; T5 prompts with their attention
                mask. The shift is exp(mu) of the scheduler's dynamic shifting at this video's token count
                (F_latent h w, as the pipeline computes mu); a scheduler `shift_terminal` (LTX 0.9.1+: 0.1) is
                the adapter's `shift_terminal`, which FlowPolicy's schedule applies. Decoding uses the
                pipeline's default decode_timestep 0 (no decode noise).

visalign's deterministic sampler (kind "ode", the sigmas `sigma_schedule(T, default_shift)`) reproduces
`pipe(prompt, num_frames=F, height=H, width=W, num_inference_steps=T, guidance_scale=w, latents=...)`: LTX's
pipeline by default (its sigmas are linspace(1, 1/T, T)), Wan's when its FlowMatchEulerDiscreteScheduler is given
the same sigmas, linspace(1, 0, T + 1)[:-1] (WanPipeline's __call__ takes no sigmas; by default its scheduler
ends at sigma ~0.003 instead of 1/T, as SD3's does).

Options (besides dtype, max_sequence_length, local_files_only): num_frames (F; 1 + k x the VAE's temporal
compression: Wan 4, LTX 8), resolution (square side in pixels) or height / width, frame_rate (LTX: its rotary
embedding's time scale, default 25). Defaults: the folder's sampling.json, else the pipelines' __call__ defaults
(Wan 81 frames at 480 x 832, LTX 161 frames at 512 x 704; max_sequence_length Wan 512, LTX 128). The empty
prompt "" is the unconditional one, encoded as the pipelines encode their default negative prompt "".
"""

from __future__ import annotations

import math

import torch

from .diffusers_adapter import DiffusersCondition, _DiffusersAdapter

# kind -> the pipeline's __call__ defaults
VIDEO_DEFAULTS = {
    "wan": {"num_frames": 81, "height": 480, "width": 832, "max_sequence_length": 512},
    "ltx": {"num_frames": 161, "height": 512, "width": 704, "max_sequence_length": 128, "frame_rate": 25},
}


def _positive_int(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"video option {name}={value!r} is not accepted; accepted: a positive integer")
    return value


def video_adapter(pipe, kind: str, dtype, resolution=None, max_sequence_length=None, num_frames=None, height=None,
                  width=None, frame_rate=None):
    """A loaded WanPipeline / LTXPipeline -> its adapter (adapter_for calls this)."""
    if frame_rate is not None and kind != "ltx":
        raise ValueError(f"option frame_rate applies to LTXPipeline, not to a {type(pipe).__name__}")
    cls = {"wan": WanAdapter, "ltx": LTXAdapter}[kind]
    return cls(pipe, kind, dtype, resolution=_positive_int("resolution", resolution),
               max_sequence_length=_positive_int("max_sequence_length", max_sequence_length),
               num_frames=_positive_int("num_frames", num_frames), height=_positive_int("height", height),
               width=_positive_int("width", width), frame_rate=frame_rate)


class DiffusersVideoAdapter(_DiffusersAdapter):
    """What Wan and LTX share: the frame and size options, the latent shape [C, F_latent, h, w] and the shift of
    the pipeline's sigma schedule. A subclass gives its compression, patch sizes and the network call."""

    family = "flow"
    is_video = True

    def __init__(self, pipe, kind, dtype, resolution=None, max_sequence_length=None, num_frames=None, height=None,
                 width=None, frame_rate=None):
        self._check_pipeline(pipe)
        d = VIDEO_DEFAULTS[kind]
        self._asked = (num_frames, height if height is not None else resolution,
                       width if width is not None else resolution)
        if frame_rate is not None and (isinstance(frame_rate, bool) or not isinstance(frame_rate, (int, float))
                                       or not math.isfinite(frame_rate) or frame_rate <= 0):
            raise ValueError(f"video option frame_rate={frame_rate!r} is not accepted; accepted: a positive number")
        self.frame_rate = float(frame_rate if frame_rate is not None else d.get("frame_rate", 0)) or None
        super().__init__(pipe, kind, dtype, resolution)
        self.num_train_timesteps = int(pipe.scheduler.config.get("num_train_timesteps", 1000))
        self.max_sequence_length = int(max_sequence_length or d["max_sequence_length"])
        self.default_shift, self.shift_terminal = self._shift()

    # ------------------------------------------------------------------------------------------- shapes

    def _check_pipeline(self, pipe) -> None:
        if getattr(pipe, "transformer", None) is None:
            raise ValueError(f"{type(pipe).__name__} has no transformer; visalign trains `transformer`")

    def _compression(self) -> tuple[int, int]:
        """(spatial, temporal) compression of the VAE."""
        raise NotImplementedError

    def _patch(self) -> tuple[int, int, int]:
        """The transformer's (time, height, width) patch sizes."""
        raise NotImplementedError

    def _set_shape(self, resolution) -> None:
        d, name = VIDEO_DEFAULTS[self.kind], type(self.pipe).__name__
        frames, height, width = (v if v is not None else d[k] for v, k in zip(self._asked, ("num_frames", "height",
                                                                                             "width")))
        spatial, temporal = self._compression()
        pt, ph, pw = self._patch()
        for side, value, p in (("height", height, ph), ("width", width, pw)):
            if value % (spatial * p):
                raise ValueError(f"{side} {value} must be a multiple of {spatial * p} for this {name} (VAE "
                                 f"compression {spatial} x patch size {p})")
        latent_frames = (frames - 1) // temporal + 1
        if (frames - 1) % temporal or latent_frames % pt:
            ok = [1 + k * temporal for k in range(1, 6) if (k + 1) % pt == 0][:3]
            raise ValueError(f"num_frames {frames} is not accepted for this {name}: it must be 1 + k x {temporal} "
                             f"(the VAE's temporal compression), e.g. {', '.join(map(str, ok))}")
        self.frames, self.height, self.width = frames, height, width
        self.vae_scale_factor, self.vae_scale_factor_temporal = spatial, temporal
        self.resolution = height if height == width else None
        self.latent_shape = (self._latent_channels(), latent_frames, height // spatial, width // spatial)

    # ---------------------------------------------------------------------------------------- schedule

    def _shift(self) -> tuple[float, float | None]:
        """(the shift s of sigma = s t / (1 + (s - 1) t) the pipeline's scheduler applies, its shift_terminal)."""
        sched = self.pipe.scheduler
        cfg, name = sched.config, type(sched).__name__
        if cfg.get("use_flow_sigmas", False):  # UniPC / DPM-Solver++ in flow mode (Wan's shipped scheduler)
            return float(cfg.get("flow_shift", 1.0)), None
        if "shift" not in cfg:
            raise ValueError(f"{type(self.pipe).__name__}'s scheduler {name} is not a flow-matching scheduler; "
                             f"accepted: FlowMatchEulerDiscreteScheduler, or a multistep one with use_flow_sigmas")
        bad = [k for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas",
                           "stochastic_sampling") if cfg.get(k, False)]
        if bad:
            raise ValueError(f"scheduler option(s) {bad} of {name} give a schedule visalign's flow sampler has no "
                             f"equivalent of; accepted: the shifted (and shift_terminal-stretched) linear schedule")
        terminal = cfg.get("shift_terminal") or None
        if not cfg.get("use_dynamic_shifting", False):
            return float(cfg.get("shift", 1.0)), terminal
        if self.kind != "ltx":  # WanPipeline passes no mu: its scheduler would refuse to set timesteps
            raise ValueError(f"{type(self.pipe).__name__} cannot sample with a use_dynamic_shifting scheduler (the "
                             f"pipeline gives it no mu); set a fixed shift")
        f, h, w = self.latent_shape[1:]
        base_len, max_len = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
        base, top = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15)
        m = (top - base) / (max_len - base_len)
        mu = f * h * w * m + base - m * base_len  # LTXPipeline's calculate_shift on the latent's token count
        kind = cfg.get("time_shift_type", "exponential")
        if kind not in ("exponential", "linear"):
            raise ValueError(f"scheduler time_shift_type '{kind}' has no shift equivalent; accepted: exponential, "
                             f"linear")
        # exponential: exp(mu) / (exp(mu) + 1 / t - 1) = shift exp(mu); linear: mu / (mu + 1 / t - 1) = shift mu
        return (math.exp(mu) if kind == "exponential" else float(mu)), terminal

    # ------------------------------------------------------------------------------------------- videos

    def _latents_stats(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(mean [C], std [C], scaling factor): raw VAE latents z -> normalised (z - mean) scaling / std."""
        raise NotImplementedError

    def _vae_decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.pipe.vae.decode(z, return_dict=False)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, C, F_latent, h, w] -> videos [B, F, 3, H, W] in [-1, 1] (fp32), through the VAE as the
        pipeline decodes them."""
        mean, std, scale = self._latents_stats()
        shape = (1, -1, 1, 1, 1)
        z = latents.to(self.device, self._vae_dtype) if self.kind == "wan" else latents.to(self.device).float()
        z = z * std.view(shape).to(z) / scale + mean.view(shape).to(z)
        video = self._vae_decode(z.to(self._vae_dtype))  # [B, 3, F, H, W]
        return video.float().clamp(-1, 1).permute(0, 2, 1, 3, 4)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """videos [B, F, 3, H, W] in [-1, 1] -> latents [B, C, F_latent, h, w] (fp32): the VAE posterior's mean,
        normalised as the pipeline normalises latents (the inverse of decode())."""
        if images.dim() != 5:
            raise ValueError(f"encode_images takes videos [B, F, 3, H, W]; got a tensor of shape {tuple(images.shape)}")
        x = images.to(self.device, self._vae_dtype).permute(0, 2, 1, 3, 4)
        z = self.pipe.vae.encode(x).latent_dist.mean.float()
        mean, std, scale = self._latents_stats()
        shape = (1, -1, 1, 1, 1)
        return (z - mean.view(shape).to(z)) * scale / std.view(shape).to(z)


class WanAdapter(DiffusersVideoAdapter):
    """WanPipeline (Wan 2.1 text-to-video; Wan 2.2 TI2V's expand_timesteps)."""

    def _check_pipeline(self, pipe) -> None:
        if getattr(pipe, "transformer_2", None) is not None:
            raise ValueError("WanPipeline with a transformer_2 (Wan 2.2's two experts, switched at boundary_ratio) is "
                             "not supported: visalign trains one network; load a single-transformer Wan pipeline")
        super()._check_pipeline(pipe)

    def _compression(self):
        return int(self.pipe.vae_scale_factor_spatial), int(self.pipe.vae_scale_factor_temporal)

    def _patch(self):
        pt, ph, pw = self.pipe.transformer.config.patch_size
        return int(pt), int(ph), int(pw)

    def _latent_channels(self) -> int:
        return int(self.pipe.transformer.config.in_channels)

    def _latents_stats(self):
        cfg = self.pipe.vae.config
        return torch.tensor(cfg.latents_mean), torch.tensor(cfg.latents_std), 1.0

    def _predict(self, x, t, cond):
        """x [B, C, F_latent, h, w], sigma [B] -> the velocity [B, C, F_latent, h, w] in the network's dtype."""
        dev, dt = self.device, self.dtype
        x = x.to(dev, dt)
        timestep = t.to(dev).float() * self.num_train_timesteps  # the scheduler's timesteps
        if self.pipe.config.get("expand_timesteps", False):  # Wan 2.2 TI2V: one timestep per latent token
            timestep = timestep[:, None].expand(-1, x[0, 0, :, ::2, ::2].numel())
        return self.pipe.transformer(hidden_states=x, timestep=timestep, encoder_hidden_states=cond.embeds.to(dev, dt),
                                     return_dict=False)[0]

    def _encode(self, prompts):
        embeds, _ = self.pipe.encode_prompt(prompt=prompts, do_classifier_free_guidance=False,
                                            max_sequence_length=self.max_sequence_length, device=self.device)
        return DiffusersCondition(embeds)


class LTXAdapter(DiffusersVideoAdapter):
    """LTXPipeline (LTX-Video text-to-video)."""

    def _compression(self):
        return int(self.pipe.vae_spatial_compression_ratio), int(self.pipe.vae_temporal_compression_ratio)

    def _patch(self):
        p = int(self.pipe.transformer_spatial_patch_size)
        return int(self.pipe.transformer_temporal_patch_size), p, p

    def _latent_channels(self) -> int:
        c = int(self.pipe.vae.config.latent_channels)
        pt, ph, pw = self._patch()
        if c * pt * ph * pw != int(self.pipe.transformer.config.in_channels):
            raise ValueError(f"LTXPipeline: the VAE's {c} latent channels packed in {pt}x{ph}x{pw} patches do not "
                             f"make the transformer's in_channels {self.pipe.transformer.config.in_channels}")
        return c

    def _latents_stats(self):
        vae = self.pipe.vae
        return vae.latents_mean.float().cpu(), vae.latents_std.float().cpu(), float(vae.config.scaling_factor)

    def _vae_decode(self, z):
        timestep = None
        if self.pipe.vae.config.timestep_conditioning:  # the pipeline's default decode_timestep 0: no decode noise
            timestep = torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
        return self.pipe.vae.decode(z, timestep, return_dict=False)[0]

    def _predict(self, x, t, cond):
        """x [B, C, F_latent, h, w], sigma [B] -> the velocity [B, C, F_latent, h, w] in the network's dtype; the
        transformer sees LTXPipeline's packed tokens [B, F_latent h w / patches, C x patch volume]."""
        from diffusers import LTXPipeline

        dev, dt = self.device, self.dtype
        _, _, f, h, w = x.shape
        pt, p, _ = self._patch()
        tokens = LTXPipeline._pack_latents(x.to(dev, dt), p, pt)
        spatial, temporal = self._compression()
        out = self.pipe.transformer(
            hidden_states=tokens, encoder_hidden_states=cond.embeds.to(dev, dt),
            timestep=t.to(dev).float() * self.num_train_timesteps, encoder_attention_mask=cond.mask.to(dev),
            num_frames=f, height=h, width=w, rope_interpolation_scale=(temporal / self.frame_rate, spatial, spatial),
            return_dict=False)[0]
        return LTXPipeline._unpack_latents(out, f // pt, h // p, w // p, p, pt)

    def _encode(self, prompts):
        embeds, mask, _, _ = self.pipe.encode_prompt(prompt=prompts, do_classifier_free_guidance=False,
                                                     max_sequence_length=self.max_sequence_length, device=self.device)
        return DiffusersCondition(embeds, mask=mask)
