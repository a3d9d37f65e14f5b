"""OCR accuracy, the text-rendering reward of Flow-GRPO (Liu et al., 2025): reward = 1 - the normalised edit
distance between the prompt's text and what the real tesseract (Debian package `tesseract-ocr`) reads,
  r = 1 - Levenshtein(target, read) / max(len(target), len(read)),   in [0, 1], 1 = read exactly.

Each image goes to tesseract as a grey image upscaled 4x (bicubic) with a white margin, read as one text line
(page segmentation mode 7) through a whitelist of the world's OCR alphabet. The reading is done by a pool of
persistent worker processes (rewards/tesseract_worker.py: tesseract's own library through its C API), one per
worker thread, each reading its even share of the batch: starting tesseract costs ~35 readings of a sign, so it
is paid once per worker, not once per batch, and a crash inside tesseract ends a worker, not the training.
64 signs of the text model read in 0.21 s on 2 workers against 0.39 s with one `tesseract` command per worker
and batch (the same readings; AMD EPYC, 2 cores; benchmarks/ocr_reward_speed.py).

Options psm and preprocess give a second, independent reading to judge a run trained on the first (a model can
learn images that fool one reading): `psm=8, preprocess="otsu-crop"` reads the word without tesseract's line
finder, on an image binarised and cropped by OpenCV instead of tesseract, at another scale. It reads clean
renders of the held-out words exactly (tested), yet reads many of the text model's signs differently
(docs/results/reward-hacking.md).
"""

from __future__ import annotations

import ctypes.util
import os
import re
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch

from ..config import PositiveFloat
from ..images import tensor_to_images
from ..prompts import PromptError
from ..types import RewardOutput
from .base import REWARDS, Reward
from .tesseract_worker import READY

UPSCALE, MARGIN = 4, 16  # tesseract reads capitals best at ~30-50 px high; our capitals are ~12 px
# page segmentation modes that fit one short word (tesseract --help-psm); the others find columns, blocks or
# sparse text (0-5, 11, 12), read one character (10) or a circle (9). With tesseract 5's LSTM, 8 and 13 read our
# signs the same (both hand the whole image to the network, without the line finder of 6 and 7)
PSMS = {6: "a uniform block of text", 7: "one text line", 8: "one word", 13: "one raw line"}
PREPROCESS = ("none", "otsu-crop")
WORKER_SCRIPT = Path(__file__).with_name("tesseract_worker.py")
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # what tesseract may read (its whitelist): a target must be written in it
_QUOTED = re.compile(r'"([^"]*)"')


def target_text(prompt: str) -> str:
    """The text a prompt asks the image to show: the one double-quoted part (`a sign that says "CAT"` -> CAT, as
    Flow-GRPO's OCR prompts give it), in ALPHABET; anything else -> a one-line PromptError."""
    found = _QUOTED.findall(prompt)
    if len(found) != 1 or not found[0]:
        raise PromptError(f"prompt {prompt!r} does not name one text to read; accepted: the text in double quotes, "
                          f'e.g. a sign that says "CAT" (capital letters A-Z)')
    bad = sorted({c for c in found[0] if c not in ALPHABET})
    if bad:
        raise PromptError(f"text {found[0]!r} has characters outside the OCR alphabet: {''.join(bad)!r}; accepted: "
                          f"capital letters A-Z")
    return found[0]


class TesseractMissing(RuntimeError):
    """tesseract's library is not installed (message is one line)."""


def tesseract_library() -> str:
    """The name the dynamic loader knows tesseract's library by (libtesseract.so.5 on Debian)."""
    name = ctypes.util.find_library("tesseract")
    if name is None:
        raise TesseractMissing("the ocr reward needs tesseract's library (libtesseract), which is not installed; "
                               "install the Debian package tesseract-ocr (apt-get install -y tesseract-ocr)")
    return name


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


