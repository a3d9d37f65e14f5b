"""OCR accuracy, the text-rendering reward of Flow-GRPO (Liu et al., 2025): reward = 1 - the normalised edit
distance between the prompt's text and what the real tesseract (Debian package `tesseract-ocr`) reads,
  r = 1 - Levenshtein(target, read) / max(len(target), len(read)),   in [0, 1], 1 = read exactly.

Each image goes to tesseract as a grey PNG upscaled 4x (bicubic) with a white margin, read as one text line
(`--psm 7`) through a whitelist of the world's OCR alphabet. A batch is cut into chunks, one tesseract
process per chunk reading a list of PNG files (one page each, pages split by form feeds): starting a process
(loading the language model) costs ~5x the reading of one 32x64 image, so a chunk per process, and a thread
pool runs the processes in parallel (the work is in the subprocess, so threads suffice). By default the batch
is split evenly over the workers, one process each: 64 text images read in 0.20 s on 2 workers against 0.28 s
in chunks of 16 (four process starts).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
from PIL import Image

from ..images import tensor_to_images
from ..types import RewardOutput
from ..world import text as text_world
from .base import REWARDS, Reward

UPSCALE, MARGIN = 4, 16  # tesseract reads capitals best at ~30-50 px high; our capitals are ~12 px


class TesseractMissing(RuntimeError):
    """The tesseract binary is not on PATH (message is one line)."""


def tesseract_binary() -> str:
    path = shutil.which("tesseract")
    if path is None:
        raise TesseractMissing("the ocr reward needs the tesseract binary, which is not on PATH; install the "
                               "Debian package tesseract-ocr (apt-get install -y tesseract-ocr)")
    return path


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions cost 1), one row of the DP table at a time."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def ocr_score(target: str, read: str) -> float:
    """1 - edit distance / max(len(target), len(read)); 1.0 when both are empty."""
    n = max(len(target), len(read))
    return 1.0 - edit_distance(target, read) / n if n else 1.0


def to_png(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes of the grey image, upscaled UPSCALE x with a white MARGIN."""
    g = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)  # [H, W]
    g = cv2.resize(g, (g.shape[1] * UPSCALE, g.shape[0] * UPSCALE), interpolation=cv2.INTER_CUBIC)
    g = cv2.copyMakeBorder(g, MARGIN, MARGIN, MARGIN, MARGIN, cv2.BORDER_CONSTANT, value=255)
    buf = io.BytesIO()
    Image.fromarray(g).save(buf, format="PNG")
    return buf.getvalue()


def _tesseract(binary: str, source: str, whitelist: str, timeout: float, stdin: bytes | None = None):
    cmd = [binary, source, "stdout", "--psm", "7", "-c", f"tessedit_char_whitelist={whitelist}"]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout,
                          env={**os.environ, "OMP_THREAD_LIMIT": "1"})  # parallelism comes from the pool


def _failed(res) -> RuntimeError:
    return RuntimeError(f"tesseract failed (exit {res.returncode}): "
                        f"{' '.join(res.stderr.decode(errors='replace').split())[-200:]}")


def read_one(image: np.ndarray, binary: str, whitelist: str, timeout: float) -> str:
    """One image through its own tesseract process (PNG on stdin). tesseract 5 dies of a signal (SIGFPE) on
    some noise-like images: such an image reads as nothing; any other failure is raised."""
    res = _tesseract(binary, "stdin", whitelist, timeout, to_png(image))
    if res.returncode < 0:
        return ""
    if res.returncode != 0:
        raise _failed(res)
    return "".join(res.stdout.decode(errors="replace").split())


def read_chunk(images: np.ndarray, binary: str, whitelist: str, timeout: float) -> list[str]:
    """One tesseract process reads every image of the chunk: uint8 [n, H, W, 3] -> n strings. If that process
    fails (a crash on one image ends it), each image of the chunk is read by its own process."""
    with tempfile.TemporaryDirectory(prefix="visalign-ocr-") as d:
        paths = []
        for i, img in enumerate(images):
            paths.append(os.path.join(d, f"{i:05d}.png"))
            with open(paths[-1], "wb") as f:
                f.write(to_png(img))
        listing = os.path.join(d, "pages.txt")
        with open(listing, "w") as f:
            f.write("\n".join(paths) + "\n")
        res = _tesseract(binary, listing, whitelist, timeout)
    pages = res.stdout.decode(errors="replace").split("\f")[: len(images)]  # one page per image, form-feed ended
    if res.returncode != 0 or len(pages) != len(images):
        if res.returncode > 0:
            raise _failed(res)
        return [read_one(img, binary, whitelist, timeout) for img in images]
    return ["".join(p.split()) for p in pages]  # one line of capitals: spaces and newlines are not text


class OCRReward(Reward):
    """Scores images against the word of a `a sign that says "WORD"` prompt (visalign.world.text)."""

    name = "ocr"
    differentiable = False
    needs_text = True
    value_range = (0.0, 1.0)

    def __init__(self, workers: int = 2, chunk: int | None = None, timeout: float = 120.0):
        if workers < 1:
            raise ValueError(f"ocr reward: workers must be >= 1, got {workers}")
        if chunk is not None and chunk < 1:
            raise ValueError(f"ocr reward: chunk must be >= 1 images per tesseract process, or null for an even split "
                             f"over the workers; got {chunk}")
        self.binary = tesseract_binary()
        self.workers, self.chunk, self.timeout = workers, chunk, timeout

    def read(self, images: np.ndarray) -> list[str]:
        """uint8 [B, H, W, 3] -> what tesseract reads on each image."""
        size = self.chunk or max(1, -(-len(images) // self.workers))  # default: one process per worker
        chunks = [images[i : i + size] for i in range(0, len(images), size)]
        with ThreadPoolExecutor(self.workers) as pool:
            reads = pool.map(lambda c: read_chunk(c, self.binary, text_world.ALPHABET, self.timeout), chunks)
            return [r for rs in reads for r in rs]

    def __call__(self, images, prompts, metadata=None) -> RewardOutput:
        targets = [text_world.parse_prompt(p).text for p in prompts]  # refuses a prompt outside the grammar first
        reads = self.read(tensor_to_images(images))
        scores = torch.tensor([ocr_score(t, r) for t, r in zip(targets, reads)], dtype=torch.float32)
        exact = torch.tensor([float(t == r) for t, r in zip(targets, reads)])
        return RewardOutput(scores, {"exact": exact, "read": reads})


@REWARDS.register("ocr", "1 - normalised edit distance between the prompt's text and tesseract's reading "
                  "(Flow-GRPO's OCR reward; needs the Debian package tesseract-ocr); options: workers, chunk (default: "
                  "an even split over the workers)")
def _ocr(workers: int = 2, chunk: int | None = None, timeout: float = 120.0):
    return OCRReward(workers, chunk, timeout)
