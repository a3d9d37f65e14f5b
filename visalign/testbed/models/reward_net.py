"""A small learned, differentiable reward model for GenEval-S: image + prompt -> one logit, the log-odds that
the verifier accepts the image for the prompt (trained on verifier labels by pretrain/reward_pretrain.py,
bundled as visalign/weights/geneval-s-reward, used by the `geneval_s_learned` reward).

The image side (a few hundred thousand parameters, smooth everywhere so that d score / d pixel is useful):
  conv stem on the 32x32 image with two coordinate channels (x, y in [-1, 1]) -> two stride-2 stages of
  residual blocks (GroupNorm: no batch statistics, so a sample's logit does not depend on its batch) -> an
  8x8 feature map, and from it per cell a DETECTION map trained on the verifier's own detections: the shape
  class (background, the four shapes, 'unknown') and colour of the object centred in the cell, its log-area
  and its centre's offset inside the cell.
Two heads read it (config `head`):
  "spec"       the prompt is parsed (GenEval-S grammar) and scored as the verifier scores it, with soft
               counts, colours and positions read off the detection map: expected count of a shape (sum over
               cells) against the asked count, colour of the (soft-)largest object of the shape, GenEval's
               relation rule on the (soft-)largest objects' centres; the log of the product of these soft
               checks -> a logit, with learned sharpness and calibration. Compositional by construction.
  "attention"  generic: prompt -> WordTokenizer + TextEncoder (the generators' text side, smaller); every
               residual block FiLM-modulated by the pooled prompt; transformer blocks over the 8x8 positions
               (learned 2D position embedding) + the words + a CLS token; summed per-position evidence (a
               mean cannot count) beside the CLS token -> MLP -> logit. (Measured: it generalises worse to
               held-out prompts; kept for comparison.)
Persistence as the generators: config.json + model.safetensors (fp16 storage), atomic writes, safe loading only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..world import grammar
from ..world.vocab import COLOR_NAMES, RELATIONS, SHAPES
from visalign.models.persist import CheckpointError, Pretrained  # noqa: F401  (CheckpointError re-exported)
from .text import TextEncoder, WordTokenizer

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
KIND = "geneval-s-reward"
HEADS = ("spec", "attention")
AUX_CLASSES = ("background", *SHAPES, "unknown")  # detection map classes; colours: COLOR_NAMES
# detection map channels: shape class logits, colour logits, log-area (fraction of the image), centre offset x, y
AUX_CHANNELS = len(AUX_CLASSES) + len(COLOR_NAMES) + 3


@dataclass(frozen=True)
class RewardNetConfig:
    resolution: int = 32
    channels: tuple[int, ...] = (32, 48, 64)  # widths at full, 1/2 and 1/4 resolution
    head: str = "spec"  # spec | attention (see the module doc)
    text_dim: int = 64  # attention head only
    text_layers: int = 1
    heads: int = 4
    fusion_layers: int = 2
    count_channels: int = 32  # width of the summed (counting) evidence map
    max_prompt_words: int = 8
    kind: str = KIND  # what this directory holds (refuses a generator's config by mistake)

    def __post_init__(self):
        if self.kind != KIND:
            raise ValueError(f"config kind '{self.kind}' is not a reward model ('{KIND}')")
        if self.head not in HEADS:
            raise ValueError(f"head '{self.head}' is not one of {', '.join(HEADS)}")
        if len(self.channels) != 3:
            raise ValueError(f"channels must hold 3 widths (full, 1/2, 1/4 resolution), got {list(self.channels)}")
        if self.resolution % 4 != 0:
            raise ValueError(f"resolution {self.resolution} must be divisible by 4 (two stride-2 stages)")
        if self.text_dim % self.heads != 0:
            raise ValueError(f"text_dim {self.text_dim} must be divisible by heads {self.heads}")

    @classmethod
    def from_dict(cls, d: dict) -> "RewardNetConfig":
        if d.get("kind") != KIND:
            raise ValueError(f"config kind is {d.get('kind')!r}, not a reward model ('{KIND}')")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "channels" in known:
            known["channels"] = tuple(known["channels"])
        return cls(**known)


def _groups(c: int) -> int:
    return 8 if c % 8 == 0 else 1


class FiLMResBlock(nn.Module):
    """x + conv(silu(film(norm(conv(silu(norm(x))))))): FiLM (scale, shift) from the pooled prompt when
    cond_dim > 0, else a plain residual block."""

    def __init__(self, ch: int, cond_dim: int = 0):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(ch), ch), nn.Conv2d(ch, ch, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(ch), ch), nn.Conv2d(ch, ch, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * ch) if cond_dim else None
        if self.film is not None:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm2(self.conv1(F.silu(self.norm1(x))))
        if self.film is not None:
            scale, shift = self.film(cond)[:, :, None, None].chunk(2, 1)  # [B, C, 1, 1] each
            h = h * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


class Block(nn.Module):
    """Pre-norm transformer block over a token sequence with a key padding mask."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x [B, N, D]; keep [B, N] True where a key is real."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        bias = torch.zeros(b, 1, 1, n, dtype=x.dtype, device=x.device)
        bias = bias.masked_fill(~keep[:, None, None, :], float("-inf"))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B, H, N, D/H]
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class SpecScorer(nn.Module):
    """Scores parsed prompts against a detection map as the verifier does, softly (see the module doc)."""

    def __init__(self, resolution: int):
        super().__init__()
        self.resolution = resolution
        # learned sharpness / margins / calibration, each a scalar (positive ones through softplus)
        self.count_sharpness = nn.Parameter(torch.tensor(4.0))
        self.relation_sharpness = nn.Parameter(torch.tensor(10.0))
        self.relation_margin = nn.Parameter(torch.tensor(0.2 * 0.34 * resolution))  # GenEval: 0.1 x (both sizes)
        self.largest_temperature = nn.Parameter(torch.tensor(2.0))  # weight of log-area in 'the largest object'
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.bias = nn.Parameter(torch.tensor(0.0))
        self._terms: dict[str, list[tuple]] = {}

    def terms(self, prompt: str) -> list[tuple]:
        """The verifier's checks of a prompt: ('ge', shape, n) at least n; ('lt', shape, n) fewer than n;
        ('color', shape, colour) the largest of the shape has the colour; ('rel', shape_a, shape_b, relation)."""
        if prompt not in self._terms:
            spec = grammar.parse_prompt(prompt)
            out = []
            reqs = spec.includes()
            for req in reqs:
                s = SHAPES.index(req.shape)
                out.append(("ge", s, req.count))
                if req.color is not None:
                    out.append(("color", s, COLOR_NAMES.index(req.color)))
                if req.relation is not None:
                    out.append(("rel", s, SHAPES.index(reqs[req.target].shape), RELATIONS.index(req.relation)))
            out += [("lt", SHAPES.index(shape), n) for shape, n in spec.excludes()]
            self._terms[prompt] = out
        return self._terms[prompt]

    def forward(self, det: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """det [B, AUX_CHANNELS, G, G] detection map logits -> logits [B]."""
        b, _, g, _ = det.shape
        ns = len(AUX_CLASSES)
        shape_p = det[:, :ns].softmax(1).flatten(2)[:, 1 : 1 + len(SHAPES)]  # [B, S, N]
        color_p = det[:, ns : ns + len(COLOR_NAMES)].softmax(1).flatten(2)  # [B, C, N]
        log_area = det[:, ns + len(COLOR_NAMES)].flatten(1)  # [B, N]
        offset = 0.5 * torch.tanh(det[:, ns + len(COLOR_NAMES) + 1 :]).flatten(2)  # [B, 2, N] in cells
        cell = self.resolution / g
        idx = torch.arange(g, device=det.device, dtype=det.dtype) + 0.5
        gy, gx = torch.meshgrid(idx, idx, indexing="ij")
        px = (gx.flatten() + offset[:, 0]) * cell  # [B, N] pixels
        py = (gy.flatten() + offset[:, 1]) * cell
        count = shape_p.sum(-1)  # [B, S] expected number of objects of each shape
        # soft 'largest object of the shape': weights over cells
        w = (torch.log(shape_p + 1e-6) + self.largest_temperature * log_area[:, None]).softmax(-1)  # [B, S, N]
        color_of = w @ color_p.transpose(1, 2)  # [B, S, C]
        cx, cy = (w * px[:, None]).sum(-1), (w * py[:, None]).sum(-1)  # [B, S]
        kc, kr = F.softplus(self.count_sharpness), F.softplus(self.relation_sharpness)
        rows: dict[str, list[tuple]] = {"ge": [], "lt": [], "color": [], "rel": []}
        for i, prompt in enumerate(prompts):
            for t in self.terms(prompt):
                rows[t[0]].append((i, *t[1:]))
        logp = det.new_zeros(b)
        lt = lambda key: torch.tensor(rows[key], dtype=torch.long, device=det.device).T  # noqa: E731
        if rows["ge"]:
            i, sh, n = lt("ge")
            logp = logp.index_add(0, i, F.logsigmoid(kc * (count[i, sh] - n + 0.5)))
        if rows["lt"]:
            i, sh, n = lt("lt")
            logp = logp.index_add(0, i, F.logsigmoid(kc * (n - 0.5 - count[i, sh])))
        if rows["color"]:
            i, sh, c = lt("color")
            logp = logp.index_add(0, i, torch.log(color_of[i, sh, c] + 1e-6))
        if rows["rel"]:
            i, sa, sb, r = lt("rel")
            margin = self.relation(cx[i, sa] - cx[i, sb], cy[i, sa] - cy[i, sb])  # [4, T]
            logp = logp.index_add(0, i, F.logsigmoid(kr * margin.gather(0, r[None])[0]))
        logp = logp.clamp(max=-1e-6)  # log P(all checks hold)
        logit = logp - torch.log(-torch.expm1(logp))
        return F.softplus(self.scale) * logit + self.bias

    def relation(self, ox: torch.Tensor, oy: torch.Tensor) -> torch.Tensor:
        """GenEval's rule on the centre offsets (a - b) [T]: the offset, shrunk by a margin per axis, must put
        more than half of its length on the relation's axis. -> [4, T] margins (> 0 where the relation holds)
        of left of, right of, above, below (RELATIONS' order; y points down)."""
        norm = torch.sqrt(ox**2 + oy**2 + 1e-3)
        m = self.relation_margin

        def shrink(o):
            a = torch.sqrt(o**2 + 1e-3)
            return o / a * F.softplus(2 * (a - m)) / 2

        dx, dy = shrink(ox) / norm, shrink(oy) / norm
        return torch.stack([-dx, dx, -dy, dy]) - 0.5


class RewardNet(Pretrained, nn.Module):
    config_cls = RewardNetConfig
    kind_label = "reward model"
    save_dtype = torch.float16  # the bundled reward is stored at half precision
    save_metadata = {"kind": KIND}

    @classmethod
    def config_from_dict(cls, d: dict) -> RewardNetConfig:
        return RewardNetConfig.from_dict(d)

    def __init__(self, config: RewardNetConfig = RewardNetConfig()):
        super().__init__()
        self.config = config
        c0, c1, c2 = config.channels
        d = config.text_dim if config.head == "attention" else 0
        if config.head == "attention":
            self.tokenizer = WordTokenizer(max_length=config.max_prompt_words)
            self.text_encoder = TextEncoder(self.tokenizer.vocab_size, d, config.text_layers, config.heads,
                                            config.max_prompt_words)
        self.stem = nn.Conv2d(3 + 2, c0, 3, padding=1)
        self.block0 = FiLMResBlock(c0, d)
        self.down1 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.block1 = FiLMResBlock(c1, d)
        self.down2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.block2 = FiLMResBlock(c2, d)
        self.out_norm = nn.GroupNorm(_groups(c2), c2)
        self.aux = nn.Conv2d(c2, AUX_CHANNELS, 1)
        if config.head == "spec":
            self.block3 = FiLMResBlock(c2)
            self.scorer = SpecScorer(config.resolution)
            return
        side = config.resolution // 4
        self.img_proj = nn.Linear(c2, d)
        self.img_pos = nn.Parameter(torch.randn(side * side, d) * 0.02)
        self.type_embed = nn.Parameter(torch.randn(2, d) * 0.02)  # 0: image position, 1: word
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.blocks = nn.ModuleList([Block(d, config.heads) for _ in range(config.fusion_layers)])
        self.final_norm = nn.LayerNorm(d)
        self.count = nn.Conv2d(c2, config.count_channels, 1)
        self.head = nn.Sequential(nn.Linear(d + config.count_channels, d), nn.SiLU(), nn.Linear(d, 1))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, images: torch.Tensor, prompts: list[str], return_aux: bool = False):
        """images [B, 3, H, W] in [-1, 1] (any float dtype; gradients flow to them) -> logits [B]; with
        return_aux also the detection map logits [B, AUX_CHANNELS, H/4, W/4]."""
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        p = next(self.parameters())
        x = images.to(p.device, p.dtype)
        b, _, h, w = x.shape
        pooled = None
        if self.config.head == "attention":
            tokens, pooled, mask = self.text_encoder(self.tokenizer(prompts).to(x.device))
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
        coords = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))[None].expand(b, 2, h, w)  # [B, 2, H, W]
        f = self.block0(self.stem(torch.cat([x, coords], 1)), pooled)
        f = self.block1(self.down1(F.silu(f)), pooled)
        f = self.block2(self.down2(F.silu(f)), pooled)
        if self.config.head == "spec":
            det = self.aux(F.silu(self.out_norm(self.block3(f))))  # [B, AUX_CHANNELS, G, G]
            logit = self.scorer(det, list(prompts))
            return (logit, det) if return_aux else logit
        f = F.silu(self.out_norm(f))  # [B, C2, H/4, W/4]
        evidence = F.silu(self.count(f)).sum((2, 3)) / 16.0  # [B, K]: sums, so they can count
        img_tok = self.img_proj(f.flatten(2).transpose(1, 2)) + self.img_pos + self.type_embed[0]  # [B, N, D]
        seq = torch.cat([self.cls.expand(b, -1, -1), img_tok, tokens + self.type_embed[1]], 1)
        keep = torch.cat([torch.ones(b, 1 + img_tok.shape[1], dtype=torch.bool, device=x.device), mask], 1)
        for blk in self.blocks:
            seq = blk(seq, keep)
        cls = self.final_norm(seq[:, 0])
        logit = self.head(torch.cat([cls, evidence], 1)).squeeze(1)
        return (logit, self.aux(f)) if return_aux else logit
