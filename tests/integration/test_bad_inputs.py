"""Bad inputs from outside (issue #34's bar), against every command and the library entry points: wrong types,
out-of-range and non-finite numbers, empty strings, unknown keys at every level, missing files, files of the
wrong kind, malformed model-spec options, CLI flags out of range, and signals. Each CLI case must end in exactly
one line on stderr, exit code 2 (signals: 130 / 143), no traceback, and no hang; each library case must raise
one of the one-line user errors (never a deep TypeError / AttributeError / KeyError of our own logic)."""

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from visalign.cli import main

ROOT = Path(__file__).resolve().parents[2]
HANG_S = 30  # a case that has not refused its input by then is a hang (or a run that should have been refused)


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"no answer in {HANG_S} s")


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """main(argv) in this process -> (exit code, stderr); argparse's own refusals (SystemExit) count as exits."""
    capsys.readouterr()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_S)
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return code, capsys.readouterr().err


# --------------------------------------------------------------------------------------------- the material


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Files and folders of every wrong kind, a tiny model and a tiny trained run (one iteration)."""
    from conftest import _tiny_model
    from PIL import Image

    d = tmp_path_factory.mktemp("bad inputs ü")  # a space and a non-ASCII letter in every path
    tiny = d / "tiny model"
    _tiny_model("velocity").save_pretrained(tiny)
    png = d / "image.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
    (d / "png.yaml").write_bytes(png.read_bytes())
    (d / "empty.yaml").write_text("")
    (d / "garbage.yaml").write_bytes(bytes(range(256)) * 4)
    (d / "list.yaml").write_text("- kind: train\n- model: x\n")
    (d / "scalar.yaml").write_text("42\n")
    (d / "folder.yaml").mkdir()
    (d / "top-unknown.yaml").write_text("kind: train\nbogus: 1\n")
    (d / "kind-bogus.yaml").write_text("kind: bogus\n")
    (d / "train-scalar.yaml").write_text("kind: train\ntrain: 5\n")
    (d / "train-list.yaml").write_text("kind: train\ntrain: [1, 2]\n")
    (d / "eval-unknown.yaml").write_text("kind: train\neval:\n  bogus: 1\n")
    (d / "tabs.yaml").write_text("kind: train\ntrain:\n\titerations: 1\n")
    (d / "text.txt").write_text("x\n")
    (d / "empty.txt").write_text("")
    (d / "blank.txt").write_text("\n  \n\n")
    (d / "garbage.txt").write_bytes(bytes(range(128, 256)) * 4)
    (d / "empty dir").mkdir()
    for name, weights, config in (("trunc model", "cut", None), ("list-config model", None, "[1, 2]"),
                                  ("garbage-config model", None, "\x00\x01{"), ("no-weights model", "drop", None)):
        m = d / name
        m.mkdir()
        for f in tiny.iterdir():
            (m / f.name).write_bytes(f.read_bytes())
        w = next(m.glob("*.safetensors"))
        if weights == "cut":
            w.write_bytes(w.read_bytes()[:100])
        elif weights == "drop":
            w.unlink()
        if config is not None:
            (m / "config.json").write_text(config)
    # a tiny trained run (geneval-s-grpo, one iteration, one checkpoint)
    run = d / "a run"
    assert main(["train", "geneval-s-grpo", *tiny_run(tiny), "--out", str(run)]) == 0
    for name, edit in (("no-checkpoint run", "nock"), ("list-recipe run", "list"), ("bad-json run", "json"),
                       ("list-recipe ck run", "list+ck"),
                       ("trunc-weights run", "trunc"), ("garbage-metrics run", "metrics")):
        r = d / name
        r.mkdir()
        (r / "recipe.json").write_text((run / "recipe.json").read_text())
        if edit.startswith("list"):
            (r / "recipe.json").write_text("[]")
        if edit == "list+ck":
            import shutil

            shutil.copytree(run / "checkpoints", r / "checkpoints")
        elif edit == "json":
            (r / "recipe.json").write_text("{oops")
        elif edit == "metrics":
            (r / "metrics.jsonl").write_bytes(bytes(range(256)))
        elif edit == "trunc":
            import shutil

            shutil.copytree(run / "checkpoints", r / "checkpoints")
            ck = r / "checkpoints" / "iter-000001" / "weights.safetensors"
            ck.write_bytes(ck.read_bytes()[:64])
    (d / "non-empty out").mkdir()
    (d / "non-empty out" / "x").write_text("x")
    return {"d": str(d), "tiny": str(tiny), "run": str(run)}


def tiny_run(tiny) -> list[str]:
    return [f"model={tiny}", "train.iterations=1", "train.batch_size=8", "train.group_size=4",
            "train.eval_per_category=1", "sampling.steps=2", "reward=geneval_s", "reward_options.dense=true",
            "train.checkpoint_every=1", "train.diagnose_every=0", "train.report_to=none"]


# the overrides that make any train-recipe case tiny (so that one the probe wrongly accepts ends quickly)
T = "{tiny_train}"

# ------------------------------------------------------------------------------------------------ the cases
# (id, argv with {d} {tiny} {run} {out} {tiny_train} filled in, expected exit code)
CASES = [
    # --- the parser: wrong types and flags out of range, for every command
    ("list-extra-arg", ["list", "extra"], 2),
    ("no-command", [], 2),
    ("unknown-command", ["bogus"], 2),
    ("sample-n-0", ["sample", "--model", "oracle", "--prompt", "a red circle", "--n", "0", "--out", "{out}.png"], 2),
    ("sample-n-neg", ["sample", "--model", "oracle", "--prompt", "a red circle", "--n", "-1", "--out", "{out}.png"], 2),
    ("sample-n-abc", ["sample", "--model", "oracle", "--prompt", "a red circle", "--n", "abc", "--out", "{out}.png"], 2),
    ("sample-n-float", ["sample", "--model", "oracle", "--prompt", "a red circle", "--n", "1.5", "--out", "{out}.png"],
     2),
    ("sample-seed-neg", ["sample", "--model", "oracle", "--prompt", "a red circle", "--n", "1", "--seed", "-1",
                         "--out", "{out}.png"], 2),
    ("sample-no-model", ["sample", "--prompt", "a red circle"], 2),
    ("sample-empty-model", ["sample", "--model", "", "--prompt", "a red circle", "--out", "{out}.png"], 2),
    ("sample-empty-prompt", ["sample", "--model", "oracle", "--prompt", "", "--n", "1", "--out", "{out}.png"], 2),
    ("sample-blank-prompt", ["sample", "--model", "oracle", "--prompt", "   ", "--n", "1", "--out", "{out}.png"], 2),
    ("sample-unicode-prompt", ["sample", "--model", "oracle", "--prompt", "ein roter Kreis ü", "--n", "1", "--out",
                               "{out}.png"], 2),
    ("sample-out-txt", ["sample", "--model", "oracle", "--prompt", "a red circle", "--n", "1", "--out", "{out}.txt"], 2),
    ("sample-out-missing-parent", ["sample", "--model", "oracle", "--prompt", "a red circle", "--n", "1", "--out",
                                   "{d}/text.txt/x.png"], 2),
    ("eval-per-category-0", ["eval", "--model", "oracle", "--per-category", "0"], 2),
    ("eval-per-category-neg", ["eval", "--model", "oracle", "--per-category", "-1"], 2),
    ("eval-seed-neg", ["eval", "--model", "oracle", "--per-category", "1", "--seed", "-1"], 2),
    ("eval-split-bogus", ["eval", "--model", "oracle", "--split", "bogus"], 2),
    ("diagnose-batches-1", ["diagnose", "geneval-s-grpo", T, "--batches", "1"], 2),
    ("diagnose-batches-0", ["diagnose", "geneval-s-grpo", T, "--batches", "0"], 2),
    ("diagnose-batches-abc", ["diagnose", "geneval-s-grpo", "--batches", "abc"], 2),
    ("make-pairs-n-prompts-0", ["make-pairs", "--model", "oracle", "--n-prompts", "0", "--out", "{out}"], 2),
    ("make-pairs-per-prompt-1", ["make-pairs", "--model", "oracle", "--per-prompt", "1", "--out", "{out}"], 2),
    ("make-pairs-seed-neg", ["make-pairs", "--model", "oracle", "--n-prompts", "1", "--seed", "-1", "--out", "{out}"],
     2),
    ("compare-budget-minutes-nan", ["compare", "grpo", "--budget-minutes", "nan", "--out", "{out}"], 2),
    ("compare-budget-minutes-inf", ["compare", "grpo", "--budget-minutes", "inf", "--out", "{out}"], 2),
    ("compare-budget-minutes-neg", ["compare", "grpo", "--budget-minutes", "-1", "--out", "{out}"], 2),
    ("compare-budget-nfe-neg", ["compare", "grpo", "--budget-nfe", "-5", "--out", "{out}"], 2),
    ("compare-no-budget", ["compare", "grpo", "--out", "{out}"], 2),
    ("compare-evals-0", ["compare", "grpo", "--budget-nfe", "10", "--evals", "0", "--out", "{out}"], 2),
    ("compare-per-category-0", ["compare", "grpo", "--budget-nfe", "10", "--per-category", "0", "--out", "{out}"], 2),
    ("compare-pair-prompts-0", ["compare", "diffusion_dpo", "--budget-nfe", "10", "--pair-prompts", "0", "--out",
                                "{out}"], 2),
    ("compare-seed-neg", ["compare", "grpo", "--budget-nfe", "10", "--seed", "-1", "--out", "{out}"], 2),
    ("serve-port-70000", ["serve-reward", "geneval_s", "--port", "70000"], 2),
    ("serve-port-neg", ["serve-reward", "geneval_s", "--port", "-1"], 2),
    ("serve-port-abc", ["serve-reward", "geneval_s", "--port", "abc"], 2),
    ("serve-max-pixels-0", ["serve-reward", "geneval_s", "--port", "0", "--max-pixels", "0"], 2),
    ("serve-max-mb-nan", ["serve-reward", "geneval_s", "--port", "0", "--max-request-mb", "nan"], 2),
    ("serve-max-mb-inf", ["serve-reward", "geneval_s", "--port", "0", "--max-request-mb", "inf"], 2),
    ("serve-max-mb-neg", ["serve-reward", "geneval_s", "--port", "0", "--max-request-mb", "-1"], 2),
    ("serve-timeout-nan", ["serve-reward", "geneval_s", "--port", "0", "--timeout", "nan"], 2),
    ("serve-timeout-inf", ["serve-reward", "geneval_s", "--port", "0", "--timeout", "inf"], 2),
    ("serve-deadline-0", ["serve-reward", "geneval_s", "--port", "0", "--deadline", "0"], 2),
    ("serve-connections-0", ["serve-reward", "geneval_s", "--port", "0", "--max-connections", "0"], 2),
    ("serve-unknown-reward", ["serve-reward", "bogus", "--port", "0"], 2),
    ("serve-unknown-option", ["serve-reward", "geneval_s", "--port", "0", "--option", "bogus=1"], 2),
    ("serve-option-no-equals", ["serve-reward", "geneval_s", "--port", "0", "--option", "dense"], 2),
    ("serve-option-bad-bool", ["serve-reward", "geneval_s", "--port", "0", "--option", "dense=maybe"], 2),
    ("serve-bad-host", ["serve-reward", "geneval_s", "--port", "0", "--host", "no such host.invalid"], 2),
    ("serve-empty-host", ["serve-reward", "geneval_s", "--port", "0", "--host", ""], 2),
    ("serve-bad-device", ["serve-reward", "geneval_s", "--port", "0", "--device", "bogus"], 2),
    # --- model specs and their '?' options
    ("spec-query-empty-key", ["sample", "--model", "builtin:shapes-flow?=", "--prompt", "a red circle", "--n", "1",
                              "--out", "{out}.png"], 2),
    ("spec-query-no-value", ["sample", "--model", "builtin:shapes-flow?a", "--prompt", "a red circle", "--n", "1",
                             "--out", "{out}.png"], 2),
    ("spec-query-repeated", ["sample", "--model", "builtin:shapes-flow?steps=1&steps=2", "--prompt", "a red circle",
                             "--n", "1", "--out", "{out}.png"], 2),
    ("spec-query-unknown", ["sample", "--model", "builtin:shapes-flow?a=1&a=2", "--prompt", "a red circle", "--n",
                            "1", "--out", "{out}.png"], 2),
    ("spec-steps-1e9", ["sample", "--model", "builtin:shapes-flow?steps=1e9", "--prompt", "a red circle", "--n", "1",
                        "--out", "{out}.png"], 2),
    ("spec-steps-0", ["sample", "--model", "builtin:shapes-flow?steps=0", "--prompt", "a red circle", "--n", "1",
                      "--out", "{out}.png"], 2),
    ("spec-steps-neg", ["eval", "--model", "builtin:shapes-flow?steps=-3", "--per-category", "1"], 2),
    ("spec-steps-float", ["eval", "--model", "builtin:shapes-flow?steps=2.5", "--per-category", "1"], 2),
    ("spec-guidance-nan", ["eval", "--model", "builtin:shapes-flow?guidance=nan", "--per-category", "1"], 2),
    ("spec-guidance-inf", ["eval", "--model", "builtin:shapes-flow?guidance=.inf", "--per-category", "1"], 2),
    ("spec-batch-size-0", ["eval", "--model", "builtin:shapes-flow?batch_size=0", "--per-category", "1"], 2),
    ("spec-eta-on-flow", ["eval", "--model", "builtin:shapes-flow?eta=1", "--per-category", "1"], 2),
    ("spec-ddpm-kind-bogus", ["eval", "--model", "builtin:shapes-ddpm?kind=bogus", "--per-category", "1"], 2),
    ("spec-ddpm-eta-neg", ["eval", "--model", "builtin:shapes-ddpm?kind=ddim&eta=-1", "--per-category", "1"], 2),
    ("spec-oracle-blur-neg", ["eval", "--model", "oracle?blur=-1", "--per-category", "1"], 2),
    ("spec-oracle-blur-nan", ["eval", "--model", "oracle?blur=nan", "--per-category", "1"], 2),
    ("spec-oracle-resolution-0", ["eval", "--model", "oracle?resolution=0", "--per-category", "1"], 2),
    ("spec-oracle-distractors-neg", ["eval", "--model", "oracle?distractors=-1", "--per-category", "1"], 2),
    ("spec-oracle-steps", ["eval", "--model", "oracle?steps=2", "--per-category", "1"], 2),
    ("spec-unknown-model", ["eval", "--model", "bogus", "--per-category", "1"], 2),
    ("spec-path-missing", ["eval", "--model", "builtin:shapes-flow?path={d}/missing", "--per-category", "1"], 2),
    ("spec-path-file", ["eval", "--model", "builtin:shapes-flow?path={d}/text.txt", "--per-category", "1"], 2),
    ("spec-path-empty-dir", ["eval", "--model", "builtin:shapes-flow?path={d}/empty dir", "--per-category", "1"], 2),
    ("model-dir-empty", ["eval", "--model", "{d}/empty dir", "--per-category", "1"], 2),
    ("model-dir-truncated-weights", ["eval", "--model", "{d}/trunc model", "--per-category", "1"], 2),
    ("model-dir-list-config", ["eval", "--model", "{d}/list-config model", "--per-category", "1"], 2),
    ("model-dir-garbage-config", ["eval", "--model", "{d}/garbage-config model", "--per-category", "1"], 2),
    ("model-dir-no-weights", ["eval", "--model", "{d}/no-weights model", "--per-category", "1"], 2),
    ("model-is-a-png", ["eval", "--model", "{d}/image.png", "--per-category", "1"], 2),
    ("model-is-a-run", ["eval", "--model", "{run}", "--per-category", "1"], 2),
    ("model-dir-option-unknown", ["eval", "--model", "{tiny}?bogus=1", "--per-category", "1"], 2),
    ("diffusers-missing", ["eval", "--model", "diffusers:{d}/missing", "--prompts", "animals", "--reward",
                           "compressibility", "--per-category", "1"], 2),
    ("diffusers-empty-dir", ["eval", "--model", "diffusers:{d}/empty dir", "--prompts", "animals", "--reward",
                             "compressibility", "--per-category", "1"], 2),
    # --- eval's prompt sets, rewards and judges
    ("eval-prompts-unknown", ["eval", "--model", "oracle", "--prompts", "bogus", "--per-category", "1"], 2),
    ("eval-prompts-bad-category", ["eval", "--model", "oracle", "--prompts", "geneval-s:bogus", "--per-category",
                                   "1"], 2),
    ("eval-prompts-empty-categories", ["eval", "--model", "oracle", "--prompts", "geneval-s:", "--per-category",
                                       "1"], 2),
    ("eval-prompts-file-missing", ["eval", "--model", "oracle", "--prompts", "file:{d}/missing.txt", "--reward",
                                   "compressibility", "--per-category", "1"], 2),
    ("eval-prompts-file-dir", ["eval", "--model", "oracle", "--prompts", "file:{d}/empty dir", "--reward",
                               "compressibility", "--per-category", "1"], 2),
    ("eval-prompts-file-empty", ["eval", "--model", "oracle", "--prompts", "file:{d}/empty.txt", "--reward",
                                 "compressibility", "--per-category", "1"], 2),
    ("eval-prompts-file-blank", ["eval", "--model", "oracle", "--prompts", "file:{d}/blank.txt", "--reward",
                                 "compressibility", "--per-category", "1"], 2),
    ("eval-prompts-file-png", ["eval", "--model", "oracle", "--prompts", "file:{d}/image.png", "--reward",
                               "compressibility", "--per-category", "1"], 2),
    ("eval-prompts-file-binary", ["eval", "--model", "oracle", "--prompts", "file:{d}/garbage.txt", "--reward",
                                  "compressibility", "--per-category", "1"], 2),
    ("eval-no-verifier-no-reward", ["eval", "--model", "oracle", "--prompts", "animals", "--per-category", "1"], 2),
    ("eval-reward-unknown", ["eval", "--model", "oracle", "--reward", "bogus", "--per-category", "1"], 2),
    ("eval-reward-empty", ["eval", "--model", "oracle", "--reward", "", "--per-category", "1"], 2),
    ("eval-reward-option-unknown", ["eval", "--model", "oracle", "--reward", "geneval_s?bogus=1", "--per-category",
                                    "1"], 2),
    ("eval-reward-option-bad-bool", ["eval", "--model", "oracle", "--reward", "geneval_s?dense=maybe",
                                     "--per-category", "1"], 2),
    ("eval-judge-unknown", ["eval", "--model", "oracle", "--judge", "bogus", "--per-category", "1"], 2),
    ("eval-judge-empty", ["eval", "--model", "oracle", "--judge", "", "--per-category", "1"], 2),
    ("eval-out-dir", ["eval", "--model", "oracle", "--per-category", "1", "--out", "{d}"], 2),
    ("eval-out-yaml", ["eval", "--model", "oracle", "--per-category", "1", "--out", "{out}.yaml"], 2),
    ("eval-out-empty", ["eval", "--model", "oracle", "--per-category", "1", "--out", ""], 2),
    # --- train: recipes that are files of the wrong kind
    ("train-recipe-unknown", ["train", "bogus", "--out", "{out}"], 2),
    ("train-recipe-empty-name", ["train", "", "--out", "{out}"], 2),
    ("train-recipe-png", ["train", "{d}/png.yaml", "--out", "{out}"], 2),
    ("train-recipe-empty-file", ["train", "{d}/empty.yaml", "--out", "{out}"], 2),
    ("train-recipe-binary", ["train", "{d}/garbage.yaml", "--out", "{out}"], 2),
    ("train-recipe-list", ["train", "{d}/list.yaml", "--out", "{out}"], 2),
    ("train-recipe-scalar", ["train", "{d}/scalar.yaml", "--out", "{out}"], 2),
    ("train-recipe-folder", ["train", "{d}/folder.yaml", "--out", "{out}"], 2),
    ("train-recipe-tabs", ["train", "{d}/tabs.yaml", "--out", "{out}"], 2),
    ("train-recipe-pretrain-kind", ["train", "shapes-flow-pretrain", "--out", "{out}"], 2),
    ("train-recipe-kind-bogus", ["train", "{d}/kind-bogus.yaml", "--out", "{out}"], 2),
    ("train-recipe-top-unknown", ["train", "{d}/top-unknown.yaml", "--out", "{out}"], 2),
    ("train-recipe-train-scalar", ["train", "{d}/train-scalar.yaml", "--out", "{out}"], 2),
    ("train-recipe-train-list", ["train", "{d}/train-list.yaml", "--out", "{out}"], 2),
    ("train-recipe-eval-unknown", ["train", "{d}/eval-unknown.yaml", "--out", "{out}"], 2),
    # --- train: overrides, unknown keys at every level, types, ranges, non-finite numbers
    ("ovr-no-equals", ["train", "geneval-s-grpo", "iterations", "--out", "{out}"], 2),
    ("ovr-empty-key", ["train", "geneval-s-grpo", "=5", "--out", "{out}"], 2),
    ("ovr-empty-segment", ["train", "geneval-s-grpo", "train..lr=1", "--out", "{out}"], 2),
    ("ovr-top-unknown", ["train", "geneval-s-grpo", "bogus=1", "--out", "{out}"], 2),
    ("ovr-train-unknown", ["train", "geneval-s-grpo", "train.bogus=1", "--out", "{out}"], 2),
    ("ovr-eval-unknown", ["train", "geneval-s-grpo", "eval.bogus=1", "--out", "{out}"], 2),
    ("ovr-train-deep", ["train", "geneval-s-grpo", "train.lr.x=1", "--out", "{out}"], 2),
    ("ovr-train-scalar", ["train", "geneval-s-grpo", "train=5", "--out", "{out}"], 2),
    ("ovr-iterations-0", ["train", "geneval-s-grpo", "train.iterations=0", "--out", "{out}"], 2),
    ("ovr-iterations-neg", ["train", "geneval-s-grpo", "train.iterations=-1", "--out", "{out}"], 2),
    ("ovr-iterations-float", ["train", "geneval-s-grpo", "train.iterations=1.5", "--out", "{out}"], 2),
    ("ovr-iterations-bool", ["train", "geneval-s-grpo", "train.iterations=true", "--out", "{out}"], 2),
    ("ovr-iterations-str", ["train", "geneval-s-grpo", "train.iterations=abc", "--out", "{out}"], 2),
    ("ovr-iterations-empty", ["train", "geneval-s-grpo", "train.iterations=", "--out", "{out}"], 2),
    ("ovr-iterations-list", ["train", "geneval-s-grpo", "train.iterations=[1]", "--out", "{out}"], 2),
    ("ovr-lr-nan", ["train", "geneval-s-grpo", "train.lr=nan", "--out", "{out}"], 2),
    ("ovr-lr-inf", ["train", "geneval-s-grpo", "train.lr=.inf", "--out", "{out}"], 2),
    ("ovr-lr-0", ["train", "geneval-s-grpo", "train.lr=0", "--out", "{out}"], 2),
    ("ovr-lr-neg", ["train", "geneval-s-grpo", "train.lr=-1e-4", "--out", "{out}"], 2),
    ("ovr-batch-size-0", ["train", "geneval-s-grpo", "train.batch_size=0", "--out", "{out}"], 2),
    ("ovr-group-not-dividing", ["train", "geneval-s-grpo", "train.batch_size=8", "train.group_size=3", "--out",
                                "{out}"], 2),
    ("ovr-minibatches-not-dividing", ["train", "geneval-s-grpo", "train.batch_size=8", "train.group_size=4",
                                      "train.minibatches=3", "--out", "{out}"], 2),
    ("ovr-betas-one", ["train", "geneval-s-grpo", T, "train.adam_betas=[0.9]", "--out", "{out}"], 2),
    ("ovr-betas-three", ["train", "geneval-s-grpo", T, "train.adam_betas=[0.9,0.9,0.9]", "--out", "{out}"], 2),
    ("ovr-betas-range", ["train", "geneval-s-grpo", "train.adam_betas=[0.9,1.5]", "--out", "{out}"], 2),
    ("ovr-betas-scalar", ["train", "geneval-s-grpo", "train.adam_betas=0.9", "--out", "{out}"], 2),
    ("ovr-lora-targets-empty", ["train", "geneval-s-grpo", T, "train.lora_targets=[]", "--out", "{out}"], 2),
    ("ovr-lora-targets-none-match", ["train", "geneval-s-grpo", T, "train.lora_targets=[bogus]", "--out", "{out}"],
     2),
    ("ovr-lora-targets-str", ["train", "geneval-s-grpo", T, "train.lora_targets=to_q", "--out", "{out}"], 2),
    ("ovr-lora-rank-0", ["train", "geneval-s-grpo", "train.lora_rank=0", "--out", "{out}"], 2),
    ("ovr-keep-checkpoints-0", ["train", "geneval-s-grpo", "train.keep_checkpoints=0", "--out", "{out}"], 2),
    ("ovr-keep-checkpoints-float", ["train", "geneval-s-grpo", "train.keep_checkpoints=1.5", "--out", "{out}"], 2),
    ("ovr-ema-decay-nan", ["train", "geneval-s-grpo", "train.ema_decay=nan", "--out", "{out}"], 2),
    ("ovr-ema-decay-1", ["train", "geneval-s-grpo", "train.ema_decay=1", "--out", "{out}"], 2),
    ("ovr-budget-minutes-nan", ["train", "geneval-s-grpo", "train.budget_minutes=nan", "--out", "{out}"], 2),
    ("ovr-seed-neg", ["train", "geneval-s-grpo", "train.seed=-1", "--out", "{out}"], 2),
    ("ovr-finetune-bogus", ["train", "geneval-s-grpo", "train.finetune=half", "--out", "{out}"], 2),
    ("ovr-mixed-precision-bogus", ["train", "geneval-s-grpo", "train.mixed_precision=fp8", "--out", "{out}"], 2),
    ("ovr-optimizer-bogus", ["train", "geneval-s-grpo", "train.optimizer=sgd", "--out", "{out}"], 2),
    ("ovr-report-to-bogus", ["train", "geneval-s-grpo", T, "train.report_to=bogus", "--out", "{out}"], 2),
    ("ovr-report-to-int", ["train", "geneval-s-grpo", T, "train.report_to=5", "--out", "{out}"], 2),
    ("ovr-compile-backend-bogus", ["train", "geneval-s-grpo", T, "train.compile=true",
                                   "train.compile_backend=bogus", "--out", "{out}"], 2),
    ("ovr-eval-steps-0", ["train", "geneval-s-grpo", "eval.steps=0", "--out", "{out}"], 2),
    ("ovr-eval-guidance-nan", ["train", "geneval-s-grpo", "eval.guidance=nan", "--out", "{out}"], 2),
    ("ovr-eval-judges-unknown", ["train", "geneval-s-grpo", T, "eval.judges=[bogus]", "--out", "{out}"], 2),
    ("ovr-eval-judges-str", ["train", "geneval-s-grpo", T, "eval.judges=bogus", "--out", "{out}"], 2),
    ("ovr-sampling-unknown", ["train", "geneval-s-grpo", T, "sampling.bogus=1", "--out", "{out}"], 2),
    ("ovr-sampling-steps-0", ["train", "geneval-s-grpo", T, "sampling.steps=0", "--out", "{out}"], 2),
    ("ovr-sampling-noise-nan", ["train", "geneval-s-grpo", T, "sampling.noise_level=nan", "--out", "{out}"], 2),
    ("ovr-sampling-scalar", ["train", "geneval-s-grpo", "sampling=5", "--out", "{out}"], 2),
    ("ovr-reward-unknown", ["train", "geneval-s-grpo", T, "reward=bogus", "--out", "{out}"], 2),
    ("ovr-reward-option-unknown", ["train", "geneval-s-grpo", T, "reward_options.bogus=1", "--out", "{out}"], 2),
    ("ovr-reward-options-scalar", ["train", "geneval-s-grpo", T, "reward_options=5", "--out", "{out}"], 2),
    ("ovr-algorithm-unknown", ["train", "geneval-s-grpo", T, "algorithm=bogus", "--out", "{out}"], 2),
    ("ovr-algorithm-option-unknown", ["train", "geneval-s-grpo", T, "algorithm_options.bogus=1", "--out", "{out}"],
     2),
    ("ovr-algorithm-option-nan", ["train", "geneval-s-grpo", T, "algorithm_options.kl_beta=nan", "--out", "{out}"],
     2),
    ("ovr-algorithm-options-list", ["train", "geneval-s-grpo", T, "algorithm_options=[1]", "--out", "{out}"], 2),
    ("ovr-model-unknown", ["train", "geneval-s-grpo", T, "model=bogus", "--out", "{out}"], 2),
    ("ovr-model-empty", ["train", "geneval-s-grpo", T, "model=", "--out", "{out}"], 2),
    ("ovr-model-int", ["train", "geneval-s-grpo", T, "model=5", "--out", "{out}"], 2),
    ("ovr-model-oracle", ["train", "geneval-s-grpo", T, "model=oracle", "--out", "{out}"], 2),
    ("ovr-model-options-unknown", ["train", "geneval-s-grpo", T, "model_options.bogus=1", "--out", "{out}"], 2),
    ("ovr-model-options-scalar", ["train", "geneval-s-grpo", T, "model_options=5", "--out", "{out}"], 2),
    ("ovr-prompts-unknown", ["train", "geneval-s-grpo", T, "prompts=bogus", "--out", "{out}"], 2),
    ("ovr-prompts-file-missing", ["train", "geneval-s-grpo", T, "prompts=file:{d}/missing.txt", "--out", "{out}"], 2),
    ("ovr-name-list", ["train", "geneval-s-grpo", "name=[1]", "--out", "{out}"], 2),
    ("ovr-dpo-data-missing", ["train", "geneval-s-diffusion-dpo", T, "train.group_size=2", "data={d}/missing",
                              "--out", "{out}"], 2),
    ("ovr-dpo-data-file", ["train", "geneval-s-diffusion-dpo", T, "train.group_size=2", "data={d}/text.txt", "--out",
                           "{out}"], 2),
    ("ovr-dpo-data-empty-dir", ["train", "geneval-s-diffusion-dpo", T, "train.group_size=2", "data={d}/empty dir",
                                "--out", "{out}"], 2),
    ("ovr-dpo-data-empty", ["train", "geneval-s-diffusion-dpo", T, "train.group_size=2", "data=", "--out", "{out}"],
     2),
    # --- train: run folders
    ("train-out-file", ["train", "geneval-s-grpo", "--out", "{d}/text.txt"], 2),
    ("train-out-through-file", ["train", "geneval-s-grpo", T, "--out", "{d}/text.txt/run"], 2),
    ("train-existing-run-no-resume", ["train", "geneval-s-grpo", T, "--out", "{run}"], 2),
    ("train-resume-empty-folder", ["train", "geneval-s-grpo", T, "--out", "{d}/empty dir", "--resume"], 2),
    ("train-resume-missing-folder", ["train", "geneval-s-grpo", T, "--out", "{out}", "--resume"], 2),
    ("train-resume-unknown-checkpoint", ["train", "geneval-s-grpo", T, "--out", "{run}", "--resume",
                                         "iter-999999"], 2),
    ("train-resume-foreign-folder", ["train", "geneval-s-grpo", T, "--out", "{run}", "--resume", "{d}"], 2),
    ("train-resume-other-recipe", ["train", "geneval-s-nft", T, "--out", "{run}", "--resume"], 2),
    ("train-resume-other-settings", ["train", "geneval-s-grpo", T, "train.lr=0.5", "--out", "{run}", "--resume"], 2),
    ("train-resume-list-recipe", ["train", "geneval-s-grpo", T, "--out", "{d}/list-recipe ck run", "--resume"], 2),
    ("train-recipe-is-list-recipe-json", ["train", "{d}/list-recipe run", "--out", "{out}"], 2),
    ("train-recipe-is-bad-json", ["train", "{d}/bad-json run/recipe.json", "--out", "{out}"], 2),
    ("train-resume-truncated-weights", ["train", "geneval-s-grpo", T, "--out", "{d}/trunc-weights run",
                                        "--resume"], 2),
    # --- pretrain
    ("pretrain-recipe-unknown", ["pretrain", "bogus", "--out", "{out}"], 2),
    ("pretrain-recipe-train-kind", ["pretrain", "geneval-s-grpo", "--out", "{out}"], 2),
    ("pretrain-recipe-png", ["pretrain", "{d}/png.yaml", "--out", "{out}"], 2),
    ("pretrain-recipe-empty-file", ["pretrain", "{d}/empty.yaml", "--out", "{out}"], 2),
    ("pretrain-steps-0", ["pretrain", "shapes-flow-pretrain", "train.steps=0", "--out", "{out}"], 2),
    ("pretrain-lr-nan", ["pretrain", "shapes-flow-pretrain", "train.lr=nan", "--out", "{out}"], 2),
    ("pretrain-cfg-dropout-1", ["pretrain", "shapes-flow-pretrain", "train.cfg_dropout=1", "--out", "{out}"], 2),
    ("pretrain-model-unknown-key", ["pretrain", "shapes-flow-pretrain", "model.bogus=1", "--out", "{out}"], 2),
    ("pretrain-model-resolution-0", ["pretrain", "shapes-flow-pretrain", "model.resolution=0", "--out", "{out}"], 2),
    ("pretrain-model-channels-empty", ["pretrain", "shapes-flow-pretrain", "model.channels=[]", "--out", "{out}"], 2),
    ("pretrain-model-scalar", ["pretrain", "shapes-flow-pretrain", "model=5", "--out", "{out}"], 2),
    ("pretrain-init-unknown", ["pretrain", "shapes-flow-sft", "init=bogus", "--out", "{out}"], 2),
    ("pretrain-init-oracle", ["pretrain", "shapes-flow-sft", "init=oracle", "--out", "{out}"], 2),
    ("pretrain-reward-unknown-key", ["pretrain", "geneval-s-reward-pretrain", "train.bogus=1", "--out", "{out}"], 2),
    ("pretrain-reward-model-unknown", ["pretrain", "geneval-s-reward-pretrain", "model.bogus=1", "--out", "{out}"], 2),
    ("pretrain-vq-steps-0", ["pretrain", "shapes-vq-pretrain", "train.steps=0", "--out", "{out}"], 2),
    ("pretrain-vq-unknown", ["pretrain", "shapes-vq-pretrain", "bogus=1", "--out", "{out}"], 2),
    ("pretrain-ar-steps-nan", ["pretrain", "shapes-ar-pretrain", "train.lr=nan", "--out", "{out}"], 2),
    ("pretrain-vae-unknown", ["pretrain", "shapes-vae-pretrain", "train.bogus=1", "--out", "{out}"], 2),
    ("pretrain-sd3-steps-neg", ["pretrain", "shapes-sd3-pretrain", "train.steps=-1", "--out", "{out}"], 2),
    ("pretrain-out-file", ["pretrain", "shapes-flow-pretrain", "--out", "{d}/text.txt"], 2),
    # --- diagnose
    ("diagnose-recipe-unknown", ["diagnose", "bogus"], 2),
    ("diagnose-recipe-list", ["diagnose", "{d}/list.yaml"], 2),
    ("diagnose-override-unknown", ["diagnose", "geneval-s-grpo", "train.bogus=1"], 2),
    ("diagnose-out-dir", ["diagnose", "geneval-s-grpo", "--out", "{d}"], 2),
    ("diagnose-out-png", ["diagnose", "geneval-s-grpo", "--out", "{out}.png"], 2),
    # --- report
    ("report-missing", ["report", "{d}/missing"], 2),
    ("report-empty-folder", ["report", "{d}/empty dir"], 2),
    ("report-a-file", ["report", "{d}/text.txt"], 2),
    ("report-garbage-metrics", ["report", "{d}/garbage-metrics run"], 2),
    ("report-list-recipe", ["report", "{d}/list-recipe run"], 2),
    # --- export
    ("export-no-checkpoint", ["export", "{d}/no-checkpoint run", "--format", "merged", "--out", "{out}"], 2),
    ("export-missing-run", ["export", "{d}/missing", "--format", "merged", "--out", "{out}"], 2),
    ("export-run-is-file", ["export", "{d}/text.txt", "--format", "merged", "--out", "{out}"], 2),
    ("export-empty-folder", ["export", "{d}/empty dir", "--format", "merged", "--out", "{out}"], 2),
    ("export-list-recipe", ["export", "{d}/list-recipe run", "--format", "merged", "--out", "{out}"], 2),
    ("export-bad-json-recipe", ["export", "{d}/bad-json run", "--format", "merged", "--out", "{out}"], 2),
    ("export-truncated-weights", ["export", "{d}/trunc-weights run", "--format", "merged", "--out", "{out}"], 2),
    ("export-format-bogus", ["export", "{run}", "--format", "bogus", "--out", "{out}"], 2),
    ("export-format-empty", ["export", "{run}", "--format", "", "--out", "{out}"], 2),
    ("export-lora-of-builtin", ["export", "{run}", "--format", "diffusers-lora", "--out", "{out}"], 2),
    ("export-out-non-empty", ["export", "{run}", "--format", "merged", "--out", "{d}/non-empty out"], 2),
    ("export-out-file", ["export", "{run}", "--format", "merged", "--out", "{d}/text.txt"], 2),
    ("export-private-without-push", ["export", "{run}", "--format", "merged", "--out", "{out}", "--private"], 2),
    ("export-push-bad-repo", ["export", "{run}", "--format", "merged", "--out", "{out}", "--push-to-hub",
                              "not a repo!!"], 2),
    # --- make-pairs
    ("make-pairs-reward-unknown", ["make-pairs", "--model", "oracle", "--reward", "bogus", "--out", "{out}"], 2),
    ("make-pairs-reward-option-unknown", ["make-pairs", "--model", "oracle", "--reward-option", "bogus=1", "--out",
                                          "{out}"], 2),
    ("make-pairs-reward-option-no-equals", ["make-pairs", "--model", "oracle", "--reward-option", "dense", "--out",
                                            "{out}"], 2),
    ("make-pairs-reward-option-nan", ["make-pairs", "--model", "oracle", "--reward", "compressibility",
                                      "--reward-option", "quality=nan", "--out", "{out}"], 2),
    ("make-pairs-prompts-unknown", ["make-pairs", "--model", "oracle", "--prompts", "bogus", "--out", "{out}"], 2),
    ("make-pairs-model-unknown", ["make-pairs", "--model", "bogus", "--n-prompts", "1", "--out", "{out}"], 2),
    ("make-pairs-out-existing", ["make-pairs", "--model", "oracle", "--n-prompts", "1", "--out", "{d}/non-empty out"],
     2),
    ("make-pairs-out-file", ["make-pairs", "--model", "oracle", "--n-prompts", "1", "--out", "{d}/text.txt"], 2),
    # --- compare
    ("compare-algorithm-unknown", ["compare", "bogus", "--budget-nfe", "10", "--out", "{out}"], 2),
    ("compare-algorithm-option-nan", ["compare", "grpo:kl_beta=nan", "--budget-nfe", "10", "--out", "{out}"], 2),
    ("compare-algorithm-option-unknown", ["compare", "grpo:bogus=1", "--budget-nfe", "10", "--out", "{out}"], 2),
    ("compare-algorithm-option-no-equals", ["compare", "grpo:kl_beta", "--budget-nfe", "10", "--out", "{out}"], 2),
    ("compare-algorithm-option-empty-key", ["compare", "grpo:=1", "--budget-nfe", "10", "--out", "{out}"], 2),
    ("compare-algorithm-twice", ["compare", "grpo", "grpo", "--budget-nfe", "10", "--out", "{out}"], 2),
    ("compare-set-unknown", ["compare", "grpo", "--budget-nfe", "10", "--set", "train.bogus=1", "--out", "{out}"], 2),
    ("compare-set-no-equals", ["compare", "grpo", "--budget-nfe", "10", "--set", "bogus", "--out", "{out}"], 2),
    ("compare-prompts-bogus", ["compare", "grpo", "--budget-nfe", "10", "--prompts", "geneval-s:bogus", "--out",
                               "{out}"], 2),
    ("compare-model-unknown", ["compare", "grpo", "--budget-nfe", "10", "--model", "bogus", "--out", "{out}"], 2),
    ("compare-recipe-and-nfe-budgets", ["compare", "grpo", "--budget-nfe", "10", "--budget-recipe", "--out",
                                        "{out}"], 2),
    ("compare-budget-nfe-float", ["compare", "grpo", "--budget-nfe", "1e6", "--out", "{out}"], 2),
    ("compare-out-file", ["compare", "grpo", "--budget-nfe", "10", "--out", "{d}/text.txt"], 2),
]


def _fill(argv, files, out):
    tiny_train = tiny_run(files["tiny"])
    filled = []
    for a in argv:
        if a == T:
            filled += tiny_train
        else:
            filled.append(a.format(out=out, **files))
    return filled


def _check(code, err, expected, argv):
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("visalign")]
    assert "Traceback" not in err, err
    assert code == expected, f"exit {code}, expected {expected}; stderr: {err[-2000:]}"
    assert len(errors) == 1 and errors[0] == lines[-1], f"not one line: {err[-2000:]}"
    assert len(lines) == 1 or all(x.lower().startswith(("warning", "note")) for x in lines[:-1]), err[-2000:]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_bad_command_line_is_one_line_and_exit_2(case, files, tmp_path, capsys):
    _, argv, expected = case
    argv = _fill(argv, files, str(tmp_path / "out ü"))
    code, err = run_cli(argv, capsys)
    _check(code, err, expected, argv)


def test_a_bad_threads_setting_is_one_line(monkeypatch, capsys):
    for value in ("abc", "0", "-2", ""):
        monkeypatch.setenv("VISALIGN_THREADS", value)
        code, err = run_cli(["list"], capsys)
        assert code == 2 and err.count("\n") == 1 and "VISALIGN_THREADS" in err and "Traceback" not in err, err


# ------------------------------------------------------------------------------------- the library entry points


def _library_cases():
    from visalign.recipe import load_train_recipe
    from visalign.models.registry import load_generator
    from visalign.rewards import load_reward
    from visalign.rewards.base import load_reward_spec

    img = torch.zeros(2, 3, 16, 16)
    two = ["a red circle"] * 2
    g = lambda *a, **k: load_reward("geneval_s")(*a, **k)
    return [
        ("gen-empty", lambda: load_generator("")),
        ("gen-query-only", lambda: load_generator("?steps=2")),
        ("gen-none", lambda: load_generator(None)),
        ("gen-int", lambda: load_generator(5)),
        ("gen-unknown", lambda: load_generator("bogus")),
        ("gen-repeated-option", lambda: load_generator("oracle?blur=1&blur=2")),
        ("gen-steps-1e9", lambda: load_generator("builtin:shapes-flow?steps=1e9")),
        ("gen-oracle-resolution-huge", lambda: load_generator("oracle?resolution=400000")),
        ("gen-prompts-a-string", lambda: load_generator("oracle").generate("a red circle", [0])),
        ("gen-fewer-seeds", lambda: load_generator("oracle").generate(two, [0])),
        ("gen-negative-seed", lambda: load_generator("oracle").generate(["a red circle"], [-1])),
        ("gen-float-seed", lambda: load_generator("oracle").generate(["a red circle"], [0.5])),
        ("gen-prompt-int", lambda: load_generator("oracle").generate([5], [0])),
        ("gen-flow-prompt-int", lambda: load_generator("builtin:shapes-flow?steps=1").generate([5], [0])),
        ("gen-flow-fewer-seeds", lambda: load_generator("builtin:shapes-flow?steps=1").generate(two, [0])),
        ("reward-unknown", lambda: load_reward("bogus")),
        ("reward-option-unknown", lambda: load_reward("geneval_s", bogus=1)),
        ("reward-option-bool", lambda: load_reward("geneval_s", dense="maybe")),
        ("reward-option-nan", lambda: load_reward("compressibility", quality=float("nan"))),
        ("reward-option-out-of-range", lambda: load_reward("compressibility", quality=0)),
        ("reward-spec-repeated", lambda: load_reward_spec("geneval_s?dense=true&dense=false")),
        ("reward-combine-empty", lambda: load_reward("combine")),
        ("reward-remote-bad-url", lambda: load_reward("remote", url="not a url")),
        ("recipe-unknown", lambda: load_train_recipe("bogus")),
        ("recipe-override-nan", lambda: load_train_recipe("geneval-s-grpo", ["train.lr=nan"])),
        ("recipe-override-not-a-string", lambda: load_train_recipe("geneval-s-grpo", [5])),
        ("recipe-override-betas-short", lambda: load_train_recipe("geneval-s-grpo", ["train.adam_betas=[0.9]"])),
        ("recipe-reward-options-list", lambda: load_train_recipe("geneval-s-grpo", ["reward_options=[1]"])),
        ("call-uint8", lambda: g(img.to(torch.uint8), two)),
        ("call-channels-last", lambda: g(torch.zeros(2, 16, 16, 3), two)),
        ("call-3d", lambda: g(torch.zeros(3, 16, 16), ["a red circle"])),
        ("call-numpy", lambda: g(np.zeros((2, 3, 16, 16), np.float32), two)),
        ("call-0-255", lambda: g(torch.full((2, 3, 16, 16), 200.0), two)),
        ("call-one-prompt-for-two", lambda: g(img, ["a red circle"])),
        ("call-prompts-a-string", lambda: g(img, "ab")),
        ("call-prompts-none", lambda: g(img, None)),
        ("call-prompts-ints", lambda: g(img, [1, 2])),
        ("call-prompt-none", lambda: load_reward("compressibility")(img, [None, "x"])),
        ("call-no-pixels", lambda: g(torch.zeros(2, 3, 0, 0), two)),
        ("call-one-channel", lambda: g(torch.zeros(2, 1, 16, 16), two)),
        ("call-empty-prompt", lambda: g(img, ["", ""])),
        ("call-prompt-outside-grammar", lambda: g(img, ["a purple elephant", "x"])),
    ]


LIBRARY = [name for name, _ in _library_cases()]


@pytest.mark.parametrize("name", LIBRARY)
def test_a_bad_library_call_raises_a_one_line_user_error(name):
    """A ValueError (ConfigError, PromptError, RewardInputError, ...), a RegistryError or, for a value of the wrong
    Python type, a TypeError raised by our own check: one line, never a deep AttributeError or a numpy message."""
    fn = dict(_library_cases())[name]
    with pytest.raises((ValueError, KeyError, TypeError)) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and "object has no attribute" not in msg and "non-negative integer" not in msg, msg
    assert info.traceback[-1].path.name != "pathlib.py", msg


def test_a_nan_image_scores_nan_and_a_good_batch_is_untouched():
    """Not an error, and not a silent wrong score: NaN images score NaN (the trainer skips such an update)."""
    from visalign.rewards import load_reward

    images = torch.zeros(2, 3, 16, 16)
    images[0] = float("nan")
    scores = load_reward("geneval_s")(images, ["a red circle"] * 2).scores
    assert torch.isnan(scores[0]) and torch.isfinite(scores[1])


# ------------------------------------------------------------------------------------------------ signals, pipes


def _cli(*argv, **kw):
    env = {**os.environ, "VISALIGN_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "visalign.cli", *argv], cwd=ROOT, env=env, text=True, **kw)


def test_sigterm_ends_a_run_as_ctrl_c_does_and_the_resumed_run_is_exact(files, tmp_path):
    """SIGTERM (kill, a scheduler's stop): exit 143 and one line naming the checkpoint and the command that
    resumes; the resumed run's weights equal a run never stopped."""
    from safetensors.torch import load_file

    run, straight = tmp_path / "term ü", tmp_path / "straight"
    over = [a for a in tiny_run(files["tiny"]) if not a.startswith("train.iterations")]
    child = _cli("train", "geneval-s-grpo", *over, "train.iterations=1000", "--out", str(run),
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not (run / "checkpoints" / "latest").exists() and child.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert (run / "checkpoints" / "latest").exists(), child.stderr.read() if child.poll() is not None else ""
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 143 and "Traceback" not in err, err
    line = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("visalign train: terminated (SIGTERM)")]
    assert len(line) == 1 and line[0].endswith(" --resume"), err
    resume = shlex.split(line[0].split(": ", 3)[-1])
    done = int(line[0].split("the last checkpoint is iter-")[1][:6])
    stop = done + 1
    assert main([*resume[1:], f"train.iterations={stop}"]) == 0
    assert main(["train", "geneval-s-grpo", *over, f"train.iterations={stop}", "--out", str(straight)]) == 0
    name = ("checkpoints", f"iter-{stop:06d}", "weights.safetensors")
    a, b = load_file(str(straight.joinpath(*name))), load_file(str(run.joinpath(*name)))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_closed_pipe_ends_quietly():
    """`visalign list | head -1`: the reader is gone; no traceback, the exit code of a SIGPIPE."""
    child = _cli("list", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # before it writes (it imports torch first): its first write finds no reader
    err = child.stderr.read()
    child.wait(timeout=60)
    assert child.returncode == 141 and "Traceback" not in err and "Exception ignored" not in err, err
