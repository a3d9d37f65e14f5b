"""Checkpoints of a run: RUN/checkpoints/iter-NNNNNN/ written whole to a temp folder and renamed, then
RUN/checkpoints/latest (a one-line file) atomically pointed at it; older checkpoints beyond the `keep` newest
are removed after. A crash can leave `latest` naming a folder that is gone (or half removed) and `.tmp-*`
folders: resuming then takes the newest complete iter-NNNNNN folder (find_checkpoint).

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

from .runfolder import named_os_error


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


CHECKPOINT_FILES = ("weights.safetensors", "optimizer.pt", "state.json")  # what marks RUN/checkpoints/iter-NNNNNN
# one line in each checkpoint folder for whoever opens it in a file browser or hands it to diffusers
CHECKPOINT_README = ("This is a visalign training checkpoint (to resume the run), not a diffusers folder: export the "
                     "run (two folders up) with `visalign export RUN --format diffusers-lora --out DIR` "
                     "(or `--format merged`).\n")


def run_of_folder(path: str | os.PathLike) -> Path | None:
    """The run a folder is (RUN/), or whose checkpoints/ or checkpoint (RUN/checkpoints/iter-NNNNNN/) it is; None
    for any other folder. Such folders hold our training state, which diffusers' loaders read as nothing."""
    p = Path(path).expanduser()
    if (p / "recipe.json").is_file() or (p / "checkpoints" / "latest").is_file():
        return p
    if p.name == "checkpoints" and (p / "latest").is_file():
        return p.parent
    if all((p / f).is_file() for f in CHECKPOINT_FILES):
        return p.parent.parent
    return None


def not_a_diffusers_folder(path: str | os.PathLike, run: Path, use: str) -> str:
    """One line refusing a run (or checkpoint) folder where a diffusers folder is needed, naming the export that
    makes one. use: what the caller loads ("pipeline": a whole pipeline folder first; "lora": a LoRA first)."""
    merged = f"`visalign export {run} --format merged --out DIR` (a whole pipeline)"
    lora = f"`visalign export {run} --format diffusers-lora --out DIR` (a LoRA for pipe.load_lora_weights)"
    first, second = (merged, lora) if use == "pipeline" else (lora, merged)
    return (f"'{path}' is a visalign run or checkpoint folder, not a diffusers {use} folder (diffusers would load "
            f"nothing from it); export the run first: {first}, or {second}")


def save_checkpoint(run: Path, iteration: int, weights: dict[str, torch.Tensor], optimizer_state: dict,
                    state: dict, keep: int = 1, extra: dict[str, torch.Tensor] | None = None) -> Path:
    """`extra`: other tensors of the run's state (e.g. an EMA old model), kept apart from the weights."""
    ckdir = run / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    final = ckdir / f"iter-{iteration:06d}"
    tmp = Path(tempfile.mkdtemp(dir=ckdir, prefix=".tmp-"))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / "weights.safetensors"))
        with open(tmp / "optimizer.pt", "wb") as f:  # through Python's file: a full disk raises OSError(ENOSPC)
            torch.save(optimizer_state, f)
        if extra:
            save_file({k: v.detach().contiguous().cpu() for k, v in extra.items()}, str(tmp / "extra.safetensors"))
        rng = rng_state()
        save_file({"torch": rng["torch"]}, str(tmp / "rng.safetensors"))
        np_state = rng["numpy"]
        extra = {"numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
                 "python": [rng["python"][0], list(rng["python"][1]), rng["python"][2]]}
        (tmp / "state.json").write_text(json.dumps({**state, "iteration": iteration, "rng": extra}, indent=1))
        (tmp / "README.md").write_text(CHECKPOINT_README)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except Exception as e:  # a full disk (or another I/O failure) names the checkpoint being written
        named = named_os_error(e, final)
        if named is None:
            raise
        raise named from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    atomic_write_text(ckdir / "latest", final.name + "\n")
    _prune(ckdir, iteration, keep)
    return final


def _prune(ckdir: Path, iteration: int, keep: int) -> None:
    """Keep the `keep` newest checkpoints up to `iteration` (the one just written). Later ones are removed: a run
    resumed from an earlier checkpoint has dropped what came after it (as its metrics do). Leftover temp folders
    of a crashed write go too (only the main process writes checkpoints)."""
    older = sorted(it for it, _ in _iter_folders(ckdir) if it < iteration)
    drop = older[: max(0, len(older) - (keep - 1))] + [it for it, _ in _iter_folders(ckdir) if it > iteration]
    for it in drop:
        shutil.rmtree(ckdir / f"iter-{it:06d}", ignore_errors=True)
    for tmp in ckdir.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temps(run: Path) -> list[str]:
    """Remove what a killed process left half written in RUN: checkpoint temp folders (checkpoints/.tmp-*) and
    atomic-write temp files (.NAME.*.tmp, .NAME.tmp). Only called with the run's lock held, so no other process
    is writing them. -> the names removed."""
    ckdir = run / "checkpoints"
    stale = [*ckdir.glob(".tmp-*"), *ckdir.glob(".*.tmp"), *run.glob(".*.tmp"), *(run / "samples").glob(".*.tmp")]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return sorted(str(path.relative_to(run)) for path in stale)


