"""The core's registries work with the testbed not loaded (docs/architecture.md#plugins): in a fresh process with
VISALIGN_PLUGINS=-visalign.testbed, nothing of visalign.testbed is imported, the registries list only the core's
names, and a tiny diffusers SD1.5 pipeline trains one iteration of DDPO on JPEG compressibility over `animals`."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys
from visalign.models.registry import MODELS
from visalign.models.tiny_diffusers import save_tiny_pipeline
from visalign.pretraining import PRETRAIN_KINDS
from visalign.prompts import PROMPT_SETS, load_prompt_set
from visalign.rewards import REWARDS
from visalign.cli import main

out = sys.argv[1]
pipe = save_tiny_pipeline("sd15", out + "/sd")
code = main(["train", "sd-ddpo-compressibility", f"model=diffusers:{pipe}", "sampling.steps=2", "eval.steps=2",
             "train.batch_size=4", "train.micro_batch=2", "train.iterations=1", "train.eval_every=1",
             "train.eval_per_category=1", "train.checkpoint_every=1", "--out", out + "/run"])
try:
    load_prompt_set("geneval-s")
    geneval = "loaded"
except ValueError as e:
    geneval = str(e)
print(json.dumps({"code": code, "models": MODELS.names(), "rewards": REWARDS.names(), "sets": PROMPT_SETS.names(),
                  "kinds": PRETRAIN_KINDS.names(), "geneval": geneval,
                  "testbed": sorted(m for m in sys.modules if m.startswith("visalign.testbed"))}))
"""


def test_the_core_trains_without_the_testbed(tmp_path):
    env = {**os.environ, "VISALIGN_PLUGINS": "-visalign.testbed", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["code"] == 0 and got["testbed"] == []
    assert got["models"] == ["diffusers:<path-or-hub-id>"] and got["sets"] == [] and got["kinds"] == []
    assert "compressibility" in got["rewards"] and "geneval_s" not in got["rewards"]
    assert got["geneval"] == "unknown prompt set 'geneval-s'; accepted: animals, file:PATH"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["iteration"] == 1 and rows[0]["eval_categories"].keys() == {"animals"}
