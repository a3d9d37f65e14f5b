"""Preference-pair datasets on disk, for offline preference optimisation (Diffusion-DPO).

`visalign make-pairs` is our stand-in for Pick-a-Pic: it samples several images per train prompt from a
model, ranks them with a reward, and keeps (better, worse) pairs. The dataset is a plain folder, readable
without visalign:

  DIR/meta.json     {"format": "visalign-pairs/1", "model", "reward", "prompts", "pairs", ...}
  DIR/pairs.jsonl   one pair per line: {"prompt", "chosen", "rejected", "score_chosen", "score_rejected", "seed"}
                    (image paths relative to DIR)
  DIR/images/*.png  the images (uint8 RGB)

It is written into a temporary folder beside DIR and renamed at the end, so DIR is whole or absent.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from .images import images_to_tensor
from .math.advantages import pair_within_groups

FORMAT = "visalign-pairs/1"


class PairDataError(ValueError):
    """A pairs dataset that cannot be read (one-line message)."""


def _json_line(index: Path, i: int, line: str) -> dict:
    """One pair of pairs.jsonl; a line that is not a JSON object is refused naming the file and line."""
    try:
        pair = json.loads(line)
    except json.JSONDecodeError as e:
        raise PairDataError(f"'{index}' line {i + 1} is not JSON ({e.msg}); accepted: one JSON object per line") from None
    if not isinstance(pair, dict):
        raise PairDataError(f"'{index}' line {i + 1} is not a JSON object; accepted: one object per line")
    return pair


class PairDataset:
    """The pairs of a dataset folder; `batch()` draws a seeded batch of them."""

    def __init__(self, path: str | os.PathLike):
        self.root = Path(path)
        meta, index = self.root / "meta.json", self.root / "pairs.jsonl"
        if not meta.is_file() or not index.is_file():
            raise PairDataError(f"'{path}' is not a pairs dataset (no meta.json and pairs.jsonl); make one with "
                                f"`visalign make-pairs --out DIR`")
        self.meta = json.loads(meta.read_text())
        if self.meta.get("format") != FORMAT:
            raise PairDataError(f"'{path}' has format {self.meta.get('format')!r}; accepted: {FORMAT!r}")
        self.pairs = [_json_line(index, i, line) for i, line in enumerate(index.read_text().splitlines()) if line.strip()]
        if not self.pairs:
            raise PairDataError(f"'{path}' holds no pairs")
        for i, p in enumerate(self.pairs):
            missing = [k for k in ("prompt", "chosen", "rejected") if k not in p]
            if missing:
                raise PairDataError(f"'{index}' line {i + 1} lacks {', '.join(missing)}")
            for key in ("chosen", "rejected"):
                self._check_inside(p[key], f"'{index}' line {i + 1} {key}")

    def _check_inside(self, rel, where: str) -> None:
        """An image path of the index must stay inside the dataset folder: a dataset from elsewhere must not make
        the trainer read other files (an absolute path, `..`, or a link out of the folder)."""
        if not isinstance(rel, str) or not rel:
            raise PairDataError(f"{where} is {rel!r}; accepted: an image path relative to the dataset folder")
        path = Path(rel)
        if path.is_absolute() or ".." in path.parts or not (self.root / path).resolve().is_relative_to(
                self.root.resolve()):
            raise PairDataError(f"{where} is '{rel}', outside the dataset folder; accepted: a path relative to "
                                f"'{self.root}' without '..' (e.g. images/000000-chosen.png)")

    def __len__(self) -> int:
        return len(self.pairs)

    def _image(self, rel: str) -> np.ndarray:
        from PIL import Image

        path = self.root / rel
        if not path.is_file():
            raise PairDataError(f"pairs dataset '{self.root}' lists a missing image: {rel}")
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except (Image.UnidentifiedImageError, OSError) as e:  # not an image, or cut short (a copy that stopped)
            raise PairDataError(f"pairs dataset '{self.root}' lists {rel}, which is not a readable image "
                                f"({type(e).__name__}); accepted: PNG images as `visalign make-pairs` writes") from None

    def batch(self, seed: int, iteration: int, n: int) -> tuple[torch.Tensor, list[str], torch.Tensor, list[int]]:
        """n pairs drawn with the generator (seed, iteration) (without replacement when the dataset is large
        enough). -> images [2n, 3, H, W] in [-1, 1] as (chosen, rejected) per pair, prompts (2n),
        preference [2n] (1 chosen, 0 rejected), seeds (2n; a pair shares one, so it shares its noise)."""
        rng = np.random.default_rng([seed, iteration])
        idx = rng.choice(len(self.pairs), size=n, replace=n > len(self.pairs))
        seeds = rng.integers(0, 2**62, size=n)
        images, prompts, pref, out_seeds = [], [], [], []
        for i, s in zip(idx.tolist(), seeds.tolist()):
            p = self.pairs[i]
            images += [self._image(p["chosen"]), self._image(p["rejected"])]
            prompts += [p["prompt"]] * 2
            pref += [1.0, 0.0]
            out_seeds += [int(s)] * 2
        return images_to_tensor(np.stack(images)), prompts, torch.tensor(pref), out_seeds


def make_pairs(generator, reward, prompts: list[str], per_prompt: int, seed: int, out: str | os.PathLike,
               meta: dict, log=print) -> dict:
    """Sample `per_prompt` images of each prompt with `generator` (.generate(prompts, seeds) -> uint8 images),
    score them with `reward`, and write the pairs of each prompt's samples (i-th best vs i-th worst, equal
    scores dropped: math/advantages.py pair_within_groups) as a dataset at `out`. -> the metadata written.
    A `log` that asks for one (metrics.py ConsoleLog) gets a progress bar with ETA on a terminal."""
    from PIL import Image

    out = Path(out)
    if out.exists():
        raise PairDataError(f"'{out}' already exists; choose another --out (a dataset is written whole, never over)")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    from .metrics import progress_bar

    bar = progress_bar(log, len(prompts), "make-pairs", "prompt")
    try:
        lines, n_pairs, chunk = [], 0, max(1, 128 // per_prompt)  # prompts per generate() call
        for k in range(0, len(prompts), chunk):
            batch = [p for p in prompts[k : k + chunk] for _ in range(per_prompt)]  # groups of per_prompt
            seeds = [int(s) for s in rng.integers(0, 2**62, size=len(batch))]
            imgs = generator.generate(batch, seeds)  # [n, H, W, 3] uint8
            scores = reward(images_to_tensor(imgs), batch).scores.float()  # [n]
            chosen, rejected = pair_within_groups(scores, per_prompt)
            for w, l in zip(chosen.tolist(), rejected.tolist()):
                names = []
                for tag, j in (("chosen", w), ("rejected", l)):
                    name = f"images/{n_pairs:06d}-{tag}.png"
                    Image.fromarray(imgs[j]).save(tmp / name)
                    names.append(name)
                lines.append(json.dumps({"prompt": batch[w], "chosen": names[0], "rejected": names[1],
                                         "score_chosen": float(scores[w]), "score_rejected": float(scores[l]),
                                         "seed": seeds[w]}))
                n_pairs += 1
            bar.update(len(prompts[k : k + chunk]))
            bar.set_postfix(pairs=n_pairs)
            if bar.disable:  # no bar (not a terminal): a line per chunk
                log(f"{min(k + chunk, len(prompts))}/{len(prompts)} prompts, {n_pairs} pairs")
        if n_pairs == 0:
            raise PairDataError("no pair had two different rewards; sample more images per prompt (--per-prompt)")
        meta = {"format": FORMAT, **meta, "pairs": n_pairs, "per_prompt": per_prompt, "seed": seed,
                "prompts_sampled": len(prompts)}
        (tmp / "pairs.jsonl").write_text("\n".join(lines) + "\n")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        os.replace(tmp, out)
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return meta
