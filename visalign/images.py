"""Conversions between the two image layouts: uint8 [B, H, W, 3] (world, verifier, files) and float
[B, 3, H, W] in [-1, 1] (models)."""

import io
import os
from pathlib import Path

import numpy as np
import torch


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """float [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3]."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_grid(images: np.ndarray, path: Path, cols: int, scale: int = 4) -> None:
    """uint8 [N, H, W, 3] -> one PNG, `cols` per row, upscaled `scale` x (nearest) with 2 px gaps."""
    from PIL import Image

    n, h, w, _ = images.shape
    rows = (n + cols - 1) // cols
    gap = 2
    canvas = np.full((rows * (h * scale + gap) + gap, cols * (w * scale + gap) + gap, 3), 80, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        big = img.repeat(scale, 0).repeat(scale, 1)
        y, x = gap + r * (h * scale + gap), gap + c * (w * scale + gap)
        canvas[y : y + h * scale, x : x + w * scale] = big
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
