"""The text task end to end through the CLI at tiny size: `pretrain text-flow-pretrain` makes a 32x64 text
model, `sample` checks prompts with its grammar, and `train text-flow-ocr-grpo` / `text-ocr-nft` run on it with
the real tesseract, evaluated on held-out words by the OCR reward; the same for the token model (text-vq +
text-ar pretraining, `train text-ocr-grpo`)."""

import json
import shutil

import pytest

from visalign.cli import main


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("text") / "m"
    code = main(["pretrain", "text-flow-pretrain", "train.steps=2", "train.batch_size=4", "model.channels=[8, 16]",
                 "model.attention=[false, true]", "model.text_dim=16", "model.heads=2", "--out", str(out)])
    assert code == 0 and json.loads((out / "config.json").read_text())["width"] == 64
    return out


def test_sample_uses_the_text_grammar(tiny_text_model, tmp_path, capsys):
    grid = tmp_path / "g.png"
    assert main(["sample", "--model", f"{tiny_text_model}?steps=2", "--prompt", 'a sign that says "ZOO"',
                 "--n", "2", "--out", str(grid)]) == 0 and grid.is_file()
    assert main(["sample", "--model", str(tiny_text_model), "--prompt", 'a sign that says "Zoo"', "--out",
                 str(grid)]) == 2
    err = capsys.readouterr().err.strip()
    assert "outside the OCR alphabet: 'o'" in err and "\n" not in err


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="the tesseract binary is absent (Debian package "
                    "tesseract-ocr; `make test` and .ci/run install it)")
@pytest.mark.parametrize("recipe", ["text-flow-ocr-grpo", "text-ocr-nft"])
def test_ocr_recipes_run_on_held_out_words(tiny_text_model, tmp_path, recipe):
    out = tmp_path / "run"
    code = main(["train", recipe, f"model=builtin:text-flow?path={tiny_text_model}", "train.iterations=1",
                 "train.batch_size=4", "train.group_size=2", "train.eval_per_category=2", "train.eval_every=1",
                 "sampling.steps=2", "eval.steps=2", "--out", str(out)])
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert list(rows[0]["eval_categories"]) == ["text"] and 0 <= rows[-1]["eval_overall"] <= 1
    assert 0 <= rows[-1]["reward_mean"] <= 1


@pytest.fixture(scope="module")
def tiny_text_token_model(tmp_path_factory):
    """`pretrain text-vq-pretrain` then `pretrain text-ar-pretrain` on it, at tiny size: a 32x64 sign -> 8x16 ids."""
    root = tmp_path_factory.mktemp("text-ar")
    vq, gpt = root / "vq", root / "gpt"
    assert main(["pretrain", "text-vq-pretrain", "train.steps=2", "train.batch_size=4", "model.codebook_size=16",
                 "model.channels=[8, 16]", "--out", str(vq)]) == 0
    assert main(["pretrain", "text-ar-pretrain", f"tokenizer={vq}", "train.steps=2", "train.max_minutes=0",
                 "train.batch_size=4", "model.codebook_size=16", "model.dim=32", "model.layers=1", "model.heads=2",
                 "--out", str(gpt)]) == 0
    assert json.loads((gpt / "tokenizer" / "config.json").read_text())["width"] == 64  # the model folder carries it
    return gpt


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="the tesseract binary is absent (Debian package "
                    "tesseract-ocr; `make test` and .ci/run install it)")
def test_ar_ocr_recipe_runs_on_held_out_words(tiny_text_token_model, tmp_path, capsys):
    grid = tmp_path / "g.png"
    assert main(["sample", "--model", f"builtin:text-ar?path={tiny_text_token_model}", "--prompt",
                 'a sign that says "ZOO"', "--n", "2", "--out", str(grid)]) == 0 and grid.is_file()
    assert main(["sample", "--model", f"builtin:text-ar?path={tiny_text_token_model}&plan=false", "--prompt",
                 'a sign that says "ZOO"', "--out", str(grid)]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not take options ['plan']" in err and "\n" not in err
    out = tmp_path / "run"
    assert main(["train", "text-ocr-grpo", f"model=builtin:text-ar?path={tiny_text_token_model}",
                 "train.iterations=1", "train.batch_size=4", "train.group_size=2", "train.minibatches=1",
                 "train.eval_per_category=2", "train.eval_every=1", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert list(rows[0]["eval_categories"]) == ["text"] and 0 <= rows[-1]["eval_overall"] <= 1
    assert 0 <= rows[-1]["reward_mean"] <= 1


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="the tesseract binary is absent (Debian package "
                    "tesseract-ocr; `make test` and .ci/run install it)")
def test_eval_scores_a_prompt_set_by_its_reward(tmp_path, capsys):
    """`visalign eval --prompts text --reward ocr` is the trainer's held-out evaluation of an OCR run (the same
    items, generator and reward), on either split; a set without a verifier and no --reward is one line."""
    from visalign.evaluate import evaluate_reward
    from visalign.models.registry import PolicyGenerator, load_model
    from visalign.prompts import load_prompt_set
    from visalign.rewards import load_reward

    texts = load_prompt_set("text")
    gen, ocr = PolicyGenerator(load_model("builtin:text-ar")), load_reward("ocr")
    for split, words in (("held-out", texts.eval["text"]), ("train", texts.train["text"])):
        out = tmp_path / f"{split}.json"
        assert main(["eval", "--model", "builtin:text-ar", "--prompts", "text", "--reward", "ocr", "--per-category",
                     "6", "--seed", "2", "--split", split, "--out", str(out)]) == 0
        res = json.loads(out.read_text())
        want = evaluate_reward(gen, ocr, texts, 6, 2, "train" if split == "train" else "eval")
        assert res["overall"] == pytest.approx(want["overall"]) and res["n"] == 6 and list(res["categories"]) == ["text"]
        assert set(want["prompts"]) <= set(words) and res["prompt_set"] == "text" and res["reward"] == "ocr"
    capsys.readouterr()
    assert main(["eval", "--model", "builtin:text-ar", "--prompts", "text"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no verifier; give --reward NAME" in err and "\n" not in err