def to_grey(image: np.ndarray, preprocess: str = "none") -> np.ndarray:
    """uint8 [H, W, 3] -> the uint8 grey image tesseract reads: "none" [UPSCALE H + 2 MARGIN, UPSCALE W + 2 MARGIN],
    "otsu-crop" the ink's box (otsu_crop)."""
    g = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)  # [H, W]
    if preprocess == "otsu-crop":
        return otsu_crop(g)
    g = cv2.resize(g, (g.shape[1] * UPSCALE, g.shape[0] * UPSCALE), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(cv2.copyMakeBorder(g, MARGIN, MARGIN, MARGIN, MARGIN, cv2.BORDER_CONSTANT, value=255))


def otsu_crop(grey: np.ndarray) -> np.ndarray:
    """The second reading's preprocessing, unlike the first's at each step: upscaled 2x (cubic, so the threshold
    follows smooth stroke edges), binarised by OpenCV's global Otsu threshold (black ink on white) rather than by
    tesseract, cropped to the ink's bounding box with a margin of half its height. The crop matters for psm 8 and
    13, which have no line finder: tesseract's LSTM scales the whole image to its line height, and a 12-px word in
    a 32-px sign shrinks too far (uncropped, psm 8 misreads some clean renders; cropped, it reads them all)."""
    g = cv2.resize(grey, (grey.shape[1] * 2, grey.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
    g = cv2.threshold(g, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1]
    ys, xs = np.nonzero(g == 0)
    if len(ys):  # a blank image stays whole (and reads as nothing)
        g = g[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    m = max(4, g.shape[0] // 2)
    return np.ascontiguousarray(cv2.copyMakeBorder(g, m, m, m, m, cv2.BORDER_CONSTANT, value=255))


class TesseractWorker:
    """One persistent reader process (tesseract_worker.py), started on first use and again after it ends.

    Requests are pipelined (the next image is on its way while tesseract reads one), and every wait on the
    pipes is bounded by `timeout` seconds. A worker killed by a signal while reading an image (tesseract 5's
    SIGFPE on some noise-like images) makes that image read as nothing and is restarted for the rest; any other
    failure (its exit status and the end of its stderr) is an error, never a zero reward."""

    AHEAD = 2  # requests in flight

    def __init__(self, library: str, whitelist: str, timeout: float, command: list[str] | None = None,
                 psm: int = 7):
        self.command = command or [sys.executable, str(WORKER_SCRIPT), library, whitelist, str(psm)]
        self.timeout, self.proc, self.stderr = timeout, None, None

    def start(self) -> None:
        self.stderr = tempfile.TemporaryFile()  # tesseract's warnings; read back only to explain a failure
        self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     env={**os.environ, "OMP_THREAD_LIMIT": "1"})  # parallelism comes from the pool
        try:
            ready = self._receive(len(READY))
        except EOFError:
            ready = b""
        if ready != READY:
            raise self._failed()

    def read(self, greys: list[np.ndarray]) -> list[str]:
        """uint8 images [h, w] -> the text tesseract reads on each, whitespace removed (one line of capitals)."""
        reads: list[str] = []
        while len(reads) < len(greys):
            if self.proc is None or self.proc.poll() is not None:  # first use, or it ended since
                self.close()
                self.start()
            try:
                for text in self._pipelined(greys[len(reads):]):
                    reads.append("".join(text.split()))
            except EOFError:  # it ended while reading image len(reads): the replies before it all came
                if self.proc.wait() >= 0:
                    raise self._failed() from None
                self.close()
                reads.append("")  # killed by a signal on this image: it reads as nothing
            except BaseException:  # (an interrupt, say) requests may be left unanswered: a fresh worker next time
                self.close()
                raise
        return reads

    def _pipelined(self, greys: list[np.ndarray]):
        sent, alive = 0, True
        for k in range(len(greys)):
            while alive and sent < min(len(greys), k + self.AHEAD):
                try:
                    self._send(struct.pack("<II", *greys[sent].shape) + greys[sent].tobytes())
                    sent += 1
                except BrokenPipeError:  # it ended: its replies so far say on which image
                    alive = False
            yield self._receive(struct.unpack("<I", self._receive(4))[0]).decode(errors="replace")

    def _wait(self, fd: int, writing: bool, deadline: float) -> None:
        reading_fds, writing_fds = ([], [fd]) if writing else ([fd], [])
        if not any(select.select(reading_fds, writing_fds, [], max(0.0, deadline - time.monotonic()))):
            self.close()
            raise RuntimeError(f"tesseract did not answer within {self.timeout:g} s (reward option timeout)")

    def _send(self, data: bytes) -> None:
        fd, deadline, view = self.proc.stdin.fileno(), time.monotonic() + self.timeout, memoryview(data)
        while view:
            self._wait(fd, True, deadline)
            view = view[os.write(fd, view[: select.PIPE_BUF]) :]  # writable = PIPE_BUF bytes free: never blocks

    def _receive(self, n: int) -> bytes:
        fd, deadline, out = self.proc.stdout.fileno(), time.monotonic() + self.timeout, b""
        while len(out) < n:
            self._wait(fd, False, deadline)
            chunk = os.read(fd, n - len(out))
            if not chunk:
                raise EOFError
            out += chunk
        return out

    def _failed(self) -> RuntimeError:
        code = self.proc.wait()
        self.stderr.seek(0)
        said = " ".join(self.stderr.read().decode(errors="replace").split())[-200:]
        self.close()
        return RuntimeError(f"tesseract failed (exit {code}): {said}")

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # idle or dead: nothing is lost
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout, self.stderr):
                f.close()
        self.proc = None


def read_with_command(images: np.ndarray, command: str = "tesseract", psm: int = 7,
                      preprocess: str = "none") -> list[str]:
    """uint8 [B, H, W, 3] -> what one `tesseract` command reads on each image (a list of PNG files, one page
    each): the reference the workers are tested and benchmarked against, and how this reward read before them."""
    with tempfile.TemporaryDirectory(prefix="visalign-ocr-") as d:
        paths = [os.path.join(d, f"{i:05d}.png") for i in range(len(images))]
        for path, img in zip(paths, images):
            cv2.imwrite(path, to_grey(img, preprocess))
        with open(os.path.join(d, "pages.txt"), "w") as f:
            f.write("\n".join(paths) + "\n")
        res = subprocess.run([command, os.path.join(d, "pages.txt"), "stdout", "--psm", str(psm), "-c",
                              f"tessedit_char_whitelist={ALPHABET}"], capture_output=True, check=True,
                             env={**os.environ, "OMP_THREAD_LIMIT": "1"})
    return ["".join(page.split()) for page in res.stdout.decode(errors="replace").split("\f")[: len(images)]]


class OCRReward(Reward):
    """Scores images against the word of a `a sign that says "WORD"` prompt (or any prompt with its text in double quotes: target_text)."""

    name = "ocr"
    differentiable = False
    needs_text = True
    value_range = (0.0, 1.0)

    def __init__(self, workers: int = 2, timeout: float = 120.0, psm: int = 7, preprocess: str = "none"):
        if workers < 1:
            raise ValueError(f"ocr reward: workers must be >= 1, got {workers}")
        if psm not in PSMS:
            raise ValueError(f"ocr reward: psm must be one of "
                             f"{', '.join(f'{k} ({v})' for k, v in PSMS.items())}, got {psm!r}")
        if preprocess not in PREPROCESS:
            raise ValueError(f"ocr reward: preprocess must be one of {', '.join(PREPROCESS)}, got {preprocess!r}")
        library = tesseract_library()
        self.preprocess = preprocess
        self.pool = [TesseractWorker(library, ALPHABET, timeout, psm=int(psm)) for _ in range(workers)]
        self.lock = threading.Lock()  # a worker's pipe carries one batch at a time: callers on threads take turns

    def read(self, images: np.ndarray) -> list[str]:
        """uint8 [B, H, W, 3] -> what tesseract reads on each image; worker k reads the k-th of even shares."""
        shares = np.array_split(images, len(self.pool))  # sizes differ by at most one
        with self.lock, ThreadPoolExecutor(len(self.pool)) as threads:  # the work is in the worker processes
            reads = threads.map(lambda w, s: w.read([to_grey(im, self.preprocess) for im in s]), self.pool, shares)
            return [r for rs in reads for r in rs]

    def __call__(self, images, prompts, metadata=None) -> RewardOutput:
        targets = [target_text(p) for p in prompts]  # refuses a prompt without a readable text first
        reads = self.read(tensor_to_images(images))
        scores = torch.tensor([ocr_score(t, r) for t, r in zip(targets, reads)], dtype=torch.float32)
        exact = torch.tensor([float(t == r) for t, r in zip(targets, reads)])
        return RewardOutput(scores, {"exact": exact, "read": reads})

    def __del__(self):
        for w in getattr(self, "pool", []):
            w.close()


@REWARDS.register("ocr", "1 - normalised edit distance between the prompt's text and tesseract's reading "
                  "(Flow-GRPO's OCR reward; needs the Debian package tesseract-ocr); options: workers (persistent "
                  "tesseract processes, default 2), timeout (seconds per image), psm (page segmentation mode: 6 = "
                  "one block, 7 = one line (default), 8 = one word, 13 = one raw line), preprocess (none (default) "
                  "or otsu-crop: 2x, OpenCV's Otsu binarisation, cropped to the ink); the judge of a run trained on "
                  "the default: psm 8, preprocess otsu-crop")
def _ocr(workers: int = 2, timeout: PositiveFloat = 120.0, psm: int = 7, preprocess: str = "none"):
    return OCRReward(workers, timeout, psm, preprocess)
