"""A small text-conditional UNet for 32x32 images, sized for a 2-core CPU.

The image is first folded 2x2 into channels (pixel unshuffle: [3, 32, 32] -> [12, 16, 16]), so the top
level runs at 16x16; every level has self-attention over positions and cross-attention to the prompt's
tokens (layout and attribute binding need both). Time and the pooled prompt modulate every residual block
(AdaGN, as in ADM). The output layer starts at zero, so an untrained model predicts 0.

With `positional`, every attention block adds a learned projection of sinusoidal (y, x) features to its
positions before attending (as a DiT's position embedding does): the queries then know where they are, so a
pixel can attend to "the second letter" of a sign. Convolution padding alone carries position only weakly at
the 8x16 and 4x8 levels where attention runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t [B] in [0, 1] -> sinusoidal features [B, dim] (t scaled by 1000, as for DDPM timesteps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]  # [B, half]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int = 8):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))  # [B, C, H, W]
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, 1)  # [B, C, 1, 1] each
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections (named as diffusers names them, so LoRA
    targets read the same): queries [B, N, D] attend to context [B, M, Dc] (masked where mask is False)."""

    def __init__(self, dim: int, ctx_dim: int | None = None, heads: int = 4):
        super().__init__()
        ctx_dim = ctx_dim or dim
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(ctx_dim, dim)
        self.to_v = nn.Linear(ctx_dim, dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x, ctx=None, mask=None):
        ctx = x if ctx is None else ctx
        b, n, d = x.shape
        split = lambda t: t.view(b, -1, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731 [B, h, N, d/h]
        q, k, v = split(self.to_q(x)), split(self.to_k(ctx)), split(self.to_v(ctx))
        attn_mask = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, M]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, h, N, d/h]
        return self.to_out(o.transpose(1, 2).reshape(b, n, d))


POS_FREQS = 4  # sinusoid frequencies per axis of the position features


def position_features(h: int, w: int, device=None) -> torch.Tensor:
    """-> [h*w, 4 * POS_FREQS]: sin and cos of pi * 2^k * (y, x), with y, x the pixel centres in (0, 1)
    (row-major, like the flattened positions). The same relative layout at every resolution."""
    freqs = math.pi * 2.0 ** torch.arange(POS_FREQS, device=device, dtype=torch.float32)  # [F]
    y = ((torch.arange(h, device=device) + 0.5) / h)[:, None] * freqs  # [h, F]
    x = ((torch.arange(w, device=device) + 0.5) / w)[:, None] * freqs  # [w, F]
    fy = torch.cat([y.sin(), y.cos()], -1)[:, None].expand(h, w, -1)  # [h, w, 2F]
    fx = torch.cat([x.sin(), x.cos()], -1)[None].expand(h, w, -1)  # [h, w, 2F]
    return torch.cat([fy, fx], -1).reshape(h * w, 4 * POS_FREQS)


class AttnBlock(nn.Module):
    """Self-attention over positions, then cross-attention to the text tokens (masked), then an MLP; with
    `positional`, a learned projection of the positions' (y, x) features is added first."""

    def __init__(self, dim: int, ctx_dim: int, heads: int = 4, positional: bool = False):
        super().__init__()
        self.pos = nn.Linear(4 * POS_FREQS, dim) if positional else None
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads=heads)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, ctx_dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, ctx, ctx_mask):
        b, c, h, w = x.shape
        s = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        if self.pos is not None:
            s = s + self.pos(position_features(h, w, x.device).to(s.dtype))  # [B, HW, C] + [HW, C]
        s = s + self.self_attn(self.norm1(s))
        s = s + self.cross_attn(self.norm2(s), ctx, ctx_mask)
        s = s + self.mlp(self.norm3(s))
        return s.transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    """(x [B, 3, H, W], t [B], ctx [B, L, Dc], ctx_mask [B, L], pooled [B, Dc]) -> [B, 3, H, W].

    channels[i] is the width at resolution H / 2^(i+1); `attention[i]` says whether level i attends;
    `positional` adds position features in every attention block. With `gradient_checkpointing` (set by
    ShapesModel.enable_gradient_checkpointing), each block's activations are recomputed in the backward instead of
    kept, wherever gradients are on (train or eval mode alike)."""

    gradient_checkpointing = False

    def __init__(self, channels=(64, 128), attention=(True, True), ctx_dim: int = 128, heads: int = 4,
                 in_channels: int = 3, positional: bool = False):
        super().__init__()
        if len(attention) != len(channels):
            raise ValueError(f"attention has {len(attention)} entries for {len(channels)} levels; give one per level")
        c0 = channels[0]
        emb = 4 * c0
        self.c0 = c0
        self.time = nn.Sequential(nn.Linear(c0, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.text = nn.Linear(ctx_dim, emb)
        self.stem = nn.Conv2d(4 * in_channels, c0, 3, padding=1)
        attn = lambda c, on: AttnBlock(c, ctx_dim, heads, positional) if on else None  # noqa: E731
        self.down = nn.ModuleList(ResBlock(c, c, emb) for c in channels)
        self.down_attn = nn.ModuleList(attn(c, a) for c, a in zip(channels, attention))
        self.downsample = nn.ModuleList(
            nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(channels[:-1], channels[1:])
        )
        self.mid = ResBlock(channels[-1], channels[-1], emb)
        self.mid_attn = AttnBlock(channels[-1], ctx_dim, heads, positional)
        self.up = nn.ModuleList(ResBlock(2 * c, c, emb) for c in channels)
        self.up_attn = nn.ModuleList(attn(c, a) for c, a in zip(channels, attention))
        self.upsample = nn.ModuleList(nn.Conv2d(b, a, 3, padding=1) for a, b in zip(channels[:-1], channels[1:]))
        self.out_norm = nn.GroupNorm(8, c0)
        self.out = nn.Conv2d(c0, 4 * in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _run(self, block: nn.Module, *args):
        """block(*args), under activation checkpointing when it is on and gradients are being taken (a no_grad
        rollout keeps nothing to recompute)."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, x, t, ctx, ctx_mask, pooled):
        emb = self.time(timestep_embedding(t, self.c0)) + self.text(pooled)  # [B, E]
        h = self.stem(F.pixel_unshuffle(x, 2))  # [B, c0, H/2, W/2]
        skips = []
        for i, (block, attn) in enumerate(zip(self.down, self.down_attn)):
            if i > 0:
                h = self.downsample[i - 1](h)  # [B, c_i, H/2^(i+1), W/2^(i+1)]
            h = self._run(block, h, emb)
            h = self._run(attn, h, ctx, ctx_mask) if attn is not None else h
            skips.append(h)
        h = self._run(self.mid_attn, self._run(self.mid, h, emb), ctx, ctx_mask)
        for i in reversed(range(len(self.up))):
            h = self._run(self.up[i], torch.cat([h, skips[i]], 1), emb)
            h = self._run(self.up_attn[i], h, ctx, ctx_mask) if self.up_attn[i] is not None else h
            if i > 0:
                h = self.upsample[i - 1](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return F.pixel_shuffle(self.out(F.silu(self.out_norm(h))), 2)  # [B, 3, H, W]
