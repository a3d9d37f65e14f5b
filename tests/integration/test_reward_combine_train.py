"""`combine` and `remote` inside `visalign train`: each component logged in metrics.jsonl and shown in the
report; a remote reward whose server is gone skips the updates under on_failure=drop (one warning line per
batch), stops the run with a one-line error under on_failure=stop."""

import json
import logging

from visalign.cli import main
from visalign.rewards.base import REWARDS, Reward
from visalign.types import RewardOutput


class _Bright(Reward):
    """Mean brightness; rollouts come with the trainer's grouping, held-out evaluations (the training reward on
    the eval images, for the hacking monitor) without."""

    needs_text = False
    grouped = 0

    def __call__(self, images, prompts, metadata=None):
        if metadata is not None:
            assert metadata["group_ids"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # the trainer passes the grouping
            _Bright.grouped += 1
        return RewardOutput(images.float().mean(dim=(1, 2, 3)))


if "test_group_brightness" not in REWARDS:
    REWARDS.register("test_group_brightness")(lambda: _Bright())


def _over(tiny_dir, run, *extra):
    return ["train", "geneval-s-grpo", f"model={tiny_dir}", "train.batch_size=8", "train.group_size=4",
            "train.eval_per_category=1", "sampling.steps=3", "train.iterations=2", "train.checkpoint_every=2",
            "train.eval_every=2", "train.diagnose_every=0", *extra, "--out", str(run)]


def test_combine_components_are_logged_and_reported(tiny_flow_model, tmp_path):
    tiny_flow_model.save_pretrained(tmp_path / "tiny")
    run = tmp_path / "run"
    grouped = _Bright.grouped
    assert main(_over(tmp_path / "tiny", run, "reward=combine",
                      "reward_options.components.test_group_brightness.weight=1.0",
                      "reward_options.components.geneval_s.weight=0.5")) == 0
    assert _Bright.grouped - grouped == 2  # one grouped call per rollout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][1:]
    assert len(rows) == 2
    for r in rows:
        assert {"reward_test_group_brightness", "reward_geneval_s"} <= set(r)
        assert -1 <= r["reward_test_group_brightness"] <= 1 and 0 <= r["reward_geneval_s"] <= 1
        assert abs(r["reward_mean"]) < 1e-4  # group-standardised components sum to zero mean per group
    html = (run / "report.html").read_text()
    assert "Reward components" in html and "test_group_brightness" in html


def test_remote_reward_with_a_dead_server_drops_or_stops(tiny_flow_model, tmp_path, caplog, capsys, free_port):
    tiny_flow_model.save_pretrained(tmp_path / "tiny")
    url = f"http://127.0.0.1:{free_port}"  # nothing listens there
    opts = [f"reward_options.url={url}", "reward_options.retries=1", "reward_options.backoff=0.01"]
    with caplog.at_level(logging.WARNING, logger="visalign.rewards.remote"):
        assert main(_over(tmp_path / "tiny", tmp_path / "drop", "reward=remote", *opts,
                          "reward_options.on_failure=drop", "train.max_bad_updates=5")) == 0
    rows = [json.loads(line) for line in (tmp_path / "drop" / "metrics.jsonl").read_text().splitlines()][1:]
    assert [r["loss"] for r in rows] == [None, None]  # both updates skipped
    drops = [r for r in caplog.records if "batch dropped" in r.getMessage()]
    assert len(drops) >= 2 and all("\n" not in r.getMessage() for r in drops)
    capsys.readouterr()
    assert main(_over(tmp_path / "tiny", tmp_path / "stop", "reward=remote", *opts, "reward_options.on_failure=stop")) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]  # (the progress bar aside)
    assert len(errors) == 1 and "on_failure=stop" in errors[0] and url in errors[0]
