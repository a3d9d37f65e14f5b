import json
import subprocess
import sys

import pytest

from visalign.cli import main


def test_eval_oracle_writes_json(tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", "oracle", "--per-category", "4", "--seed", "0", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["categories"]) == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert res["n"] == 24 and res["overall"] == pytest.approx(sum(res["categories"].values()) / 6)
    assert "overall" in capsys.readouterr().out


def test_eval_prints_both_readings_per_category_and_the_extra_objects(tmp_path, capsys):
    """Renders with one object nobody asked for: GenEval's rules let single_object through, the exact reading
    does not; the table has both per category and the extra objects per image."""
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", "oracle?distractors=1", "--per-category", "6", "--out", str(out),
                 "--judge", "geneval_s?exact=true"]) == 0
    printed = capsys.readouterr().out
    header = printed.splitlines()[0].split()
    assert header[:2] == ["category", "GenEval"] and "exact" in header and "objects" in header
    single = next(line.split() for line in printed.splitlines() if line.startswith("single_object"))
    assert single[1:] == ["1.000", "0.000", "1.00"]  # rules, exact, extra objects per image
    res = json.loads(out.read_text())
    assert res["categories"]["single_object"] == 1.0 and res["exact_categories"]["single_object"] == 0.0
    assert res["extra"] > 0.5 and res["exact"] < res["overall"]
    assert res["judges"]["geneval_s?exact=true"]["overall"] == pytest.approx(res["exact"])
    assert "judge geneval_s?exact=true: overall" in printed
    assert main(["eval", "--model", "oracle?distractors=-1"]) == 2
    assert "oracle: distractors must be >= 0, got -1" in capsys.readouterr().err


def test_eval_on_the_train_split_uses_the_train_prompts_with_the_same_seeds(tmp_path):
    from visalign.testbed.evaluate import eval_items
    from visalign.prompts import load_prompt_set

    ps = load_prompt_set("geneval-s")
    train, held = eval_items(9, 0, "train"), eval_items(9, 0)
    assert [(c, s) for c, _, s in train] == [(c, s) for c, _, s in held]  # same categories, same seeds
    for (cat, p, _), (_, q, _) in zip(train, held):
        assert p in ps.train[cat] and q in ps.eval[cat]
    assert {p for _, p, _ in train}.isdisjoint(p for _, p, _ in held)  # the splits share no prompt
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", "oracle", "--per-category", "3", "--split", "train", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["split"] == "train" and res["n"] == 18 and res["overall"] == 1.0
    with pytest.raises(ValueError, match="split 'test' is not one of eval .*, train"):
        eval_items(1, 0, "test")


def test_sample_writes_grid(tmp_path):
    out = tmp_path / "grid.png"
    assert main(["sample", "--model", "oracle", "--prompt", "a red circle", "--prompt", "two stars", "--n", "3",
                 "--out", str(out)]) == 0
    from PIL import Image

    assert Image.open(out).size[0] > 3 * 32 * 4


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["sample", "--model", "oracle", "--prompt", "a pink circle", "--out", "x.png"], "unknown word 'pink'"),
        (["sample", "--model", "oracle", "--prompt", "circle and", "--out", "x.png"], "outside the GenEval-S grammar"),
        (["eval", "--model", "nosuchmodel"], "unknown model 'nosuchmodel'"),
        (["eval", "--model", "builtin:shapes-flow?path=/does/not/exist"], "is missing"),
        (["pretrain", "nosuchrecipe", "--out", "x"], "unknown recipe 'nosuchrecipe'"),
        (["pretrain", "shapes-flow-pretrain", "train.stepz=3", "--out", "x"], "unknown key 'train.stepz'"),
        (["pretrain", "shapes-flow-pretrain", "train.steps=abc", "--out", "x"], "must be an integer"),
    ],
)
def test_bad_input_is_one_line_on_stderr(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("recipe", ["shapes-flow-pretrain", "shapes-ddpm-pretrain"])
def test_pretrain_runs_end_to_end_tiny(tmp_path, recipe):
    """Both bundled families come from the same command; the saved folder loads as its family's model."""
    out = tmp_path / "m"
    code = main(["pretrain", recipe, "train.steps=2", "train.batch_size=4", "model.resolution=16",
                 "model.channels=[8, 16]", "model.attention=[false, true]", "model.text_dim=16", "--out", str(out)])
    assert code == 0 and (out / "model.safetensors").is_file()
    assert main(["eval", "--model", f"{out}?steps=2", "--per-category", "1"]) == 0


def test_console_script_entry_point():
    r = subprocess.run([sys.executable, "-m", "visalign.cli", "list"], capture_output=True, text=True)
    assert r.returncode == 0 and "builtin:shapes-flow" in r.stdout and "oracle" in r.stdout


def test_overrides_may_follow_the_options(capsys):
    from visalign.cli import parse_args

    for argv in (["pretrain", "shapes-vae-pretrain", "train.steps=3", "--out", "d"],
                 ["pretrain", "shapes-vae-pretrain", "--out", "d", "train.steps=3"]):
        assert parse_args(argv).overrides == ["train.steps=3"], argv
    assert parse_args(["train", "geneval-s-grpo", "a=1", "--out", "d", "b=2"]).overrides == ["a=1", "b=2"]
    with pytest.raises(SystemExit) as e:  # anything else after the options is still refused
        parse_args(["train", "geneval-s-grpo", "--out", "d", "stray"])
    assert e.value.code == 2 and "unrecognized arguments: stray" in capsys.readouterr().err
