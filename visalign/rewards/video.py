"""Video rewards. A video reaches a reward as float [B, F, 3, H, W] in [-1, 1], its F frames in order (images stay
[B, 3, H, W]); a reward that reads videos has `video = True`, and the input check (base.check_input) then accepts
videos and refuses images. `combine` takes video rewards as it takes image rewards (all parts alike).

    frame_consistency  mean cosine similarity of consecutive frames' features (VBench's subject / background
                       consistency: DINO / CLIP features, similarity to the first and to the previous frame); in
                       [0, 1]. Features: the blurred frame itself (pixels), or a CLIP vision model's embedding.
    motion_smoothness  1 / (1 + mean |flow_{i+1} - flow_i| / scale): how little the optical flow (OpenCV
                       Farneback) changes from one frame pair to the next; in (0, 1], 1 for constant velocity.
    per_frame          any image reward applied to every frame (or the first / last), its scores reduced over
                       the frames by mean or min.

The learned VideoAlign-style reward (`video_reward`) lives in video_reward.py.

Stillness: frame_consistency and motion_smoothness both give a still video their best score (1): alone, either
one pays a generator to stop moving. They are meant for `combine`, beside a reward that asks for the motion the
prompt describes (a motion verifier, VBench's dynamic degree, a learned motion-quality score)."""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..config import NonNegativeFloat, PositiveFloat, PositiveInt
from ..images import tensor_to_images
from ..registry import split_spec
from ..types import RewardOutput
from .base import REWARDS, Reward, load_reward

FEATURES = ("pixels", "clip")
REFERENCES = ("previous", "first", "both")
REDUCES = ("mean", "min")
FRAMES = ("all", "first", "last")


def _choice(what: str, value: str, accepted: tuple[str, ...]) -> str:
    if value not in accepted:
        raise ValueError(f"{what}='{value}' is not one of {' | '.join(accepted)}")
    return value


# ---------------------------------------------------------------------------------------------- frame_consistency


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """[N, C, H, W] blurred by a separable Gaussian of std `sigma` px (radius 2 sigma, reflected borders; radius
    clipped to the frame); differentiable. sigma 0 returns x."""
    radius = min(math.ceil(2 * sigma), x.shape[-2] - 1, x.shape[-1] - 1)
    if sigma <= 0 or radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()  # [2r + 1]
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along W
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along H


def consecutive_similarity(feats: torch.Tensor, exact: torch.Tensor | None = None):
    """feats [B, F, D] -> (similarity to the previous frame, to the first frame), each [B, F-1]: cosine clamped at 0
    (VBench's max(0, cos)). `exact` [B, F] (optional, raw features) marks pairs whose frames are identical: they
    score 1 whatever their features (a flat mid-grey frame has no direction to compare)."""
    unit = F.normalize(feats.float(), dim=-1, eps=1e-8)
    prev = (unit[:, 1:] * unit[:, :-1]).sum(-1).clamp_min(0)  # [B, F-1]
    first = (unit[:, 1:] * unit[:, :1]).sum(-1).clamp_min(0)
    if exact is not None:
        same_prev = (exact[:, 1:] - exact[:, :-1]).abs().amax(-1) == 0
        same_first = (exact[:, 1:] - exact[:, :1]).abs().amax(-1) == 0
        prev = torch.where(same_prev, torch.ones_like(prev), prev)
        first = torch.where(same_first, torch.ones_like(first), first)
    return prev, first


