"""Checkpoints of a run: RUN/checkpoints/iter-NNNNNN/ written whole to a temp folder and renamed, then
RUN/checkpoints/latest (a one-line file) atomically pointed at it; older checkpoints are removed after.

A checkpoint holds the trainable weights (the full model, or only the LoRA weights) in safetensors, the
optimizer state (torch.save of tensors only, loaded with weights_only=True), every RNG state, the
counters and the algorithm's state (e.g. per-prompt reward statistics) as JSON.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


class ResumeError(RuntimeError):
    """A run that cannot be resumed (one-line message)."""


EMA_PREFIX = "ema_weights."  # extra tensors: the EMA weights (train.ema_decay) under the weights' own names


def ema_weights(extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's EMA weights, named as its weights; {} when the run kept none."""
    return {k[len(EMA_PREFIX):]: v for k, v in extra.items() if k.startswith(EMA_PREFIX)}


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(run: Path, iteration: int, weights: dict[str, torch.Tensor], optimizer_state: dict,
                    state: dict, keep: int = 1, extra: dict[str, torch.Tensor] | None = None) -> Path:
    """`extra`: other tensors of the run's state (e.g. an EMA old model), kept apart from the weights."""
    ckdir = run / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    final = ckdir / f"iter-{iteration:06d}"
    tmp = Path(tempfile.mkdtemp(dir=ckdir, prefix=".tmp-"))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / "weights.safetensors"))
        torch.save(optimizer_state, tmp / "optimizer.pt")
        if extra:
            save_file({k: v.detach().contiguous().cpu() for k, v in extra.items()}, str(tmp / "extra.safetensors"))
        rng = rng_state()
        save_file({"torch": rng["torch"]}, str(tmp / "rng.safetensors"))
        np_state = rng["numpy"]
        extra = {"numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
                 "python": [rng["python"][0], list(rng["python"][1]), rng["python"][2]]}
        (tmp / "state.json").write_text(json.dumps({**state, "iteration": iteration, "rng": extra}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    atomic_write_text(ckdir / "latest", final.name + "\n")
    old = sorted(p for p in ckdir.glob("iter-*") if p != final)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def load_checkpoint(run: Path) -> tuple[dict, dict, dict]:
    """-> (weights, optimizer_state, state); restores the RNG states. state["extra"] holds the extra tensors."""
    latest = run / "checkpoints" / "latest"
    if not run.is_dir():
        raise ResumeError(f"cannot resume: run folder {run} does not exist; start without --resume")
    if not latest.is_file():
        raise ResumeError(f"cannot resume {run}: it has no checkpoint ({latest} is missing); start without --resume")
    ck = run / "checkpoints" / latest.read_text().strip()
    try:
        weights = load_file(str(ck / "weights.safetensors"))
        optimizer_state = torch.load(ck / "optimizer.pt", weights_only=True)
        state = json.loads((ck / "state.json").read_text())
        torch_rng = load_file(str(ck / "rng.safetensors"))["torch"]
        state["extra"] = load_file(str(ck / "extra.safetensors")) if (ck / "extra.safetensors").exists() else {}
    except Exception as e:  # noqa: BLE001 - any unreadable file means the same thing to the user
        raise ResumeError(f"cannot resume {run}: checkpoint {ck.name} is unreadable ({type(e).__name__}: {e})") from None
    npst = state["rng"]["numpy"]
    py = state["rng"]["python"]
    set_rng_state({
        "torch": torch_rng,
        "numpy": (npst[0], np.array(npst[1], dtype=np.uint32), *npst[2:]),
        "python": (py[0], tuple(py[1]), py[2]),
    })
    return weights, optimizer_state, state
