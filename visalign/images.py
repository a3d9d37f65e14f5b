"""Conversions between the two image layouts: uint8 [B, H, W, 3] (world, verifier, files) and float
[B, 3, H, W] in [-1, 1] (models). Videos carry a frame axis before the pixels in both: uint8 [B, F, H, W, 3] and
float [B, F, 3, H, W]; the conversions work on any leading axes."""

import io
import os
from pathlib import Path

import numpy as np
import torch


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in [-1, 1] (images [B, ...] or videos [B, F, ...])."""
    return torch.from_numpy(np.ascontiguousarray(images)).movedim(-1, -3).float() / 127.5 - 1


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """float [..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3] (images [B, ...] or videos [B, F, ...])."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_grid(images: np.ndarray, path: Path, cols: int, scale: int = 4) -> None:
    """uint8 [N, H, W, 3] -> one PNG, `cols` per row, upscaled `scale` x (nearest) with 2 px gaps."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_tile(images, cols, scale)).save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())


def save_samples(images: np.ndarray, path: Path, cols: int, scale: int = 4) -> list[Path]:
    """What `visalign sample` and a run's evaluations write, for images or videos -> the paths written. Images
    uint8 [N, H, W, 3]: the PNG grid at `path`. Videos [N, F, H, W, 3]: their frames at `path` (a row per video,
    save_frame_strip) and the animated grid beside it (the same name, .gif)."""
    path = Path(path)
    if images.ndim != 5:
        save_grid(images, path, cols, scale)
        return [path]
    gif = path.with_suffix(".gif")
    save_video_grid(images, gif, cols, scale)
    save_frame_strip(images, path, scale)
    return [path, gif]


def _tile(images: np.ndarray, cols: int, scale: int, gap: int = 2) -> np.ndarray:
    """uint8 [N, H, W, 3] -> one canvas [rows (H scale + gap) + gap, cols (W scale + gap) + gap, 3]: the images
    upscaled `scale` x (nearest), `cols` per row, on grey with `gap` px between them (as save_grid lays them)."""
    n, h, w, _ = images.shape
    rows = (n + cols - 1) // cols
    canvas = np.full((rows * (h * scale + gap) + gap, cols * (w * scale + gap) + gap, 3), 80, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        y, x = gap + r * (h * scale + gap), gap + c * (w * scale + gap)
        canvas[y : y + h * scale, x : x + w * scale] = img.repeat(scale, 0).repeat(scale, 1)
    return canvas


def _check_videos(videos: np.ndarray) -> None:
    if videos.ndim != 5 or videos.shape[-1] != 3 or videos.dtype != np.uint8:
        raise ValueError(f"videos must be uint8 [N, F, H, W, 3]; got {videos.dtype} {tuple(videos.shape)}")


def save_video_grid(videos: np.ndarray, path: Path, cols: int, scale: int = 4, fps: float = 8.0) -> None:
    """uint8 videos [N, F, H, W, 3] -> one animated GIF (looping): each GIF frame is the grid of every video's
    frame f, `cols` videos per row, upscaled `scale` x (nearest) with 2 px gaps, shown 1 / fps s. Written
    atomically (a temp file, then renamed)."""
    from PIL import Image

    _check_videos(videos)
    frames = [Image.fromarray(_tile(videos[:, f], cols, scale)) for f in range(videos.shape[1])]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=max(1, round(1000 / fps)),
                   loop=0, disposal=1, optimize=False)
    atomic_write_bytes(Path(path), buf.getvalue())


def save_frame_strip(videos: np.ndarray, path: Path, scale: int = 4) -> None:
    """uint8 videos [N, F, H, W, 3] -> one PNG: a row per video, its frames left to right, upscaled `scale` x
    (nearest) with 2 px gaps. Written atomically."""
    from PIL import Image

    _check_videos(videos)
    n, f = videos.shape[:2]
    canvas = _tile(videos.reshape(n * f, *videos.shape[2:]), f, scale)
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())
