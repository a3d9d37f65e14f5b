"""`video_reward`: a learned video reward in the style of VideoAlign's VideoReward (Liu et al., 2025, "Improving
Video Generation with Human Feedback", arXiv 2501.13918; github.com/KwaiVGI/VideoAlign): a Qwen2-VL
vision-language backbone reads the video and a text built from the prompt; the final hidden state of the last
token (or of one special token per dimension) goes through a linear head to the visual quality (VQ), motion
quality (MQ) and text alignment (TA) scores, trained Bradley-Terry on human preference pairs. The reward returns
one of them or `overall` = VQ + MQ + TA (each first standardised with the checkpoint's mean / std when it gives
them), as VideoAlign's inference reports.

The folder `model` (a local path; nothing is downloaded) holds:

    config.json, model*.safetensors   a transformers Qwen2-VL (or Qwen2.5-VL) checkpoint, as save_pretrained
                                      writes it; loaded with AutoModel (the backbone without its LM head)
    tokenizer files                   its tokenizer with a chat template (tokenizer_config.json or
                                      chat_template.jinja), and the special tokens when pooling is "special"
    preprocessor_config.json          the processor's numbers: patch_size, temporal_patch_size, merge_size,
      (or video_preprocessor_config)  image_mean, image_std, min_pixels / max_pixels (or size: shortest_edge /
                                      longest_edge), as Qwen2-VL's processor saves them
    reward_head.safetensors           "weight" [K, D] (and optionally "bias" [K]): VideoAlign's rm_head,
                                      nn.Linear(D, K, bias=False); read with safetensors (no pickle)
    reward_config.json (optional)     {"dims": ["VQ", "MQ", "TA"], "pooling": "last" | "special",
                                       "special_tokens": ["<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"],
                                       "template": "text with {prompt}", "mean": {"VQ": m, ...},
                                       "std": {"VQ": s, ...}, "fps": 2.0, "max_pixels": N}
                                      defaults: those dims, "last", "{prompt}", mean 0 / std 1, fps 2, the
                                      processor's max_pixels

Pooling "last": the head (K rows, one per dim) reads the hidden state of the last (non-padding) token, the
model's generation prompt. Pooling "special" (the released VideoReward): the text holds one special token per
dim, and the head reads each one's hidden state; a head of one row is shared by the dims (VideoAlign's
output_dim 1), a head of K rows gives dim k from row k at token k (output_dim 3, its diagonal).

The released checkpoint (huggingface.co/KwaiVGI/VideoReward) is laid out differently, as VideoAlign's
train_reward.py / utils.py / inference.py write and read it: model_config.json (data_config: fps 2.0,
max_frame_pixels, eval_dim [VQ, MQ, TA], prompt_template_type "detailed_special"; model_config:
model_name_or_path Qwen/Qwen2-VL-2B-Instruct, output_dim 1, use_special_tokens true, reward_token "special";
peft_lora_config: LoRA on the language model's linear layers; inference_config: VQ/MQ/TA mean and std) and
checkpoint-N/ with adapter_model.safetensors (the LoRA) and non_lora_state_dict.pth (rm_head, the resized token
embeddings and the other trained weights, a pickle). This module does not read that layout: convert it once,
with VideoAlign's code (its VideoVLMRewardInference loads it): merge the LoRA (peft's merge_and_unload), then
save_pretrained the Qwen2-VL model and the processor (with the three special tokens) into a folder, write
model.rm_head.weight as "weight" into reward_head.safetensors, and reward_config.json with pooling "special",
the special tokens, the template (its DETAILED_PROMPT_WITH_SPECIAL_TOKEN, {text_prompt} renamed {prompt}), the
inference_config means / stds, fps and max_frame_pixels as max_pixels. Not run against the released weights
here (no hub access); the tests build a tiny random Qwen2-VL in this layout.

The video is prepared in torch as Qwen2-VL's video processor does (transformers' Qwen2VLVideoProcessor needs
torchvision, which visalign does not depend on): each frame resized (bicubic, antialiased when shrinking) to the
processor's smart_resize size (sides multiples of patch_size * merge_size, the pixel count within [min_pixels,
max_pixels]), normalised with its mean / std, the frame count padded to a multiple of temporal_patch_size with
the last frame, cut into patches in the processor's order; the chat template's one video placeholder is
expanded to the video's token count. So the reward is differentiable: gradients reach the frames."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import NonNegativeInt, PositiveInt
from ..types import RewardOutput
from .base import REWARDS, Reward

DIMS = ("VQ", "MQ", "TA")
SPECIAL_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
HEAD_FILE, CONFIG_FILE = "reward_head.safetensors", "reward_config.json"
PROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # Qwen2-VL's


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's frame size: sides multiples of `factor`, the aspect ratio kept, the pixel count in [min_pixels,
    max_pixels] (the rule of transformers' and qwen-vl-utils' smart_resize)."""
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