RESUME_FILES = ("weights.safetensors", "optimizer.pt", "state.json", "rng.safetensors")  # what resuming reads
# what resuming reads from state.json (trainer._restore); a file without them was not written by save_checkpoint
STATE_KEYS = ("iteration", "rng", "recipe", "nfe", "wall_s", "bad_updates", "algorithm")


def _iter_folders(ckdir: Path) -> list[tuple[int, Path]]:
    """(iteration, folder) of every RUN/checkpoints/iter-NNNNNN folder, complete or not."""
    out = []
    for p in ckdir.glob("iter-*"):
        num = p.name[len("iter-"):]
        if p.is_dir() and num.isdigit():
            out.append((int(num), p))
    return sorted(out)


def is_complete(ck: Path) -> bool:
    """Whether a checkpoint folder holds every file a checkpoint has (a half-removed one does not)."""
    return ck.is_dir() and all((ck / name).is_file() for name in RESUME_FILES)


def has_checkpoint(run: Path) -> bool:
    """Whether RUN already holds a run's checkpoint (a `latest` pointer or a checkpoint folder)."""
    ckdir = run / "checkpoints"
    return (ckdir / "latest").exists() or bool(_iter_folders(ckdir))


def find_checkpoint(run: Path, checkpoint: str | Path | None = None) -> tuple[Path, str]:
    """The checkpoint to resume RUN from -> (folder, a note saying why it is not `latest`'s, or "").

    checkpoint None or "latest": the folder RUN/checkpoints/latest names, or, when that is missing or names a
    folder that is gone or incomplete (a crash mid-write or mid-removal), the newest complete iter-NNNNNN folder.
    A name (iter-000010) or path: that checkpoint folder of RUN."""
    ckdir = run / "checkpoints"
    if not run.is_dir():
        raise ResumeError(f"cannot resume: run folder {run} does not exist; start without --resume")
    if checkpoint is not None and str(checkpoint) != "latest":
        return _named_checkpoint(run, Path(checkpoint)), ""
    latest = ckdir / "latest"
    named = latest.read_text().strip() if latest.is_file() else ""
    if named and is_complete(ckdir / named):
        return ckdir / named, ""
    complete = [p for _, p in reversed(_iter_folders(ckdir)) if is_complete(p)]
    if not complete:
        raise ResumeError(f"cannot resume {run}: it has no complete checkpoint (no {ckdir}/iter-NNNNNN folder with "
                          f"{', '.join(RESUME_FILES)}); start without --resume")
    why = f"{latest} names {named}, which is missing or incomplete" if named else f"{latest} is missing"
    return complete[0], f"{why}; resuming from {complete[0].name}, the newest complete checkpoint"


def _named_checkpoint(run: Path, checkpoint: Path) -> Path:
    """--resume CHECKPOINT: a folder name under RUN/checkpoints or a path to one; it must be this run's."""
    ckdir = run / "checkpoints"
    ck = ckdir / checkpoint if len(checkpoint.parts) == 1 and not checkpoint.exists() else checkpoint
    if ck.resolve().parent != ckdir.resolve():
        raise ResumeError(f"cannot resume {run} from {checkpoint}: accepted: a checkpoint folder of this run "
                          f"({ckdir}/iter-NNNNNN), or no value for the newest")
    if not is_complete(ck):
        have = ", ".join(p.name for _, p in _iter_folders(ckdir) if is_complete(p)) or "none"
        raise ResumeError(f"cannot resume {run} from {checkpoint}: not a complete checkpoint folder; this run has: "
                          f"{have}")
    return ck


def load_checkpoint(run: Path, ck: Path | None = None) -> tuple[dict, dict, dict]:
    """-> (weights, optimizer_state, state) of checkpoint folder `ck` (default: find_checkpoint(run)); restores
    the RNG states. state["extra"] holds the extra tensors."""
    ck = ck if ck is not None else find_checkpoint(run)[0]
    try:
        weights = load_file(str(ck / "weights.safetensors"))
        optimizer_state = torch.load(ck / "optimizer.pt", weights_only=True)
        state = json.loads((ck / "state.json").read_text())
        torch_rng = load_file(str(ck / "rng.safetensors"))["torch"]
        state["extra"] = load_file(str(ck / "extra.safetensors")) if (ck / "extra.safetensors").exists() else {}
    except Exception as e:  # noqa: BLE001 - any unreadable file means the same thing to the user
        raise ResumeError(f"cannot resume {run}: checkpoint {ck.name} is unreadable ({type(e).__name__}: {e})") from None
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise ResumeError(f"cannot resume {run}: {ck / 'state.json'} lacks {', '.join(missing)} (it was not written by "
                          f"a visalign checkpoint, or was edited); resume from another checkpoint: --resume iter-NNNNNN")
    npst = state["rng"]["numpy"]
    py = state["rng"]["python"]
    set_rng_state({
        "torch": torch_rng,
        "numpy": (npst[0], np.array(npst[1], dtype=np.uint32), *npst[2:]),
        "python": (py[0], tuple(py[1]), py[2]),
    })
    return weights, optimizer_state, state
