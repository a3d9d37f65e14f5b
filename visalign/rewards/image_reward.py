"""`image_reward`: ImageReward-v1.0 (Xu et al., 2023, "ImageReward: Learning and Evaluating Human Preferences
for Text-to-Image Generation"; THUDM/ImageReward, file ImageReward.pt) on transformers' BLIP modules.

The prompt's tokens ([CLS] prompt [SEP], padded to 35 as the original) go through BLIP's BERT text encoder,
which cross-attends to the BLIP ViT-L image tokens; the [CLS] output feeds the MLP head; the score is
standardised with the training statistics (mean 0.16717362830052426, std 1.0333394966054072), so it reads as
a z-score over the ImageReward data (about -2..2). The original checkpoint's keys are mapped onto
BlipVisionModel, BlipTextModel (add_pooling_layer=False) and MLPHead by converters.load_imagereward.
Differentiable: the 224 px bicubic resize, centre crop and CLIP mean/std run in torch."""

from __future__ import annotations

import math

import torch

from ..types import RewardOutput
from .base import REWARDS, Reward
from .clip import _dtype, _from_pretrained, preprocess
from .converters import OPENAI_MEAN, OPENAI_STD, load_imagereward, resolve_file, torch_state_dict

SCORE_MEAN, SCORE_STD = 0.16717362830052426, 1.0333394966054072  # ImageReward's normalisation of the head output
MAX_LENGTH = 35  # the original's tokenizer padding length


class ImageReward(Reward):
    name = "image_reward"
    differentiable = True
    needs_text = True
    value_range = (-math.inf, math.inf)

    def __init__(self, vision, text, head, tokenizer, max_length: int = MAX_LENGTH):
        self.vision = vision.eval().requires_grad_(False)  # gradients go to the images only
        self.text, self.head = text.eval().requires_grad_(False), head.eval().requires_grad_(False)
        self.tokenizer, self.max_length = tokenizer, max_length
        self.size = vision.config.image_size
        self.device = next(vision.parameters()).device

    def __call__(self, images, prompts, metadata=None) -> RewardOutput:
        dtype = next(self.vision.parameters()).dtype
        x = preprocess(images.to(self.device), self.size, OPENAI_MEAN, OPENAI_STD).to(dtype)  # [B, 3, S, S]
        image_tokens = self.vision(pixel_values=x).last_hidden_state  # [B, 1 + N, Dv] after the final LayerNorm
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        out = self.text(input_ids=tok.input_ids, attention_mask=tok.attention_mask, encoder_hidden_states=image_tokens,
                        encoder_attention_mask=torch.ones(image_tokens.shape[:2], dtype=torch.long, device=self.device))
        raw = self.head(out.last_hidden_state[:, 0].float())  # [B] from the [CLS] token
        return RewardOutput((raw - SCORE_MEAN) / SCORE_STD, {"raw": raw.detach()})


@REWARDS.register("image_reward", "ImageReward-v1.0 (THUDM/ImageReward ImageReward.pt, BLIP ViT-L + BERT cross-attention "
                  "+ MLP, converted to transformers BLIP), differentiable; options: checkpoint, filename, tokenizer")
def _image_reward(checkpoint: str = "THUDM/ImageReward", filename: str = "ImageReward.pt",
                  tokenizer: str = "google-bert/bert-base-uncased", local_files_only: bool = True,
                  dtype: str = "float32", vision_heads: int | None = None, text_heads: int | None = None):
    from transformers import AutoTokenizer

    sd = torch_state_dict(resolve_file(checkpoint, filename))
    vision, text, head = load_imagereward(sd, vision_heads=vision_heads, text_heads=text_heads)
    tok = _from_pretrained(AutoTokenizer, tokenizer, local_files_only, "image_reward tokenizer")
    return ImageReward(vision.to(_dtype(dtype)), text.to(_dtype(dtype)), head, tok)