class FrameConsistency(Reward):
    """Frame-to-frame consistency, in [0, 1]: for each frame after the first, the cosine similarity of its features
    to the previous frame's (`reference: previous`), to the first frame's (`first`), or their average (`both`,
    VBench's subject and background consistency, which use DINO and CLIP features), clamped at 0 and averaged over
    the frames. A one-frame video scores 1.

    features `pixels`: the frame itself, blurred by a Gaussian of std `blur` px (small shifts and noise matter
    less), as one vector around mid-grey (pixel 0 in [-1, 1]), so a brightness flicker lowers the score as a
    content change does; two identical frames score 1 even when flat grey. Differentiable; no model.
    features `clip`: the L2-normalised image embedding of a CLIP vision model (transformers
    CLIPVisionModelWithProjection, or CLIPVisionModel's pooled output), preprocessed in torch (differentiable).

    It alone rewards a still video (every frame the same scores 1): it is meant for `combine`, beside a reward
    that asks for motion."""

    name = "frame_consistency"
    video = True
    differentiable = True
    needs_text = False
    value_range = (0.0, 1.0)

    def __init__(self, features: str = "pixels", reference: str = "both", blur: float = 1.0, encoder=None,
                 batch_size: int = 32):
        self.features = _choice("frame_consistency: features", features, FEATURES)
        self.reference = _choice("frame_consistency: reference", reference, REFERENCES)
        if features == "clip" and encoder is None:
            raise ValueError("frame_consistency: features='clip' needs a CLIP vision encoder (option model)")
        self.blur, self.encoder, self.batch_size = float(blur), encoder, batch_size
        if encoder is not None:
            self.device = encoder.device

    def frame_features(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, F, 3, H, W] -> (features [B, F, D], the raw frames [B, F, 3HW] for the identical-frame rule or None)."""
        b, f = videos.shape[:2]
        frames = videos.flatten(0, 1)  # [B*F, 3, H, W]
        if self.features == "pixels":
            feats = gaussian_blur(frames.float(), self.blur)
            return feats.reshape(b, f, -1), frames.detach().reshape(b, f, -1)
        embeds = [self.encoder(frames[i:i + self.batch_size]) for i in range(0, len(frames), self.batch_size)]
        return torch.cat(embeds).reshape(b, f, -1), None

    def __call__(self, videos, prompts, metadata=None) -> RewardOutput:
        b, f = videos.shape[:2]
        if f < 2:
            ones = torch.ones(b)
            return RewardOutput(ones, {"to_previous": ones, "to_first": ones})
        feats, exact = self.frame_features(videos)
        prev, first = consecutive_similarity(feats, exact)  # [B, F-1] each
        per_frame = {"previous": prev, "first": first, "both": (prev + first) / 2}[self.reference]
        details = {"to_previous": prev.mean(1).detach(), "to_first": first.mean(1).detach()}
        return RewardOutput(per_frame.mean(1), details)


class ClipFrameEncoder(torch.nn.Module):
    """Frames [N, 3, H, W] in [-1, 1] -> CLIP image embeddings [N, D] (the projection when the model has one, else
    the pooled output), preprocessed as the CLIP rewards do (clip.preprocess: resize, centre crop, mean / std)."""

    def __init__(self, vision, size: int, mean, std):
        super().__init__()
        self.vision, self.size, self.mean, self.std = vision.eval().requires_grad_(False), size, mean, std

    @property
    def device(self) -> torch.device:
        return next(self.vision.parameters()).device

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        from .clip import preprocess

        dtype = next(self.vision.parameters()).dtype
        x = preprocess(frames.to(self.device), self.size, self.mean, self.std).to(dtype)  # [N, 3, S, S]
        out = self.vision(pixel_values=x)
        emb = getattr(out, "image_embeds", None)
        return (out.pooler_output if emb is None else emb).float()


def load_clip_frame_encoder(model: str, local_files_only: bool, dtype: str) -> ClipFrameEncoder:
    """A CLIP vision tower (with its projection when the checkpoint has one) from a full CLIPModel or a vision-only
    checkpoint; only a local path or the local hub cache unless local_files_only=False."""
    from transformers import AutoConfig, CLIPConfig, CLIPVisionModel, CLIPVisionModelWithProjection
    from transformers.utils import logging as hf_logging

    from .clip import _dtype, _from_pretrained, processor_stats

    cfg = _from_pretrained(AutoConfig, model, local_files_only, "frame_consistency CLIP config")
    if isinstance(cfg, CLIPConfig):  # the vision tower of a full CLIP: its projection width is the full config's
        vcfg = cfg.vision_config
        vcfg.projection_dim = cfg.projection_dim
        cls = CLIPVisionModelWithProjection
    else:  # a vision-only checkpoint: with its projection only when it was saved with one (else it would be random)
        projected = "CLIPVisionModelWithProjection" in (getattr(cfg, "architectures", None) or [])
        vcfg, cls = cfg, CLIPVisionModelWithProjection if projected else CLIPVisionModel
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the text tower's keys are skipped on purpose: no load report about them
    try:
        vision = _from_pretrained(cls, model, local_files_only, "frame_consistency CLIP vision model", config=vcfg,
                                  dtype=_dtype(dtype))
    finally:
        hf_logging.set_verbosity(level)
    size, mean, std = processor_stats(model, vision.config.image_size)
    return ClipFrameEncoder(vision, size, mean, std)


@REWARDS.register("frame_consistency", "mean cosine similarity of each frame's features to the previous and/or first "
                  "frame's (VBench subject/background consistency), in [0, 1]; a still video scores 1, so use it in "
                  "combine; options: features pixels|clip, reference previous|first|both, blur, model")
def _frame_consistency(features: str = "pixels", reference: str = "both", blur: NonNegativeFloat = 1.0,
                       model: str = "openai/clip-vit-base-patch32", local_files_only: bool = True,
                       dtype: str = "float32", batch_size: PositiveInt = 32):
    _choice("frame_consistency: features", features, FEATURES)
    encoder = load_clip_frame_encoder(model, local_files_only, dtype) if features == "clip" else None
    return FrameConsistency(features, reference, blur, encoder, batch_size)


# ---------------------------------------------------------------------------------------------- motion_smoothness

FARNEBACK = {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5, "poly_sigma": 1.2, "flags": 0}


def farneback_flows(frames: np.ndarray, size: int = 256) -> tuple[np.ndarray, float]:
    """uint8 [F, H, W, 3] -> (optical flows between consecutive frames [F-1, h, w, 2] in pixels of the working frame,
    the working frame's longer side). Frames whose longer side exceeds `size` are shrunk to it first (INTER_AREA)."""
    h, w = frames.shape[1:3]
    s = min(1.0, size / max(h, w))
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    if s < 1:
        dims = (max(1, round(w * s)), max(1, round(h * s)))
        gray = [cv2.resize(g, dims, interpolation=cv2.INTER_AREA) for g in gray]
    flows = [cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK) for a, b in itertools.pairwise(gray)]
    return np.stack(flows), max(gray[0].shape)