class VideoPatcher:
    """Videos [B, F, 3, H, W] in [-1, 1] -> Qwen2-VL's (pixel_values_videos [sum of patches, 3 * T * P * P],
    video_grid_thw [B, 3]), in torch, with the numbers of a Qwen2-VL processor config."""

    def __init__(self, patch_size: int = 14, temporal_patch_size: int = 2, merge_size: int = 2,
                 min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280, mean=CLIP_MEAN, std=CLIP_STD):
        self.patch, self.temporal, self.merge = int(patch_size), int(temporal_patch_size), int(merge_size)
        self.min_pixels, self.max_pixels, self.mean, self.std = int(min_pixels), int(max_pixels), mean, std

    @classmethod
    def from_config(cls, cfg: dict, max_pixels: int = 0) -> VideoPatcher:
        size = cfg.get("size") or {}
        lo = cfg.get("min_pixels", size.get("shortest_edge", 56 * 56))
        hi = max_pixels or cfg.get("max_pixels", size.get("longest_edge", 28 * 28 * 1280))
        return cls(cfg.get("patch_size", 14), cfg.get("temporal_patch_size", 2), cfg.get("merge_size", 2), lo, hi,
                   tuple(cfg.get("image_mean", CLIP_MEAN)), tuple(cfg.get("image_std", CLIP_STD)))

    def tokens(self, grid_thw: torch.Tensor) -> list[int]:
        """The number of video placeholder tokens of each video: its patches after the spatial merge."""
        return (grid_thw.prod(-1) // self.merge ** 2).tolist()

    def __call__(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, f, c, h, w = videos.shape
        rh, rw = smart_resize(h, w, self.patch * self.merge, self.min_pixels, self.max_pixels)
        x = (videos.float().flatten(0, 1) + 1) / 2  # [B*F, 3, H, W] in [0, 1]
        if (rh, rw) != (h, w):
            x = F.interpolate(x, size=(rh, rw), mode="bicubic", align_corners=False, antialias=rh * rw < h * w)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = ((x - mean) / std).view(b, f, c, rh, rw)
        if pad := -f % self.temporal:  # the last frame repeated, as the processor pads
            x = torch.cat([x, x[:, -1:].expand(-1, pad, -1, -1, -1)], dim=1)
        t, gh, gw, m, p = x.shape[1] // self.temporal, rh // self.patch, rw // self.patch, self.merge, self.patch
        x = x.reshape(b, t, self.temporal, c, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)  # Qwen2VLVideoProcessor.patchify's order
        patches = x.reshape(b * t * gh * gw, c * self.temporal * p * p)
        return patches, torch.tensor([[t, gh, gw]] * b, dtype=torch.long)


class VideoReward(Reward):
    """A Qwen2-VL backbone, a linear head on the pooled hidden state -> per-dim scores (module docstring)."""

    name = "video_reward"
    video = True
    differentiable = True
    needs_text = True
    value_range = (-math.inf, math.inf)

    def __init__(self, backbone, head: torch.nn.Linear, tokenizer, patcher: VideoPatcher, dims=DIMS,
                 pooling: str = "last", special_tokens=SPECIAL_TOKENS, template: str = "{prompt}", mean=None,
                 std=None, score: str = "overall", frames: int = 0, fps: float = 2.0, batch_size: int = 1):
        self.dims = tuple(dims)
        names = ("overall",) + tuple(d.lower() for d in self.dims)
        if score not in names:
            raise ValueError(f"video_reward: score='{score}' is not one of {' | '.join(names)}")
        if pooling not in ("last", "special"):
            raise ValueError(f"video_reward: pooling '{pooling}' is not one of last | special")
        k = head.weight.shape[0]
        if k != len(self.dims) and not (pooling == "special" and k == 1):
            shared = " (or 1, shared by the special tokens)" if pooling == "special" else ""
            raise ValueError(f"video_reward: the head has {k} rows for dims {list(self.dims)}; expected "
                             f"{len(self.dims)}{shared}")
        self.backbone, self.head = backbone.eval().requires_grad_(False), head.eval().requires_grad_(False)
        self.tokenizer, self.patcher, self.pooling, self.template = tokenizer, patcher, pooling, template
        self.score, self.frames, self.fps, self.batch_size = score, frames, fps, batch_size
        self.mean = torch.tensor([float((mean or {}).get(d, 0.0)) for d in self.dims])
        self.std = torch.tensor([float((std or {}).get(d, 1.0)) for d in self.dims])
        cfg = backbone.config
        self.video_token_id = cfg.video_token_id
        self.video_token = tokenizer.convert_ids_to_tokens(self.video_token_id)
        if tokenizer.convert_tokens_to_ids(self.video_token) != self.video_token_id:
            raise ValueError(f"video_reward: the tokenizer has no token for the model's video_token_id "
                             f"{self.video_token_id}")
        self.special_ids = []
        if pooling == "special":
            if len(special_tokens) != len(self.dims):
                raise ValueError(f"video_reward: {len(special_tokens)} special tokens for {len(self.dims)} dims")
            self.special_ids = [tokenizer.convert_tokens_to_ids(t) for t in special_tokens]
            if any(i is None or i == tokenizer.unk_token_id for i in self.special_ids):
                raise ValueError(f"video_reward: the tokenizer lacks the special tokens {list(special_tokens)}")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"  # as VideoAlign pads
        params = inspect.signature(backbone.forward).parameters
        self._type_ids = "mm_token_type_ids" in params  # transformers 5: multimodal RoPE needs the token types
        self._seconds = "second_per_grid_ts" in params  # Qwen2.5-VL: the time a temporal patch spans
        self.device = next(backbone.parameters()).device

    def text(self, prompt: str, n_tokens: int) -> str:
        question = self.template.replace("{prompt}", prompt)
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if text.count(self.video_token) != 1:
            raise ValueError(f"video_reward: the chat template must put one {self.video_token} for a video, got "
                             f"{text.count(self.video_token)}")
        return text.replace(self.video_token, self.video_token * n_tokens)

    def _pooled(self, hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden [b, L, D] -> raw scores [b, K]."""
        if self.pooling == "last":
            last = mask.long().sum(1) - 1  # right padding: the last real token
            return self.head(hidden[torch.arange(len(hidden)), last].float())  # [b, K]
        rows = []
        for k, tid in enumerate(self.special_ids):
            where = ids == tid  # [b, L]
            if not bool((where.sum(1) == 1).all()):
                raise ValueError(f"video_reward: each text must hold special token {tid} once; the template misses it")
            h = hidden[where].float()  # [b, D]
            out = self.head(h)  # [b, K]
            rows.append(out[:, k] if out.shape[1] > 1 else out[:, 0])
        return torch.stack(rows, 1)

    def _score(self, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        pixels, grid = self.patcher(videos)
        texts = [self.text(p, n) for p, n in zip(prompts, self.patcher.tokens(grid))]
        tok = self.tokenizer(texts, padding=True, return_tensors="pt")
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        dtype = next(self.backbone.parameters()).dtype
        kwargs = {"input_ids": ids, "attention_mask": mask, "pixel_values_videos": pixels.to(self.device, dtype),
                  "video_grid_thw": grid.to(self.device)}
        if self._type_ids:
            kwargs["mm_token_type_ids"] = (ids == self.video_token_id).int() * 2  # text 0, image 1, video 2
        if self._seconds:
            kwargs["second_per_grid_ts"] = torch.full((len(ids),), self.patcher.temporal / self.fps)
        hidden = self.backbone(**kwargs).last_hidden_state  # [b, L, D]
        return self._pooled(hidden, ids, mask)

    def __call__(self, videos, prompts, metadata=None) -> RewardOutput:
        f = videos.shape[1]
        if self.frames and f > self.frames:  # uniform subsampling, the ends kept
            videos = videos[:, torch.linspace(0, f - 1, self.frames).round().long()]
        raw = torch.cat([self._score(videos[i:i + self.batch_size], prompts[i:i + self.batch_size])
                         for i in range(0, len(videos), self.batch_size)]).cpu()  # [B, K]
        z = (raw - self.mean) / self.std
        details = {d.lower(): z[:, k].detach() for k, d in enumerate(self.dims)}
        overall = z.sum(1)
        details["overall"] = overall.detach()
        return RewardOutput(overall if self.score == "overall" else z[:, self.dims.index(self.score.upper())],
                            details)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"video_reward: {path} is not valid JSON: {e}") from None


def load_head(folder: Path) -> torch.nn.Linear:
    """reward_head.safetensors ("weight" [K, D], optional "bias" [K]; "rm_head.weight" also read) -> nn.Linear."""
    from safetensors.torch import load_file

    path = folder / HEAD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"video_reward: no {HEAD_FILE} in {folder}: the head's weights, 'weight' [K, D] "
                                f"(see visalign/rewards/video_reward.py)")
    sd = {k.removeprefix("rm_head."): v for k, v in load_file(str(path)).items()}
    if "weight" not in sd or sd["weight"].ndim != 2 or set(sd) - {"weight", "bias"}:
        raise ValueError(f"video_reward: {path} must hold 'weight' [K, D] and optionally 'bias' [K], got "
                         f"{ {k: list(v.shape) for k, v in sd.items()} }")
    k, d = sd["weight"].shape
    head = torch.nn.Linear(d, k, bias="bias" in sd)
    head.load_state_dict(sd)
    return head


@REWARDS.register("video_reward", "a learned VideoAlign/VideoReward-style video reward: a Qwen2-VL backbone and a "
                  "linear head (VQ/MQ/TA) from a local folder, differentiable; options: model, score "
                  "overall|vq|mq|ta, frames, max_pixels, dtype, batch_size")
def _video_reward(model: str = "", score: str = "overall", frames: NonNegativeInt = 0, max_pixels: NonNegativeInt = 0,
                  local_files_only: bool = True, dtype: str = "float32", batch_size: PositiveInt = 1):
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .clip import _dtype, _from_pretrained

    if not model:
        raise ValueError("reward 'video_reward' needs reward_options.model: a local folder with a Qwen2-VL checkpoint, "
                         f"its processor files and {HEAD_FILE} (see visalign/rewards/video_reward.py)")
    folder = Path(model)
    if not folder.is_dir():
        raise FileNotFoundError(f"video_reward: model '{model}' is not a local folder (a Qwen2-VL checkpoint with "
                                f"{HEAD_FILE}; nothing is downloaded)")
    head = load_head(folder)
    rcfg = _read_json(folder / CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else {}
    unknown = set(rcfg) - {"dims", "pooling", "special_tokens", "template", "mean", "std", "fps", "max_pixels"}
    if unknown:
        raise ValueError(f"video_reward: {CONFIG_FILE} has unknown keys {sorted(unknown)}")
    pcfg = next((_read_json(folder / n) for n in PROCESSOR_FILES if (folder / n).is_file()), None)
    if pcfg is None:
        raise FileNotFoundError(f"video_reward: no {' or '.join(PROCESSOR_FILES)} in {folder} (the processor's "
                                f"patch_size, merge_size, mean / std, pixel range)")
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the LM head's keys are skipped on purpose: no load report about them
    try:
        backbone = _from_pretrained(AutoModel, model, local_files_only, "video_reward backbone", dtype=_dtype(dtype))
    finally:
        hf_logging.set_verbosity(level)
    tok = _from_pretrained(AutoTokenizer, model, local_files_only, "video_reward tokenizer")
    patcher = VideoPatcher.from_config(pcfg, max_pixels or int(rcfg.get("max_pixels", 0)))
    return VideoReward(backbone, head, tok, patcher, rcfg.get("dims", DIMS), rcfg.get("pooling", "last"),
                       rcfg.get("special_tokens", SPECIAL_TOKENS), rcfg.get("template", "{prompt}"), rcfg.get("mean"),
                       rcfg.get("std"), score, frames, float(rcfg.get("fps", 2.0)), batch_size)
