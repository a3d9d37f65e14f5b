"""The world's image tokenizer: a small VQ-VAE (van den Oord et al., 2017, arXiv 1711.00937), an H x W x 3
image in [-1, 1] -> (H/4) x (W/4) ids into a codebook of K entries -> image (shapes: 32x32 -> 8x8; the text
task's signs: 32x64 -> 8x16).

The codebook is learned with exponential moving averages of the encoder outputs assigned to each code
(the paper's appendix; Razavi et al., 2019), not by gradients, and a code nobody has picked for a while is
restarted on a random encoder output of the batch (Dhariwal et al., 2020, Jukebox): both keep every entry
in use, which a few-hundred-entry codebook needs to draw sharp edges. The encoder gets the reconstruction
gradient through the straight-through estimator plus beta x the commitment loss.

No GAN loss: the world is flat colours on black, and MSE alone reconstructs it sharply enough for the
verifier (the oracle's renders round-trip at GenEval-S 1.000; tests/policies/test_bundled_ar.py).

Models of this module and of ar.py are stored as config.json + model.safetensors (models/persist.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from visalign.models.persist import Pretrained
from .text import check_task


@dataclass(frozen=True)
class VQConfig:
    resolution: int = 32  # image height (and width unless `width` is set)
    width: int = 0  # image width; 0 = square
    task: str = "shapes"  # the world task whose renders it is trained on (models/text.py TASKS)
    channels: tuple[int, ...] = (32, 64)  # widths at full and half resolution; the token grid is reached with channels[-1]
    codebook_size: int = 512
    code_dim: int = 16  # low-dimensional codes are used more evenly (Yu et al., 2021, ViT-VQGAN)
    beta: float = 0.25  # commitment weight
    ema_decay: float = 0.99
    restart_below: float = 0.5  # a code picked less than this often per batch (EMA) is restarted
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.resolution % 4 != 0 or self.width % 4 != 0:
            raise ValueError(f"resolution {self.resolution} and width {self.width} must be divisible by 4 (two "
                             f"halvings to the token grid)")
        check_task(self.task)
        if self.codebook_size < 2 or self.code_dim < 1:
            raise ValueError(f"codebook_size must be >= 2 and code_dim >= 1, got {self.codebook_size}, {self.code_dim}")

    @property
    def grid(self) -> tuple[int, int]:
        """The token grid (rows, columns)."""
        return self.resolution // 4, (self.width or self.resolution) // 4


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.net = nn.Sequential(nn.SiLU(), nn.Conv2d(c, c, 3, padding=1), nn.SiLU(), nn.Conv2d(c, c, 1))

    def forward(self, x):
        return x + self.net(x)


class VQVAE(Pretrained, nn.Module):
    config_cls = VQConfig

    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = config
        c1, c2 = config.channels[0], config.channels[-1]
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), ResBlock(c2),  # H/2 x W/2
            nn.Conv2d(c2, c2, 4, stride=2, padding=1), ResBlock(c2),  # H/4 x W/4: the token grid
            nn.SiLU(), nn.Conv2d(c2, config.code_dim, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(config.code_dim, c2, 3, padding=1), ResBlock(c2),
            nn.ConvTranspose2d(c2, c2, 4, stride=2, padding=1), ResBlock(c2),  # H/2 x W/2
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), nn.SiLU(),  # H x W
            nn.Conv2d(c1, 3, 3, padding=1),
        )
        k, d = config.codebook_size, config.code_dim
        self.register_buffer("codebook", torch.randn(k, d) * 0.1)  # [K, D], learned by EMA, not by gradients
        # counts start at 0: the first batch restarts every unpicked code on an encoder output (a data init)
        self.register_buffer("ema_count", torch.zeros(k))  # [K]
        self.register_buffer("ema_sum", torch.zeros(k, d))  # [K, D]

    @property
    def device(self) -> torch.device:
        return self.codebook.device

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, D] -> the id [N] of the nearest code (squared Euclidean distance)."""
        d = (z.pow(2).sum(1, keepdim=True) - 2 * z @ self.codebook.t() + self.codebook.pow(2).sum(1))  # [N, K]
        return d.argmin(1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] -> token ids [B, gh*gw] (row-major over the gh x gw grid)."""
        z = self.encoder(images.to(self.device).float())  # [B, D, gh, gw]
        b = z.shape[0]
        return self.nearest(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])).view(b, -1)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """token ids [B, gh*gw] -> images [B, 3, H, W], clamped to [-1, 1]."""
        gh, gw = self.config.grid
        q = self.codebook[ids.to(self.device)].view(ids.shape[0], gh, gw, -1).permute(0, 3, 1, 2)  # [B, D, gh, gw]
        return self.decoder(q).clamp(-1, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass -> (reconstruction [B, 3, H, W], commitment loss [], ids [B, gh*gw]). In training mode the
        codebook moves towards the mean of the encoder outputs assigned to each code."""
        z = self.encoder(images)  # [B, D, gh, gw]
        b, d = z.shape[:2]
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # [N, D]
        ids = self.nearest(flat.detach())  # [N]
        q = self.codebook[ids]  # [N, D]
        if self.training:
            self._ema_update(flat.detach(), ids)
        commit = F.mse_loss(flat, q.detach())
        q_st = flat + (q - flat).detach()  # straight-through: the decoder's gradient reaches the encoder
        recon = self.decoder(q_st.view(b, *z.shape[2:], d).permute(0, 3, 1, 2))
        return recon, self.config.beta * commit, ids.view(b, -1)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, ids: torch.Tensor) -> None:
        """EMA k-means step on this batch's assignments; restart dead codes on random batch vectors."""
        k, decay = self.config.codebook_size, self.config.ema_decay
        onehot = F.one_hot(ids, k).type_as(flat)  # [N, K]
        self.ema_count.mul_(decay).add_(onehot.sum(0), alpha=1 - decay)
        self.ema_sum.mul_(decay).add_(onehot.t() @ flat, alpha=1 - decay)
        n = self.ema_count.sum()
        count = (self.ema_count + 1e-5) / (n + k * 1e-5) * n  # Laplace smoothing: no division by 0
        self.codebook.copy_(self.ema_sum / count[:, None])
        dead = torch.nonzero(self.ema_count < self.config.restart_below).flatten()
        if len(dead):
            pick = torch.randint(len(flat), (len(dead),), device=flat.device)
            self.codebook[dead] = flat[pick]
            self.ema_sum[dead] = flat[pick]
            self.ema_count[dead] = 1.0
