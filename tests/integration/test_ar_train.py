"""The autoregressive family end to end through the CLI on tiny models: `visalign pretrain` builds the VQ, then
the GPT on its tokens; eval loads them; the unchanged trainer runs AR-GRPO and AR-DPO on them (no AR branch)."""

import json

import pytest

from visalign.cli import main


@pytest.fixture(scope="module")
def tiny_ar(tmp_path_factory):
    root = tmp_path_factory.mktemp("ar")
    vq, ar = root / "vq", root / "ar"
    assert main(["pretrain", "shapes-vq-pretrain", "train.steps=2", "train.batch_size=4", "model.channels=[8, 16]",
                 "model.codebook_size=16", "model.code_dim=4", "--out", str(vq)]) == 0
    assert main(["pretrain", "shapes-ar-pretrain", f"tokenizer={vq}", "train.steps=2", "train.batch_size=4",
                 "train.max_minutes=0", "model.dim=32", "model.layers=1", "model.heads=2", "model.codebook_size=16",
                 "--out", str(ar)]) == 0
    assert (ar / "model.safetensors").is_file() and (ar / "pretrain_log.jsonl").is_file()
    return f"builtin:shapes-ar?path={ar}&tokenizer={vq}"


def test_eval_loads_the_pretrained_pair(tiny_ar, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", tiny_ar + "&plan=false", "--per-category", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["n"] == 6


@pytest.mark.parametrize("recipe", ["geneval-s-ar-grpo", "geneval-s-ar-dpo"])
def test_trainer_runs_ar_recipes_unchanged(tiny_ar, recipe, tmp_path):
    run = tmp_path / "run"
    assert main(["train", recipe, f"model={tiny_ar}", "train.iterations=1", "train.batch_size=4", "train.group_size=2",
                 "train.minibatches=1", "train.eval_per_category=1", "--out", str(run)]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert last["iteration"] == 1 and last["nfe"] > 0 and "eval_overall" in last
    assert (run / "report.html").is_file()
    if recipe == "geneval-s-ar-grpo":
        assert last["ratio_dev"] < 1e-4  # one minibatch: on-policy, ratio 1 per token


def test_merged_export_of_an_ar_run_loads_and_samples_as_trained(tiny_ar, tmp_path):
    """`visalign export RUN --format merged` writes the trained GPT with its tokenizer; `load_model(DIR)` (and so
    `visalign eval --model DIR`) reads them back and draws the trained run's tokens."""
    import torch

    from visalign.models.export import _load_weights
    from visalign.models.registry import load_model
    from visalign.policies import make_policy

    run = tmp_path / "run"
    assert main(["train", "geneval-s-ar-grpo", f"model={tiny_ar}", "train.iterations=1", "train.batch_size=4",
                 "train.group_size=2", "train.minibatches=1", "train.eval_per_category=1", "train.lr=1e-2",
                 "--out", str(run)]) == 0
    out = tmp_path / "merged"
    assert main(["export", str(run), "--format", "merged", "--out", str(out)]) == 0
    assert (out / "tokenizer" / "model.safetensors").is_file()
    merged, base = load_model(str(out)), load_model(tiny_ar)
    prompts, seeds = ["a red circle", "two stars"], [3, 4]
    trained = _load_weights(run)  # the run's latest checkpoint
    state, before = merged.module.state_dict(), base.module.state_dict()
    assert trained.keys() == state.keys() and all(torch.equal(trained[k], state[k]) for k in state)
    assert any(not torch.equal(before[k], state[k]) for k in state)  # the export holds the trained weights
    tokens = make_policy(merged).sample(prompts, seeds).states
    assert tokens.shape == (2, merged.gen_length)
    assert main(["eval", "--model", str(out), "--per-category", "1", "--out", str(tmp_path / "eval.json")]) == 0


def test_sft_goes_on_from_a_token_model_and_refuses_other_inits(tiny_ar, tmp_path, capsys):
    """`init:` continues a token model's GPT on its own tokenizer (the output folder carries both); a model that is
    not a token model, or a model config beside init, is refused in one line."""
    out = tmp_path / "sft"
    assert main(["pretrain", "shapes-ar-sft", f"init={tiny_ar}", "train.steps=1", "train.batch_size=4",
                 "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer" / "model.safetensors").is_file()
    assert main(["pretrain", "shapes-ar-sft", "init=builtin:shapes-flow", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a token model; accepted: builtin:shapes-ar, builtin:text-ar" in err and "\n" not in err
    assert main(["pretrain", "shapes-ar-sft", f"init={tiny_ar}", "model.dim=64", "--out", str(tmp_path / "y")]) == 2
    assert "brings its own model config" in capsys.readouterr().err
