"""Metrics (RUN/metrics.jsonl + TensorBoard) and stage timing."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

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
    """One JSON object per line in RUN/metrics.jsonl, mirrored to TensorBoard (RUN/tb). On resume the
    lines past the checkpoint are dropped, so the file reads as if the run never stopped."""

    def __init__(self, run: Path, enabled: bool = True, resume_iteration: int | None = None):
        self.path = run / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        if resume_iteration is not None and self.path.exists():
            keep = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["iteration"] <= resume_iteration]
            self.path.write_text("".join(line + "\n" for line in keep))
        elif self.path.exists():
            self.path.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tb"))
        except ImportError:  # tensorboard is optional for library users
            self.tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "iteration":
                    self.tb.add_scalar(k, v, record["iteration"])
                elif isinstance(v, dict):
                    for kk, vv in v.items():
                        if isinstance(vv, (int, float)):
                            self.tb.add_scalar(f"{k}/{kk}", vv, record["iteration"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
