"""The out-of-tree plugin (examples/plugin): `visalign train` and `visalign eval` find a user's reward, algorithm and
model by `package.module:Name`, with the package on PYTHONPATH and nothing registered or edited in visalign."""

import json
import os
import subprocess
import sys
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[2] / "examples" / "plugin"


def _visalign(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGIN), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "visalign.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_train_and_eval_with_plugin_specs(tmp_path):
    run = tmp_path / "run"
    res = _visalign("train", "geneval-s-grpo", "model=visalign_example_plugin.models:tiny_flow?width=8",
                    "reward=visalign_example_plugin.rewards:Saturation", "reward_options.power=2",
                    "algorithm=visalign_example_plugin.algos:RankGRPO", "algorithm_options.scale=1",
                    "train.iterations=1", "train.batch_size=4", "train.group_size=2", "sampling.steps=2",
                    "train.eval_per_category=1", "eval.judges=[]", "--out", str(run), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["iteration"] == 1 and rows[-1]["loss"] is not None and 0 <= rows[-1]["reward_mean"] <= 1
    assert json.loads((run / "recipe.json").read_text())["algorithm"] == "visalign_example_plugin.algos:RankGRPO"

    res = _visalign("eval", "--model", "oracle", "--reward", "visalign_example_plugin.rewards:Saturation?power=1",
                    "--per-category", "1", "--out", str(tmp_path / "eval.json"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert 0 < json.loads((tmp_path / "eval.json").read_text())["overall"] <= 1

    res = _visalign("train", "geneval-s-grpo", "reward=visalign_example_plugin.rewards:Saturation",
                    "reward_options.power=-1", "--out", str(tmp_path / "bad"), cwd=tmp_path)
    assert res.returncode == 2 and "power=-1 is out of range" in res.stderr and len(res.stderr.strip().splitlines()) == 1
