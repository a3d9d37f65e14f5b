"""CLIP-family learned rewards on transformers, loaded from the published checkpoints (hub id or local path;
by default only a local path or the local hub cache is read; local_files_only=False lets transformers'
from_pretrained download models, on the user's explicit request; single checkpoint files (.pt/.pth) are never
downloaded here: fetch them with `huggingface-cli download REPO FILE`):

    clip_score  100 * cos(image, text) of CLIP ViT-L/14 (openai/clip-vit-large-patch14): CLIPScore (Hessel et
                al., 2021) as torchmetrics reports it, without its clamp at 0 (which would stop gradients).
    pickscore   PickScore_v1 (Kirstain et al., 2023; yuvalkirstain/PickScore_v1, a CLIP ViT-H/14 fine-tuned on
                Pick-a-Pic; processor laion/CLIP-ViT-H-14-laion2B-s32B-b79K): logit_scale.exp() * cos, as its
                reference code scores (about 18-24 for ordinary images).
    hps         HPSv2.1 (Wu et al., 2023; xswu/HPSv2, file HPS_v2.1_compressed.pt): an open_clip ViT-H/14 state
                dict converted to transformers' CLIPModel (converters.openclip_to_clip); score = cos(image,
                text), as HPSv2's img_score.py (about 0.25-0.35); images fitted by the longer side and padded.
    aesthetic   the LAION improved aesthetic predictor (Schuhmann, 2022; sac+logos+ava1-l14-linearMSE.pth): an MLP
                on the L2-normalised CLIP ViT-L/14 image embedding (about 1-10; text is not used).

All are differentiable: the preprocessing (resize of the shorter side with bicubic interpolation, centre
crop, the checkpoint's mean/std) is done in torch, so gradients reach the images (ReFL, DRaFT, AlignProp)."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from ..types import RewardOutput
from .base import REWARDS, Reward
from .converters import OPENAI_MEAN, OPENAI_STD, MLPHead, load_openclip_as_clip, resolve_file, torch_state_dict

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype '{name}' is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def preprocess(images: torch.Tensor, size: int, mean, std, fit: str = "crop") -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> [B, 3, size, size] normalised, differentiable. fit "crop" (CLIP's processor):
    the shorter side resized to `size`, centre crop; fit "pad" (HPSv2's ResizeMaxSize): the longer side resized
    to `size`, zero padding around. Bicubic, antialiased when shrinking (as PIL); then (x - mean) / std."""
    if fit not in ("crop", "pad"):
        raise ValueError(f"fit '{fit}' is not one of crop, pad")
    x = (images.float() + 1) / 2  # [B, 3, H, W] in [0, 1]
    h, w = x.shape[-2:]
    s = size / (min(h, w) if fit == "crop" else max(h, w))
    nh, nw = round(h * s), round(w * s)
    if fit == "crop":
        nh, nw = max(size, nh), max(size, nw)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=s < 1)
    if fit == "pad":
        ph, pw = size - nh, size - nw
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))  # black borders, as fill=0
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top:top + size, left:left + size]  # [B, 3, size, size]
    mean = torch.tensor(mean, device=x.device, dtype=x.dtype)[:, None, None]
    std = torch.tensor(std, device=x.device, dtype=x.dtype)[:, None, None]
    return (x - mean) / std


def processor_stats(spec: str | None, default_size: int):
    """(image size, mean, std) from a checkpoint's preprocessor_config.json; CLIP's defaults if it has none."""
    if spec is not None:
        try:
            cfg = json.loads(resolve_file(spec, "preprocessor_config.json").read_text())
        except FileNotFoundError:
            cfg = None
        if cfg:
            crop = cfg.get("crop_size", default_size)
            size = crop.get("height", default_size) if isinstance(crop, dict) else int(crop)
            return size, tuple(cfg.get("image_mean", OPENAI_MEAN)), tuple(cfg.get("image_std", OPENAI_STD))
    return default_size, OPENAI_MEAN, OPENAI_STD


