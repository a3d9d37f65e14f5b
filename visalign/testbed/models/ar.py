"""builtin:shapes-ar and builtin:text-ar: a small decoder-only transformer (GPT-2 layout, Radford et al.,
2019; nanoGPT) over one sequence per image,

    [prompt words (max_prompt_words, right-padded) | plan (plan.PLAN_LENGTH) | image tokens (gh x gw)]

with the image tokens of the VQ tokenizer (models/vq.py), as LlamaGen (Sun et al., 2024, arXiv 2406.06525)
does at scale. The plan is the shapes world's layout language (world/plan.py): the model first writes where
it will put what, then draws it (plan-then-draw). It is pretrained with empty plans a share of the time, so
the same weights draw with or without a plan (a sampling option). The text task (signs that say a word,
world/text.py) has no plan: its sequences are the prompt's tokens, then the image tokens.

Generated tokens live in one output vocabulary: plan words [0, n_plan), then image codes [n_plan,
n_plan + K). Input ids put the prompt vocabulary first: input id = prompt_vocab + output id.
The network returns its keys and values (a KV cache), so sampling costs one token's forward per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from ..world import plan as plan_lang
from .text import PARSERS, check_task, make_tokenizer
from visalign.models.persist import Pretrained
from .vq import VQVAE


@dataclass(frozen=True)
class ARConfig:
    dim: int = 128
    layers: int = 4
    heads: int = 4
    mlp_ratio: int = 3
    codebook_size: int = 512  # the VQ's
    grid: int = 8  # the VQ's token grid: rows
    grid_w: int = 0  # ... and columns; 0 = square
    task: str = "shapes"  # the world task (models/text.py TASKS): its prompt tokens; shapes also writes a plan
    max_prompt_words: int = 8
    # Sampling defaults that came with the training (what `visalign sample` and `eval` use).
    guidance_scale: float = 3.0
    temperature: float = 1.0
    top_k: int | None = None
    plan: bool | str = True  # draw with a plan by default (False: without; a plan text: that layout)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.dim % self.heads != 0:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if self.layers < 1 or self.codebook_size < 2 or self.grid < 1 or self.grid_w < 0:
            raise ValueError(f"layers, codebook_size and grid must be positive, got {self.layers}, "
                             f"{self.codebook_size}, {self.grid}x{self.grid_w}")
        check_task(self.task)

    @property
    def grid_hw(self) -> tuple[int, int]:
        return self.grid, self.grid_w or self.grid

    @property
    def plan_length(self) -> int:
        """Tokens of the plan slot (the shapes world's layout language; none for the text task)."""
        return plan_lang.PLAN_LENGTH if self.task == "shapes" else 0

    @property
    def n_plan(self) -> int:
        return len(plan_lang.WORDS) if self.plan_length else 0

    @property
    def out_vocab(self) -> int:
        return self.n_plan + self.codebook_size

    @property
    def gen_length(self) -> int:
        """Generated tokens per image: the plan slot then the image tokens."""
        return self.plan_length + self.grid_hw[0] * self.grid_hw[1]

    @property
    def context(self) -> int:
        return self.max_prompt_words + self.gen_length


class KVCache:
    """One layer's keys and values in buffers preallocated to the model's context: a decoding step writes its
    slot, where concatenating onto the past would copy the whole past at every token (O(n^2) over a
    sequence; the copies were a quarter of a 64-sample text rollout's time)."""

    def __init__(self, context: int):
        self.context, self.length = context, 0
        self.k = self.v = None  # [R, H, context, hd], allocated on the first write

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v [R, H, S, hd] -> the keys and values of every position so far [R, H, length, hd]."""
        if self.k is None:
            r, h, _, hd = k.shape
            self.k, self.v = (k.new_empty(r, h, self.context, hd) for _ in range(2))
        end = self.length + k.shape[2]
        self.k[:, :, self.length : end], self.v[:, :, self.length : end] = k, v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    """Causal self-attention that extends a (keys, values) cache. Layer names follow diffusers (to_q ...),
    so the trainer's default LoRA targets find them."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor, cache: KVCache | tuple | None):
        """cache: a KVCache (extended in place and returned), the (keys, values) of the past (extended by
        concatenation), or None."""
        r, s, d = x.shape
        q, k, v = (f(x).view(r, s, self.heads, d // self.heads).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        if isinstance(cache, KVCache):
            k, v = cache.extend(k, v)  # [R, H, past + S, hd], views of the buffers
        elif cache is not None:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)  # [R, H, past + S, hd]
        past = k.shape[2] - s
        # query i (absolute position past + i) sees keys 0..past + i
        mask = None if s == 1 else torch.ones(s, past + s, dtype=torch.bool, device=x.device).tril(past)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [R, H, S, hd]
        return self.to_out(y.transpose(1, 2).reshape(r, s, d)), cache if isinstance(cache, KVCache) else (k, v)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x, cache):
        a, cache = self.attn(self.ln1(x), cache)
        x = x + a
        return x + self.mlp(self.ln2(x)), cache


class TokenGPT(Pretrained, nn.Module):
    config_cls = ARConfig
    gradient_checkpointing = False  # enable_gradient_checkpointing(): blocks recomputed in the backward

    def __init__(self, config: ARConfig):
        super().__init__()
        self.config = config
        self.tokenizer = make_tokenizer(config.task, config.max_prompt_words)
        self.prompt_vocab = self.tokenizer.vocab_size
        self.embed = nn.Embedding(self.prompt_vocab + config.out_vocab, config.dim)
        self.pos = nn.Parameter(torch.zeros(config.context, config.dim))
        self.blocks = nn.ModuleList(Block(config.dim, config.heads, config.mlp_ratio) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.out_vocab)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by 1/sqrt(2 layers)
            if name.endswith("to_out.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.layers))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    @property
    def device(self) -> torch.device:
        return self.pos.device

    def new_cache(self) -> list[KVCache]:
        """An empty preallocated cache (one KVCache per layer) for decoding: predict(prompt, 0, cache), then
        one token at a time."""
        return [KVCache(self.config.context) for _ in self.blocks]

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each block's activations in the backward of a teacher-forced forward (cache None, gradients
        on: the update's), instead of keeping them; decoding (no_grad, a cache written in place) is unchanged."""
        self.gradient_checkpointing = True

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.gradient_checkpointing

    def forward(self, ids: torch.Tensor, start: int = 0, cache: list | None = None):
        """ids [R, S] input ids at positions start..start+S-1 (cache: the keys/values of positions
        0..start-1, or new_cache() before the first call) -> (logits [R, S, out_vocab] predicting the next
        token at each position, the cache extended by these positions)."""
        s = ids.shape[1]
        if start + s > self.config.context:
            raise ValueError(f"sequence of {start + s} tokens exceeds the model's context of {self.config.context}")
        if cache is not None and isinstance(cache[0], KVCache) and cache[0].length != start:
            raise ValueError(f"the cache holds {cache[0].length} positions, the input starts at {start}; give the "
                             f"cache of exactly the positions before the input (new_cache() for position 0)")
        x = self.embed(ids) + self.pos[start : start + s]  # [R, S, D]
        new = []
        checkpointed = self.gradient_checkpointing and cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if checkpointed:  # only without a cache: recomputing a block must not write a KVCache twice
                x, kv = torch.utils.checkpoint.checkpoint(block, x, None, use_reentrant=False)
            else:
                x, kv = block(x, None if cache is None else cache[i])
            new.append(kv)
        return self.head(self.ln_f(x)), new


class ShapesARAdapter:
    """A token model (builtin:shapes-ar, builtin:text-ar) for AutoregressivePolicy: the GPT (trainable) and
    its frozen VQ tokenizer.

    encode(prompts) -> prompt ids [B, L]             ("" is the unconditional prompt of CFG)
    predict(ids [R, S], start, cache) -> (logits [R, S, V], cache)   one network forward
    decode(tokens [B, N] output ids) -> images [B, 3, H, W] in [-1, 1]
    """

    family = "autoregressive"
    plan_grammar = plan_lang  # the layout language of the plan slot (the policy's grammar masks)

    def __init__(self, gpt: TokenGPT, vq: VQVAE):
        c = gpt.config
        if (vq.config.codebook_size, vq.config.grid) != (c.codebook_size, c.grid_hw):
            (gh, gw), (vh, vw) = c.grid_hw, vq.config.grid
            raise ValueError(f"the GPT models {gh}x{gw} tokens of a {c.codebook_size}-code VQ, the tokenizer "
                             f"gives {vh}x{vw} of {vq.config.codebook_size}")
        if vq.config.task != c.task:
            raise ValueError(f"the GPT draws the {c.task} task, its tokenizer was trained on {vq.config.task} renders; "
                             f"give a tokenizer of the {c.task} task (builtin:shapes-vq for shapes, builtin:text-vq for text)")
        self.model, self.vq = gpt, vq.requires_grad_(False).eval()
        self.config = c
        self.prompt_length, self.plan_length = c.max_prompt_words, c.plan_length
        self.gen_length, self.n_plan, self.offset = c.gen_length, c.n_plan, gpt.prompt_vocab
        self.default_guidance, self.default_steps = c.guidance_scale, None

    @property
    def module(self) -> nn.Module:
        return self.model

    def to(self, device):
        self.vq.to(device)
        return self

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self.model.tokenizer(prompts).to(self.model.device)  # [B, L]

    def parse_prompt(self, prompt: str):
        """The prompt's spec in the model's world task (a one-line PromptError for a prompt outside it)."""
        return PARSERS[self.config.task](prompt)

    def predict(self, ids: torch.Tensor, start: int = 0, cache: list | None = None):
        return self.model(ids, start, cache)

    def enable_gradient_checkpointing(self) -> None:
        """train.gradient_checkpointing: the GPT's blocks under torch.utils.checkpoint in updates."""
        self.model.enable_gradient_checkpointing()

    def new_cache(self) -> list:
        return self.model.new_cache()

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        codes = (tokens[:, self.plan_length:] - self.n_plan).clamp(0, self.config.codebook_size - 1)  # [B, gh*gw]
        with torch.no_grad():
            return self.vq.decode(codes.to(self.vq.device))

    def save_pretrained(self, path: str | Path) -> None:
        """The GPT in PATH and the tokenizer it draws with in PATH/tokenizer: one folder `load_model` reads
        back (what `visalign export RUN --format merged` writes for a token model)."""
        self.model.save_pretrained(path, dtype=None)
        self.vq.save_pretrained(Path(path) / TOKENIZER_DIR, dtype=None)

    def plans(self, tokens: torch.Tensor) -> list[str]:
        """The plan text each sequence wrote ("" when it drew without one)."""
        if not self.plan_length:
            return [""] * len(tokens)
        return [plan_lang.decode_plan(t[: self.plan_length].tolist()) for t in tokens]

    def encode_images(self, images: torch.Tensor, plans: list[str] | None = None) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] (and their plans, default empty) -> output-id sequences [B, N]."""
        codes = self.vq.encode(images) + self.n_plan  # [B, gh*gw]
        if not self.plan_length:
            return codes
        plan_ids = torch.tensor([plan_lang.encode_plan(p) for p in (plans or [""] * len(images))])  # [B, P]
        return torch.cat([plan_ids.to(codes.device), codes], 1)


TOKENIZER_DIR = "tokenizer"  # a saved token model keeps its image tokenizer in this subfolder


def load_ar(path: str | Path, tokenizer: str | Path | None = None) -> ShapesARAdapter:
    """A GPT directory + its VQ tokenizer directory (default: PATH/tokenizer, as save_pretrained writes)."""
    tokenizer = tokenizer if tokenizer is not None else Path(path) / TOKENIZER_DIR
    return ShapesARAdapter(TokenGPT.from_pretrained(path), VQVAE.from_pretrained(tokenizer))
