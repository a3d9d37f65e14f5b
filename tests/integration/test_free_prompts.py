"""The path a GPU user takes (issue #33): a diffusers pipeline takes any prompt (sample, make-pairs), a hub model
loads on request (`?local_files_only=false`, a recipe's `model_options`) and offline by default with an error
that says how to get it, and a run or checkpoint folder handed where a diffusers folder belongs is refused with
the export command.

Covered elsewhere, not repeated here: `visalign eval --prompts animals --reward compressibility` on a tiny SD
pipeline (tests/integration/test_ddpo_training.py::test_eval_scores_a_diffusers_model_on_animals_by_compressibility)
and training the free-prompt `sd-ddpo-compressibility` recipe (prompts: animals) on one
(test_ddpo_training.py::test_sd_ddpo_compressibility_recipe_runs_on_a_tiny_sd_pipeline); the 1-iteration run
below trains on animals too, with model_options. Nothing is downloaded: HF_HUB_OFFLINE=1 (tests/conftest.py)."""

import json
import sys
from pathlib import Path

import pytest
import torch

from visalign.cli import main
from visalign.models.registry import is_world_model, load_model, with_options
from visalign.models.tiny_diffusers import save_tiny_pipeline
from visalign.checkpoint import CHECKPOINT_README, run_of_folder, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import plain_diffusers_eval as plain


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return save_tiny_pipeline("sd15", tmp_path_factory.mktemp("pipes") / "sd")


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _recorder(monkeypatch):
    """Record the local_files_only our DiffusionPipeline.load_config / from_pretrained calls pass (diffusers' own
    inner load_config of a downloaded folder passes none and is left out)."""
    from diffusers import DiffusionPipeline

    seen = []
    for name in ("load_config", "from_pretrained"):
        original = getattr(DiffusionPipeline, name).__func__

        def wrapped(cls, *a, _original=original, _name=name, **kw):
            if "local_files_only" in kw:
                seen.append((_name, kw["local_files_only"]))
            return _original(cls, *a, **kw)

        monkeypatch.setattr(DiffusionPipeline, name, classmethod(wrapped))
    return seen


# ---------------------------------------------------------------------------------------------- free prompts


def test_sample_takes_any_prompt_on_a_diffusers_pipeline(tiny_sd, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", "--model", f"diffusers:{tiny_sd}?steps=2", "--prompt", "a photo of a cat", "--prompt",
                 "an astronaut riding a horse", "--n", "2", "--out", str(out)]) == 0, capsys.readouterr().err
    from PIL import Image

    with Image.open(out) as im:
        assert im.size[0] >= 2 * 32 and im.size[1] >= 2 * 32  # 2 prompts x 2 images of 32x32


def test_world_models_refuse_words_outside_their_world_in_one_line(capsys):
    assert is_world_model("builtin:shapes-flow") and is_world_model("builtin:shapes-sd15?steps=2")
    assert is_world_model("oracle") and not is_world_model("diffusers:/x?steps=2")
    # the bundled SD1.5 is a diffusers pipeline, but its tokenizer knows only the world's words
    err = _one_line_error(capsys, ["sample", "--model", "builtin:shapes-sd15?steps=2", "--prompt", "a photo of a cat",
                                   "--n", "1"])
    assert "model 'builtin:shapes-sd15?steps=2' draws only its world's words" in err
    assert "unknown word 'photo'" in err and "accepted vocabulary: " in err and "diffusers:<path-or-hub-id>" in err