def _from_pretrained(cls, spec: str, local_files_only: bool, what: str, **kw):
    """cls.from_pretrained with its many-line hub errors folded into one line."""
    try:
        return cls.from_pretrained(spec, local_files_only=local_files_only, **kw)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"could not load the {what} from '{spec}' (a hub id or a local folder; "
                                f"local_files_only={local_files_only}): {str(e).splitlines()[0]}") from None


class CLIPReward(Reward):
    """scale(logit_scale) * cos(image embedding, text embedding) of a transformers CLIPModel.
    mode: "cosine100" (100 cos), "logit_scale" (exp(logit_scale) cos), "cosine" (cos)."""

    differentiable = True
    needs_text = True

    def __init__(self, model, tokenizer, size: int, mean=OPENAI_MEAN, std=OPENAI_STD, mode: str = "cosine100",
                 name: str = "clip", fit: str = "crop"):
        if mode not in ("cosine100", "logit_scale", "cosine"):
            raise ValueError(f"CLIP reward mode '{mode}' is not one of cosine100, logit_scale, cosine")
        self.model = model.eval().requires_grad_(False)  # gradients go to the images only
        self.tokenizer, self.size, self.mean, self.std, self.mode, self.name = tokenizer, size, mean, std, mode, name
        self.fit = fit
        scale = {"cosine100": 100.0, "cosine": 1.0, "logit_scale": float(model.logit_scale.exp())}[mode]
        self.value_range = (-scale, scale)
        self.device = next(model.parameters()).device

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        x = preprocess(images.to(self.device), self.size, self.mean, self.std, self.fit).to(dtype)  # [B, 3, S, S]
        pooled = self.model.vision_model(pixel_values=x).pooler_output  # [B, D] post-LN class token
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)  # [B, P]

    def text_embeds(self, prompts: list[str]) -> torch.Tensor:
        n = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=n, return_tensors="pt")
        out = self.model.text_model(input_ids=tok.input_ids.to(self.device),
                                    attention_mask=tok.attention_mask.to(self.device))
        return F.normalize(self.model.text_projection(out.pooler_output).float(), dim=-1)  # [B, P]

    def __call__(self, images, prompts, metadata=None) -> RewardOutput:
        cos = (self.image_embeds(images) * self.text_embeds(prompts)).sum(-1)  # [B]
        scale = {"cosine100": 100.0, "cosine": 1.0}.get(self.mode) or self.model.logit_scale.exp().float()
        return RewardOutput(scale * cos, {"cosine": cos.detach()})


def load_clip_reward(model: str, processor: str | None, mode: str, name: str, local_files_only: bool, dtype: str):
    from transformers import AutoTokenizer, CLIPModel

    clip = _from_pretrained(CLIPModel, model, local_files_only, f"{name} CLIP model", dtype=_dtype(dtype))
    tok = _from_pretrained(AutoTokenizer, processor or model, local_files_only, f"{name} tokenizer")
    size, mean, std = processor_stats(processor or model, clip.config.vision_config.image_size)
    return CLIPReward(clip, tok, size, mean, std, mode, name)


@REWARDS.register("clip_score", "100 x cosine(image, text) of CLIP ViT-L/14 (openai/clip-vit-large-patch14), "
                  "differentiable; options: model, local_files_only, dtype")
def _clip_score(model: str = "openai/clip-vit-large-patch14", local_files_only: bool = True, dtype: str = "float32"):
    return load_clip_reward(model, None, "cosine100", "clip_score", local_files_only, dtype)


@REWARDS.register("pickscore", "PickScore_v1 (yuvalkirstain/PickScore_v1): exp(logit_scale) x cosine, differentiable; "
                  "options: model, processor, local_files_only, dtype")
