"""RL on a video policy through the one trainer (no video branch: the policy carries the frame axis): a tiny random
WanPipeline trained on GenEval-S Motion prompts with the Motion verifier as reward, evaluated by the Motion
evaluator, with DanceGRPO's video settings; the run's sample grid is written as a frame strip and a GIF."""

import json

import numpy as np
import pytest
from PIL import Image

from visalign.cli import main
from visalign.metrics import read_metrics
from visalign.models.tiny_diffusers import save_tiny_pipeline


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("wan") / "tiny-wan"
    save_tiny_pipeline("wan", path)
    return path


def _overrides(model, *extra):
    return [f"model=diffusers:{model}?max_sequence_length=16", "prompts=motion", "reward=motion", "train.batch_size=8",
            "train.group_size=4", "train.eval_per_category=1", "train.eval_every=2", "train.diagnose_every=0",
            "train.iterations=2", "sampling.steps=3", "sampling.guidance_scale=1.0", *extra]


@pytest.mark.parametrize("recipe, extra", [
    ("geneval-s-grpo", ["train.keep_best_worst=1", "train.shared_initial_noise=true",
                        "algorithm_options.timestep_fraction=0.5"]),
    ("geneval-s-nft", []),
])
def test_grpo_and_nft_train_a_video_policy_on_motion(wan_dir, tmp_path, recipe, extra):
    run = tmp_path / recipe
    assert main(["train", recipe, *_overrides(wan_dir, *extra), "--out", str(run)]) == 0
    rows = read_metrics(run)
    evals = [r for r in rows if "eval_overall" in r]
    assert [r["iteration"] for r in evals] == [0, 2]
    assert set(evals[0]["eval_categories"]) == {"direction", "two_motions", "speed", "constancy", "change", "counting"}
    assert all(r["loss"] is not None and np.isfinite(r["loss"]) for r in rows if r.get("reward_mean") is not None)
    strip = Image.open(run / "samples" / "iter-000002.png")
    gif = Image.open(run / "samples" / "iter-000002.gif")
    assert gif.n_frames == 9 and strip.width > strip.height  # 6 videos of 9 frames: rows of frames
    assert json.loads((run / "samples" / "prompts.json").read_text())[0].split()[-1] in ("left", "right", "up", "down")


def test_eval_and_sample_on_motion(wan_dir, tmp_path, capsys):
    model = f"diffusers:{wan_dir}?max_sequence_length=16&steps=2"
    assert main(["eval", "--model", model, "--prompts", "motion", "--per-category", "1"]) == 0
    out = capsys.readouterr().out
    assert "direction" in out and "counting" in out
    assert main(["sample", "--model", model, "--prompt", "a red circle moving right", "--n", "2",
                 "--out", str(tmp_path / "clip.png")]) == 0
    assert Image.open(tmp_path / "clip.gif").n_frames == 9


def test_plain_diffusers_benchmark_draws_visalign_eval_clips(wan_dir):
    """benchmarks/plain_diffusers_eval.py on a WanPipeline: GenEval-S Motion items, clips sampled by plain diffusers
    (the scheduler handed visalign's sigmas), the same clips and verdicts as visalign's generator for the same seeds."""
    import sys
    from pathlib import Path

    from visalign.models.registry import load_generator

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import plain_diffusers_eval as plain

    categories, gram, _ = plain.world("WanPipeline")
    its = plain.items(1, 0, "eval", categories, gram)
    prompts, seeds = [p for _, p, _ in its], [s for _, _, s in its]
    pipe = plain.load(str(wan_dir), None)
    kw = {**plain.call_args(pipe, str(wan_dir), 3, 2.0), "max_sequence_length": 16}
    theirs = plain.generate(pipe, prompts, seeds, kw)  # [6, 9, 32, 32, 3]
    ours = load_generator(f"diffusers:{wan_dir}?max_sequence_length=16&steps=3&guidance=2").generate(prompts, seeds)
    assert theirs.shape == ours.shape == (6, 9, 32, 32, 3)
    assert int(np.abs(ours.astype(int) - theirs.astype(int)).max()) <= 1
    assert plain.score(theirs, its, "WanPipeline") == plain.score(ours, its, "WanPipeline")