def test_make_pairs_takes_a_free_prompt_set_on_a_diffusers_pipeline(tiny_sd, tmp_path, capsys):
    out = tmp_path / "pairs"
    assert main(["make-pairs", "--model", f"diffusers:{tiny_sd}?steps=2", "--prompts", "animals", "--reward",
                 "compressibility", "--n-prompts", "1", "--per-prompt", "2", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["pairs"] == 1 and meta["prompts"] == "animals"


# ------------------------------------------------------------------------------------------------------- hub


def test_local_files_only_is_parsed_and_passed(tiny_sd, monkeypatch):
    seen = _recorder(monkeypatch)
    load_model(f"diffusers:{tiny_sd}")
    assert seen == [("load_config", True), ("from_pretrained", True)]  # offline by default
    seen.clear()
    load_model(f"diffusers:{tiny_sd}?local_files_only=false")
    assert seen == [("load_config", False), ("from_pretrained", False)]


def test_a_hub_id_reaches_diffusers_with_the_option(monkeypatch):
    from diffusers import DiffusionPipeline

    seen = []

    def load_config(cls, source, **kw):  # stands in for the hub: records, then fails as a missing repo does
        seen.append((source, kw.get("local_files_only")))
        raise OSError("repo not found")

    monkeypatch.setattr(DiffusionPipeline, "load_config", classmethod(load_config))
    with pytest.raises(ValueError, match="downloading it from the Hugging Face hub .local_files_only=false. failed"):
        load_model("diffusers:someone/some-model?local_files_only=false")
    assert seen == [("someone/some-model", False)]


def test_the_offline_error_says_how_to_get_the_model():
    with pytest.raises(ValueError) as info:
        load_model("diffusers:someone/not-cached")
    msg = str(info.value)
    assert "\n" not in msg and "no network" not in msg
    assert "'someone/not-cached' is neither a local pipeline folder nor in the local Hugging Face cache" in msg
    assert "add ?local_files_only=false" in msg and "model_options.local_files_only=false" in msg
    assert "hf download someone/not-cached" in msg
    # asked to download while HF_HUB_OFFLINE forbids it: the line says so
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set, which forbids downloads"):
        load_model("diffusers:someone/not-cached?local_files_only=false")


@pytest.mark.parametrize("value", ["maybe", "2", ""])
def test_a_bad_local_files_only_is_one_line(tiny_sd, value):
    with pytest.raises(ValueError) as info:
        load_model(f"diffusers:{tiny_sd}?local_files_only={value}")
    msg = str(info.value)
    assert f"diffusers model '{tiny_sd}': option local_files_only=" in msg and msg.endswith("accepted: true, false")


def test_with_options_adds_a_recipes_model_options():
    assert with_options("diffusers:a/b", {}) == "diffusers:a/b"
    assert with_options("diffusers:a/b", {"local_files_only": False}) == "diffusers:a/b?local_files_only=false"
    assert with_options("diffusers:a/b?dtype=bf16", {"local_files_only": True, "dtype": "bf16"}) == \
        "diffusers:a/b?dtype=bf16&local_files_only=true"
    with pytest.raises(ValueError, match=r"model option\(s\) \['dtype'\] given twice with different values"):
        with_options("diffusers:a/b?dtype=bf16", {"dtype": "float32"})
    with pytest.raises(ValueError, match="model_options must be a mapping of model options, e.g. .*; got 3"):
        with_options("diffusers:a/b", 3)


def test_train_applies_model_options_on_a_free_prompt_set(tiny_sd, tmp_path, monkeypatch, capsys):
    """One iteration of the animals recipe on the tiny pipeline with model_options.local_files_only=false (a local
    folder loads the same either way): the option reaches diffusers and the resolved recipe keeps it."""
    seen = _recorder(monkeypatch)
    run = tmp_path / "run"
    assert main(["train", "sd-ddpo-compressibility", f"model=diffusers:{tiny_sd}", "model_options.local_files_only=false",
                 "sampling.steps=2", "eval.steps=2", "train.batch_size=4", "train.micro_batch=2",
                 "train.iterations=1", "train.eval_every=1", "train.eval_per_category=1", "train.checkpoint_every=1",
                 "--out", str(run)]) == 0, capsys.readouterr().err
    assert ("from_pretrained", False) in seen
    assert json.loads((run / "recipe.json").read_text())["model_options"] == {"local_files_only": False}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["eval_categories"].keys() == {"animals"}
    seen.clear()  # the export rebuilds the model as the trainer loaded it: with the recipe's model_options
    assert main(["export", str(run), "--format", "diffusers-lora", "--out", str(tmp_path / "lora")]) == 0, \
        capsys.readouterr().err
    assert ("from_pretrained", False) in seen


def test_a_bad_model_option_in_a_recipe_is_one_line(tiny_sd, tmp_path, capsys):
    err = _one_line_error(capsys, ["train", "sd-ddpo-compressibility", f"model=diffusers:{tiny_sd}",
                                   "model_options.nope=1", "--out", str(tmp_path / "r")])
    assert "does not take options ['nope']" in err and "local_files_only" in err


# ------------------------------------------------------------------------------------------- run checkpoints


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run folder as the trainer leaves it (recipe.json, checkpoints/latest, checkpoints/iter-000003)."""
    run = tmp_path / "runs" / "sd"
    run.mkdir(parents=True)
    (run / "recipe.json").write_text(json.dumps({"model": "diffusers:x"}))
    save_checkpoint(run, 3, {"w": torch.zeros(2)}, {}, {})
    return run


def test_a_checkpoint_folder_says_how_to_export_it(run_dir):
    ck = run_dir / "checkpoints" / "iter-000003"
    assert (ck / "README.md").read_text() == CHECKPOINT_README and "visalign export RUN" in CHECKPOINT_README
    assert run_of_folder(run_dir) == run_of_folder(run_dir / "checkpoints") == run_of_folder(ck) == run_dir
    assert run_of_folder(run_dir.parent) is None


def test_a_diffusers_spec_refuses_a_run_or_checkpoint_folder(run_dir, capsys):
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "checkpoints" / "iter-000003"):
        for spec in (f"diffusers:{folder}", f"builtin:shapes-sd15?path={folder}"):
            with pytest.raises(ValueError) as info:
                load_model(spec)
            msg = str(info.value)
            assert "\n" not in msg and "is a visalign run or checkpoint folder, not a diffusers pipeline folder" in msg
            assert f"`visalign export {run_dir} --format merged --out DIR`" in msg
            assert f"`visalign export {run_dir} --format diffusers-lora --out DIR`" in msg
    err = _one_line_error(capsys, ["sample", "--model", str(run_dir), "--prompt", "a red circle"])
    assert "is a visalign run or checkpoint folder, not a model folder" in err and "--format merged" in err


def test_plain_diffusers_eval_refuses_a_run_folder_as_lora_or_pipeline(run_dir, tiny_sd, capsys):
    for folder in (run_dir, run_dir / "checkpoints" / "iter-000003"):
        assert plain.main([str(tiny_sd), "--lora", str(folder)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is a visalign run or checkpoint folder" in err
        assert "visalign export RUN --format diffusers-lora --out DIR, then --lora DIR" in err
    assert plain.main([str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a pipeline" in err and "--format merged" in err
