"""train.report_to: accelerate's experiment trackers beside RUN/metrics.jsonl. TensorBoard (RUN/tb) gets every
number of metrics.jsonl, each evaluation's sample grid and the recipe (text + hparams); 'none' writes no RUN/tb;
a bad name is refused in one line; the tracker choice leaves metrics.jsonl as it is; wandb offline writes its files."""

import importlib.util
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from visalign.cli import main
from visalign.rewards.base import REWARDS, Reward
from visalign.metrics import TIMING_FIELDS, read_metrics
from visalign.types import RewardOutput

EventAccumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator").EventAccumulator
ALL = {"scalars": 0, "images": 0, "tensors": 0}  # size guidance 0: keep every event, not a sample


class _Brightness(Reward):
    """Test reward: mean brightness, a dense signal that always varies."""

    def __call__(self, images, prompts, metadata=None):
        return RewardOutput(images.float().mean(dim=(1, 2, 3)))


if "tracking_brightness" not in REWARDS:
    REWARDS.register("tracking_brightness")(lambda: _Brightness())


@pytest.fixture
def tiny_dir(tiny_flow_model, tmp_path):
    path = tmp_path / "tiny"
    tiny_flow_model.save_pretrained(path)
    return path


def _train(tiny_dir, out, *extra, iterations=2):
    over = [f"model={tiny_dir}", "train.batch_size=8", "train.group_size=4", "train.eval_per_category=1",
            "sampling.steps=3", "reward=tracking_brightness", "eval.judges=[]", "train.eval_every=2",
            "train.checkpoint_every=2", f"train.iterations={iterations}", *extra]
    return main(["train", "geneval-s-grpo", *over, "--out", str(out)])


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS and not k.startswith("time_")} for r in rows]


def _numbers(record, prefix=""):
    """metrics.jsonl's numbers as the TensorBoard tags they should appear under."""
    out = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update(_numbers(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and k != "iteration":
            out[prefix + k] = float(v)
    return out


def _events(folder):
    acc = EventAccumulator(str(folder), size_guidance=ALL)
    acc.Reload()
    return acc


def test_tensorboard_holds_the_metrics_the_sample_grids_and_the_recipe(tiny_dir, tmp_path):
    run = tmp_path / "run"
    assert _train(tiny_dir, run) == 0
    acc, rows = _events(run / "tb"), read_metrics(run)
    # every number of every metrics.jsonl line, at its iteration (float32 in the event file)
    expected = {}
    for row in rows:
        for tag, v in _numbers(row).items():
            expected.setdefault(tag, []).append((row["iteration"], v))
    assert {"reward_mean", "loss", "eval_overall", "eval_categories/colors"} <= expected.keys()
    assert set(acc.Tags()["scalars"]) == expected.keys()
    for tag, want in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in want], tag
        np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6, atol=1e-7, err_msg=tag)

    # one image per evaluation (iterations 0 and 2), the very grid saved in RUN/samples
    images = acc.Images("eval_samples")
    assert [e.step for e in images] == [r["iteration"] for r in rows if "eval_overall" in r] == [0, 2]
    for e in images:
        logged = np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB"))
        saved = np.asarray(Image.open(run / "samples" / f"iter-{e.step:06d}.png").convert("RGB"))
        assert np.array_equal(logged, saved)

    # the resolved recipe: YAML text in the text tab, and hparams (TensorBoard writes them to a sub-run)
    (text,) = acc.Tensors("recipe/text_summary")
    text = text.tensor_proto.string_val[0].decode()
    assert "reward: tracking_brightness" in text and "report_to: tensorboard" in text and "iterations: 2" in text
    from tensorboard.plugins.hparams import plugin_data_pb2

    (sub,) = [p.parent for p in (run / "tb").glob("*/events.out.tfevents.*")]
    content = _events(sub).PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["train.iterations"].number_value == 2 and hparams["model"].string_value == str(tiny_dir)
    assert json.loads(hparams["train.lora_targets"].string_value) == ["to_q", "to_k", "to_v", "to_out"]


def test_report_to_none_writes_no_tensorboard_and_the_same_metrics(tiny_dir, tmp_path):
    assert _train(tiny_dir, tmp_path / "tb") == 0
    assert _train(tiny_dir, tmp_path / "none", "train.report_to=none") == 0
    assert (tmp_path / "tb" / "tb").is_dir() and not (tmp_path / "none" / "tb").exists()
    rows = _strip(read_metrics(tmp_path / "tb"))
    assert [r["iteration"] for r in rows] == [0, 1, 2] and rows == _strip(read_metrics(tmp_path / "none"))


def test_resumed_run_shows_each_iteration_once_in_tensorboard(tiny_dir, tmp_path):
    """A run that logged iteration 3 but whose last checkpoint is at 2 resumes at 3: TensorBoard hides the stale
    iteration 3, as metrics.jsonl drops its line."""
    run = tmp_path / "run"
    assert _train(tiny_dir, run, iterations=2) == 0
    shutil.copytree(run / "checkpoints", tmp_path / "at-2")
    assert _train(tiny_dir, run, "--resume", iterations=3) == 0
    shutil.rmtree(run / "checkpoints")  # as if killed before the checkpoint at 3 was written
    shutil.copytree(tmp_path / "at-2", run / "checkpoints")
    assert _train(tiny_dir, run, "--resume", iterations=4) == 0
    rows = read_metrics(run)
    got = [(e.step, e.value) for e in _events(run / "tb").Scalars("reward_mean")]
    assert [s for s, _ in got] == [1, 2, 3, 4] == [r["iteration"] for r in rows[1:]]
    np.testing.assert_allclose([v for _, v in got], [r["reward_mean"] for r in rows[1:]], rtol=1e-6)


def _not_installed():
    return next((n for n in ("comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")
                 if importlib.util.find_spec(n) is None), None)


@pytest.mark.parametrize("value, needles", [
    ("nosuch", ["unknown tracker 'nosuch'", "accepted: none, all,", "tensorboard", "wandb"]),
    ("tensorboard,none", ["'none' cannot be combined with tensorboard"]),
    ("NOT_INSTALLED", ["is not installed (pip install", "installed: tensorboard"]),
])
def test_bad_tracker_is_refused_in_one_line(tiny_dir, tmp_path, capsys, value, needles):
    if value == "NOT_INSTALLED":
        value = _not_installed() or pytest.skip("every tracker accelerate knows is installed")
        needles = [f"tracker '{value}'", *needles]
    assert _train(tiny_dir, tmp_path / "run", f"train.report_to={value}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("visalign train: error: train.report_to:"), err
    assert all(n in err for n in needles), err


def test_wandb_offline_run_writes_its_files(tiny_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    assert _train(tiny_dir, run, "train.report_to=[wandb, tensorboard]") == 0
    (folder,) = (run / "wandb").glob("offline-run-*")
    (log,) = folder.glob("run-*.wandb")
    assert log.stat().st_size > 0
    media = list((folder / "files" / "media" / "images").rglob("*.png"))
    assert len(media) == 2  # the sample grids of evaluations 0 and 2
    assert (run / "tb").is_dir() and len(read_metrics(run)) == 3