def _pickscore(model: str = "yuvalkirstain/PickScore_v1", processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
               local_files_only: bool = True, dtype: str = "float32"):
    return load_clip_reward(model, processor, "logit_scale", "pickscore", local_files_only, dtype)


@REWARDS.register("hps", "HPSv2.1 (xswu/HPSv2 HPS_v2.1_compressed.pt, open_clip ViT-H/14 converted to CLIPModel): "
                  "cosine(image, text), differentiable; options: checkpoint, filename, tokenizer, local_files_only")
def _hps(checkpoint: str = "xswu/HPSv2", filename: str = "HPS_v2.1_compressed.pt",
         tokenizer: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", local_files_only: bool = True,
         dtype: str = "float32", hidden_act: str = "gelu", vision_head_width: int = 80, text_head_width: int = 64):
    from transformers import AutoTokenizer

    sd = torch_state_dict(resolve_file(checkpoint, filename), key="state_dict")
    tok = _from_pretrained(AutoTokenizer, tokenizer, local_files_only, "hps tokenizer")
    clip = load_openclip_as_clip(sd, hidden_act=hidden_act, vision_head_width=vision_head_width,
                                 text_head_width=text_head_width, eos_token_id=tok.eos_token_id).to(_dtype(dtype))
    # HPSv2's evaluation transform: the longer side to 224 px (bicubic), zero padding, OpenAI's mean/std
    return CLIPReward(clip, tok, clip.config.vision_config.image_size, OPENAI_MEAN, OPENAI_STD, "cosine", "hps", "pad")


class AestheticReward(Reward):
    """LAION improved aesthetic predictor: MLPHead(normalise(CLIP ViT-L/14 image embedding)), about 1-10."""

    name = "aesthetic"
    differentiable = True
    needs_text = False
    value_range = (0.0, 10.0)

    def __init__(self, vision, head: MLPHead, size: int, mean=OPENAI_MEAN, std=OPENAI_STD):
        self.vision, self.head = vision.eval().requires_grad_(False), head.eval().requires_grad_(False)
        self.size, self.mean, self.std = size, mean, std
        self.device = next(vision.parameters()).device

    def __call__(self, images, prompts, metadata=None) -> RewardOutput:
        dtype = next(self.vision.parameters()).dtype
        x = preprocess(images.to(self.device), self.size, self.mean, self.std).to(dtype)  # [B, 3, S, S]
        emb = F.normalize(self.vision(pixel_values=x).image_embeds.float(), dim=-1)  # [B, 768]
        return RewardOutput(self.head(emb))


@REWARDS.register("aesthetic", "LAION aesthetic predictor (sac+logos+ava1-l14-linearMSE.pth) on CLIP ViT-L/14 image "
                  "embeddings, differentiable; options: clip, predictor, filename, local_files_only")
def _aesthetic(clip: str = "openai/clip-vit-large-patch14", predictor: str = "camenduru/improved-aesthetic-predictor",
               filename: str = "sac+logos+ava1-l14-linearMSE.pth", local_files_only: bool = True,
               dtype: str = "float32"):
    from transformers import CLIPConfig, CLIPVisionModelWithProjection

    head = MLPHead.from_state_dict(torch_state_dict(resolve_file(predictor, filename)),
                                   f"aesthetic predictor {filename}")
    # the vision tower and its projection only; the projection width lives in the full CLIPConfig
    cfg = _from_pretrained(CLIPConfig, clip, local_files_only, "aesthetic CLIP config")
    vcfg = cfg.vision_config
    vcfg.projection_dim = cfg.projection_dim
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the text tower's keys are skipped on purpose: no load report about them
    try:
        vision = _from_pretrained(CLIPVisionModelWithProjection, clip, local_files_only, "aesthetic CLIP vision model",
                                  config=vcfg, dtype=_dtype(dtype))
    finally:
        hf_logging.set_verbosity(level)
    size, mean, std = processor_stats(clip, vision.config.image_size)
    return AestheticReward(vision, head, size, mean, std)