class MotionSmoothness(Reward):
    """Smoothness of motion, in (0, 1]: 1 / (1 + a / scale), where a is the mean over pixels and frames of
    |flow_{i+1} - flow_i|, the change of the dense optical flow (OpenCV Farneback, on grey frames) from one pair of
    consecutive frames to the next, in pixels of a frame whose longer side is `size` (flows of smaller or larger
    frames are rescaled to it, so the score does not depend on the resolution). An object moving at constant
    velocity has a = 0 and scores near 1; one that jitters or jumps back and forth changes its flow every frame
    and scores lower; `scale` is the acceleration (px / frame^2) that scores 0.5. Videos of fewer than 3 frames
    score 1 (no acceleration to measure).

    A still video scores 1: nothing moves, so nothing changes speed. It alone rewards stillness: combine it with a
    reward that asks for motion.

    VBench's motion smoothness interpolates every other frame with a video frame interpolation network (AMT) and
    scores how close the interpolation is to the real frame. This is the flow-based variant: constant-velocity
    motion is what both reward (interpolation assumes it; here it is a zero flow change), and it needs no network
    weights and runs on CPU. Not differentiable (OpenCV on 8-bit frames)."""

    name = "motion_smoothness"
    video = True
    differentiable = False
    needs_text = False
    value_range = (0.0, 1.0)

    def __init__(self, scale: float = 1.0, size: int = 256):
        if not scale > 0 or size < 8:
            raise ValueError(f"motion_smoothness: scale must be > 0 and size >= 8, got scale={scale}, size={size}")
        self.scale, self.size = float(scale), int(size)

    def __call__(self, videos, prompts, metadata=None) -> RewardOutput:
        b, f = videos.shape[:2]
        accel, speed = torch.zeros(b), torch.zeros(b)
        if f >= 2:
            for i, frames in enumerate(tensor_to_images(videos)):  # uint8 [F, H, W, 3]
                flows, side = farneback_flows(frames, self.size)
                flows = flows * (self.size / side)  # px of a `size`-px frame
                speed[i] = float(np.linalg.norm(flows, axis=-1).mean())
                if f >= 3:
                    accel[i] = float(np.linalg.norm(np.diff(flows, axis=0), axis=-1).mean())
        return RewardOutput(1 / (1 + accel / self.scale), {"acceleration": accel, "speed": speed})


