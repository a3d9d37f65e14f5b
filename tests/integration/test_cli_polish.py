"""The command line's common ground (issue 35): --version, key=value anywhere on the line and in every command that
takes options, a run's recipe.json as a recipe, `visalign config`, defaults in the help, progress bars only on a
terminal, the summary of a resumed run, and one set of numbers from `diagnose`."""

import io
import json
from importlib.metadata import version

import pytest
import yaml

import visalign
from visalign.cli import main, parse_args
from visalign.recipe import load_train_recipe
from visalign.metrics import read_metrics

TINY = ["train.iterations=1", "train.batch_size=8", "train.group_size=4", "train.eval_per_category=1",
        "sampling.steps=2"]


class Terminal(io.StringIO):
    """A stderr that says it is a terminal (tqdm's disable=None shows its bar there)."""

    def isatty(self) -> bool:
        return True


def test_version_is_the_package_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"visalign {visalign.__version__}" == f"visalign {version('visalign')}"


def test_key_value_words_anywhere_and_in_every_command_with_options(capsys):
    for command in ("train", "diagnose", "pretrain", "config"):
        out = [] if command in ("diagnose", "config") else ["--out", "d"]
        args = parse_args([command, "r", "a=1", *out, "b.c=2"])
        assert args.overrides == ["a=1", "b.c=2"], command
    # make-pairs: reward options as a recipe names them, beside the old flag
    args = parse_args(["make-pairs", "--model", "oracle", "--out", "p", "reward_options.quality=90",
                       "--reward-option", "x=1"])
    assert args.reward_option == ["x=1", "quality=90"]
    # serve-reward: the reward's options
    args = parse_args(["serve-reward", "compressibility", "quality=90", "--port", "1", "--option", "x=1"])
    assert args.option == ["x=1", "quality=90"]
    # compare: overrides of every recipe, beside --set, even among the algorithms; a spec keeps its options
    args = parse_args(["compare", "grpo", "train.lr=1e-4", "grpo:kl_beta=0.04", "--out", "c", "--set", "x=1",
                       "eval.steps=4"])
    assert args.algorithms == ["grpo", "grpo:kl_beta=0.04"] and args.set == ["x=1", "train.lr=1e-4", "eval.steps=4"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # make-pairs' key=value words are reward options only
        parse_args(["make-pairs", "--model", "oracle", "--out", "p", "quality=90"])
    assert e.value.code == 2 and "reward_options.KEY=VALUE" in capsys.readouterr().err


def test_make_pairs_takes_reward_options_as_key_value(tmp_path):
    for name, words in (("a", ["reward_options.quality=90"]), ("b", ["--reward-option", "quality=90"])):
        out = tmp_path / name
        assert main(["make-pairs", "--model", "oracle?noise=20", "--reward", "compressibility", "--n-prompts", "2",
                     "--per-prompt", "2", "--out", str(out), *words]) == 0
        assert json.loads((out / "meta.json").read_text())["reward_options"] == {"quality": 90}
    assert (tmp_path / "a" / "pairs.jsonl").read_text() == (tmp_path / "b" / "pairs.jsonl").read_text()


def test_help_shows_the_defaults_once(capsys):
    for command, needle in (("eval", "(default: 50)"), ("make-pairs", "(default: 200)"), ("diagnose", "(default: 4)"),
                            ("compare", "(default: runs/compare)")):
        assert main([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
        assert needle in text, command
        assert "(default: None)" not in text and "(default: False)" not in text and "(default: [])" not in text
    assert main(["compare", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default 400)" in text and "(default: 400)" not in text  # a help that says its default keeps it


def test_config_prints_the_resolved_recipe_train_would_write(tmp_path, capsys):
    assert main(["config", "geneval-s-grpo", "train.lr=1e-4", "eval.judges=[]"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    recipe, resolved = load_train_recipe("geneval-s-grpo", ["train.lr=1e-4", "eval.judges=[]"])
    assert printed == json.loads(json.dumps(resolved)) and printed["train"]["lr"] == 1e-4
    # what it prints is a recipe: it builds the same one again
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(printed))
    assert load_train_recipe(str(tmp_path / "r.yaml"))[0] == recipe
    assert main(["config", "shapes-flow-pretrain", "train.steps=3"]) == 0  # a pretraining recipe: its kind too
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["kind"] == "pretrain" and printed["train"]["steps"] == 3
    for argv, needle in ((["config", "geneval-s-grpo", "train.bogus=1"], "unknown key 'train.bogus'"),
                         (["config", "geneval-s-grpo", "train.lr=abc"], "train.lr"),
                         (["config", "shapes-flow-pretrain", "model.bogus=1"], "unknown key 'model.bogus'"),
                         (["config", "nosuch"], "unknown recipe 'nosuch'")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err and err.startswith("visalign config: error:"), argv


def test_recipe_json_runs_again_and_a_resumed_run_sums_up_from_its_base(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", "geneval-s-grpo", "--out", str(a), *TINY, "eval.judges=[]"]) == 0
    capsys.readouterr()
    # the run's base evaluation, made distinct, must head the summary of the resumed run
    lines = (a / "metrics.jsonl").read_text().splitlines()
    base = json.loads(lines[0])
    assert base["iteration"] == 0
    base["eval_overall"] = 0.633
    (a / "metrics.jsonl").write_text("\n".join([json.dumps(base), *lines[1:]]) + "\n")
    assert main(["train", "geneval-s-grpo", "--out", str(a), "--resume", *TINY, "eval.judges=[]",
                 "train.iterations=2"]) == 0
    printed = capsys.readouterr().out
    last = [r for r in read_metrics(a) if "eval_overall" in r][-1]
    assert last["iteration"] == 2
    assert f"held-out GenEval-S (GenEval's rules): 0.633 -> {last['eval_overall']:.3f}" in printed
    # RUN/recipe.json (and the run folder) as a recipe: the same resolved recipe
    assert main(["config", str(a / "recipe.json")]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == json.loads((a / "recipe.json").read_text())
    assert main(["train", str(a / "recipe.json"), "--out", str(b), "train.iterations=1"]) == 0
    capsys.readouterr()
    ra, rb = (json.loads((run / "recipe.json").read_text()) for run in (a, b))
    assert ra["train"].pop("iterations") == 2 and rb["train"].pop("iterations") == 1 and ra == rb
    assert main(["config", str(a)]) == 0 and yaml.safe_load(capsys.readouterr().out)["train"]["iterations"] == 2


def test_diagnose_prints_the_numbers_it_writes(tmp_path, capsys):
    out = tmp_path / "d.json"
    assert main(["diagnose", "geneval-s-grpo", "--batches", "2", "--out", str(out), *TINY[1:], "eval.judges=[]"]) == 0
    printed = capsys.readouterr().out.splitlines()
    res = json.loads(out.read_text())
    table = {line.split()[0]: line.split()[1] for line in printed if line.startswith("  ")}
    assert list(table) == [k for k in res if k != "warning"]  # the same names, in the same order
    assert all(value == ("none" if res[k] is None else str(res[k])) for k, value in table.items())
    assert all(v is None or isinstance(v, (int, str)) or v == float(f"{v:.4g}") for v in res.values())  # rounded once
    assert not any(k.startswith(("diag_cos", "diag_grad_cos", "diag_signal_share", "diag_run")) for k in res)
    assert f"signal_share {res['signal_share']} per update" in "\n".join(printed)


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_bars_only_on_a_terminal(tmp_path, capsys, monkeypatch, terminal):
    """eval, make-pairs and pretrain show a bar with ETA on stderr when it is a terminal, and no bar lines in a
    log file (make-pairs then logs a line per chunk)."""
    err = Terminal() if terminal else io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    assert main(["eval", "--model", "oracle", "--per-category", "3"]) == 0
    assert main(["make-pairs", "--model", "oracle?noise=20", "--reward", "compressibility", "--n-prompts", "2",
                 "--per-prompt", "2", "--out", str(tmp_path / "p")]) == 0
    assert main(["pretrain", "shapes-flow-pretrain", "train.steps=2", "train.batch_size=4", "model.resolution=16",
                 "model.channels=[8, 16]", "model.attention=[false, true]", "model.text_dim=16",
                 "--out", str(tmp_path / "m")]) == 0
    bars = err.getvalue()
    out = capsys.readouterr().out
    if terminal:
        assert "eval: 100%" in bars and "18/18" in bars and "make-pairs: 100%" in bars and "pretrain: 100%" in bars
        assert "2/2 prompts" not in out
    else:
        assert bars == "" and "2/2 prompts, " in out
    assert "pretrained in" in out and '"step": 2' in out
