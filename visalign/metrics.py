"""Metrics (RUN/metrics.jsonl + experiment trackers: TensorBoard, wandb, ...) and stage timing."""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# Fields that measure the machine, not the run: they differ between identical runs.
TIMING_FIELDS = ("wall_s", "time_rollout_s", "time_reward_s", "time_update_s", "time_eval_s", "time_model_s")


class Stopwatch:
    """Accumulates seconds per named stage."""

    def __init__(self):
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        out, self.totals = self.totals, {}
        return out


class MetricsLog:
    """One JSON object per line in RUN/metrics.jsonl (the source of truth), mirrored to the experiment trackers
    `train.report_to` names (accelerate's: TensorBoard in RUN/tb by default, wandb, ...). On resume the lines past
    the checkpoint are dropped, so the file reads as if the run never stopped. Only the main process logs
    (enabled=False elsewhere), but every process checks the tracker names."""

    def __init__(self, run: Path, enabled: bool = True, resume_iteration: int | None = None,
                 report_to: str | tuple[str, ...] = "tensorboard", recipe: dict | None = None):
        from .distributed import make_trackers

        self.path = run / "metrics.jsonl"
        self.enabled = enabled
        self.trackers = make_trackers(report_to, run, resume_iteration, start=enabled)
        if not enabled:
            return
        if resume_iteration is not None and self.path.exists():
            keep = [line for line, record in metrics_lines(self.path) if record["iteration"] <= resume_iteration]
            self.path.write_text("".join(line + "\n" for line in keep))
        elif self.path.exists():
            self.path.unlink()
        if recipe is not None:
            self.log_recipe(recipe)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = tracker_scalars(record)
        for tracker in self.trackers:
            tracker.log(scalars, step=record["iteration"])

    def log_recipe(self, recipe: dict, step: int = 0) -> None:
        """The resolved recipe as hyperparameters (flattened 'train.lr' keys: the trackers' config / hparams
        views), and to TensorBoard also as YAML text, since its hparams tab shows values, not the whole file."""
        hparams = flat_hparams(recipe)
        text = "\n".join("    " + line for line in recipe_yaml(recipe).splitlines())  # a Markdown code block
        for tracker in self.trackers:
            tracker.store_init_configuration(hparams)
            if tracker.name == "tensorboard":
                tracker.log({"recipe": text}, step=step)

    def log_image(self, tag: str, path: Path, step: int) -> None:
        """An image file (the evaluation's sample grid) to every tracker that takes images."""
        if not self.enabled or not self.trackers:
            return
        from PIL import Image

        image = np.asarray(Image.open(path).convert("RGB"))  # [H, W, 3] uint8
        for tracker in self.trackers:
            if tracker.name == "tensorboard":  # SummaryWriter.add_images takes one batch array
                tracker.log_images({tag: image[None]}, step=step, dataformats="NHWC")
            elif hasattr(tracker, "log_images"):  # wandb, aim, swanlab...: a list of images
                tracker.log_images({tag: [image]}, step=step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def tracker_scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a metrics record as flat tracker tags ('eval_categories/colors'); strings, None and the
    step itself are left out."""
    out = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(tracker_scalars(v, key + "/"))
        elif isinstance(v, (int, float)) and key != "iteration":
            out[key] = int(v) if isinstance(v, bool) else v
    return out


def flat_hparams(tree: dict, prefix: str = "") -> dict:
    """A nested recipe as {'train.lr': 1e-4, ...} with scalar or string values (lists and None as JSON), the
    types trackers accept as hyperparameters; the keys read as the CLI's overrides."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat_hparams(v, key + "."))
        else:
            out[key] = v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
    return out


def recipe_yaml(recipe: dict) -> str:
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(recipe)), sort_keys=False)  # JSON first: tuples -> lists


class MetricsError(ValueError):
    """A metrics.jsonl that is corrupt before its last line (one-line message naming the file and line)."""


def _stderr_note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def metrics_lines(path: Path, note=_stderr_note) -> list[tuple[str, dict]]:
    """(line, record) of each record of a metrics.jsonl. A process killed mid-write leaves a partial last line
    (no newline after it): it is dropped with a note. Any other line that is not a record is corruption, refused
    naming the file and line."""
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MetricsError(f"{path} is not a metrics log (byte {e.start} is not UTF-8 text); the file is corrupt: "
                           f"restore it") from None
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1 and not text.endswith("\n"):
                note(f"{path} ends in a partial line (a run stopped while writing it); it is left out")
                break
            raise MetricsError(f"{path} line {i + 1} is not JSON ({e.msg}); the file is corrupt: restore it, or "
                               f"delete that line") from None
        if not isinstance(record, dict) or not isinstance(record.get("iteration"), int):
            raise MetricsError(f"{path} line {i + 1} is not a metrics record (a JSON object with an integer "
                               f"'iteration'); the file is corrupt: restore it, or delete that line")
        out.append((line, record))
    return out


def read_metrics(run: Path, note=_stderr_note) -> list[dict]:
    """The records of RUN/metrics.jsonl ([] when there is none); see metrics_lines for a damaged file."""
    return [record for _, record in metrics_lines(Path(run) / "metrics.jsonl", note)]


class ConsoleLog:
    """The commands' `log` (pretrain, make-pairs, compare): prints each message above any progress bar
    (tqdm.write, to stdout) and asks the loops it is passed to for a progress bar with ETA (progress_bar)."""

    progress = True

    def __call__(self, message: str = "", flush: bool = True) -> None:
        from tqdm import tqdm

        tqdm.write(str(message))


def progress_bar(log, total: int, desc: str, unit: str = "it"):
    """A tqdm bar with ETA (on stderr, as the trainer's) when `log` asks for one (ConsoleLog) and stderr is a
    terminal (tqdm's disable=None: no bar lines in a log file); else a disabled bar, whose update() does nothing."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True,
                disable=None if getattr(log, "progress", False) else True)