@REWARDS.register("motion_smoothness", "1 / (1 + mean |flow change| / scale) of OpenCV Farneback optical flow between "
                  "consecutive frames, in (0, 1]: constant velocity scores ~1, jitter lower, a still video 1; "
                  "options: scale, size")
def _motion_smoothness(scale: PositiveFloat = 1.0, size: PositiveInt = 256):
    return MotionSmoothness(scale, size)


# ---------------------------------------------------------------------------------------------------- per_frame


def _repeat_metadata(metadata: dict | None, frames: int) -> dict | None:
    """The trainer's grouping for the B * frames images: the frames of one video keep its group."""
    if not metadata:
        return metadata
    meta = dict(metadata)
    if meta.get("group_ids") is not None:
        meta["group_ids"] = torch.as_tensor(meta["group_ids"]).repeat_interleave(frames)
    if meta.get("group_size") is not None:
        meta["group_size"] = int(meta["group_size"]) * frames
    return meta


class PerFrame(Reward):
    """An image reward lifted to videos: the inner reward scores every frame (`frames: all`, or only the first or
    the last), with the video's prompt, and the frame scores are reduced to one per video by `reduce` (mean, or
    min: the worst frame). Every [B * frames] tensor detail of the inner reward is reduced the same way and kept
    under its name. Differentiable when the inner reward is."""

    name = "per_frame"
    video = True

    def __init__(self, inner: Reward, reduce: str = "mean", frames: str = "all"):
        if not isinstance(inner, Reward):
            raise TypeError(f"per_frame: the inner reward is a {type(inner).__name__}, not a visalign.rewards.Reward")
        if getattr(inner, "video", False):
            raise ValueError(f"per_frame: reward '{inner.name}' already judges videos; per_frame lifts image rewards")
        self.inner = inner
        self.reduce = _choice("per_frame: reduce", reduce, REDUCES)
        self.frames = _choice("per_frame: frames", frames, FRAMES)
        self.differentiable, self.needs_text = inner.differentiable, inner.needs_text
        self.value_range, self.device = inner.value_range, inner.device

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1) if self.reduce == "mean" else x.amin(1)

    def __call__(self, videos, prompts, metadata=None) -> RewardOutput:
        b = videos.shape[0]
        x = {"all": videos, "first": videos[:, :1], "last": videos[:, -1:]}[self.frames]  # [B, k, 3, H, W]
        k = x.shape[1]
        out = self.inner(x.flatten(0, 1), [p for p in prompts for _ in range(k)], _repeat_metadata(metadata, k))
        scores = out.scores.float().reshape(b, k)  # [B, k]
        details = {}
        for key, v in out.details.items():
            if isinstance(v, torch.Tensor) and v.shape == (b * k,):
                details[key] = self._reduce(v.float().reshape(b, k))
        return RewardOutput(self._reduce(scores), details)


def load_inner_reward(spec: str, options: dict | None) -> Reward:
    """A reward spec 'name?key=value&...' (load_reward_spec's syntax) and extra options (a mapping) -> the reward."""
    if not isinstance(spec, str) or not spec:
        raise ValueError("per_frame needs option reward: an image reward spec, e.g. compressibility or "
                         "clip_score?model=PATH")
    if options is not None and not isinstance(options, dict):
        raise ValueError(f"per_frame: options must be a mapping of the inner reward's options, got {options!r}")
    name, spec_options = split_spec(spec)
    twice = sorted(set(spec_options) & set(options or {}))
    if twice:
        raise ValueError(f"per_frame: option(s) {twice} given both in reward='{spec}' and in options; give each once")
    return load_reward(name, **spec_options, **(options or {}))


@REWARDS.register("per_frame", "an image reward applied to every frame of a video, reduced by mean or min over the "
                  "frames; options: reward (a spec, e.g. clip_score?model=PATH), options, reduce mean|min, "
                  "frames all|first|last")
def _per_frame(reward: str = "", options: dict | None = None, reduce: str = "mean", frames: str = "all"):
    return PerFrame(load_inner_reward(reward, options), reduce, frames)
