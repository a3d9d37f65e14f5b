"""Hard edges of the run folder and the command line (issue #34): one trainer per folder, empty or wrong-kind
outputs, leftovers of a killed run, pairs datasets confined to their folder, and every user-caused error as one
line with exit code 2 (Ctrl-C: 130, with the command that resumes)."""

import errno
import json
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
from safetensors import SafetensorError
from safetensors.torch import load_file

from visalign.cli import main
from visalign.pairs import PairDataError, PairDataset
from visalign.runfolder import RunFolderError, RunLock, os_error_line
from visalign.metrics import TIMING_FIELDS, read_metrics

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The tiny random flow model of conftest, saved once for the module (every run here trains it)."""
    from conftest import _tiny_model

    path = tmp_path_factory.mktemp("model") / "tiny"
    _tiny_model("velocity").save_pretrained(path)
    return path


def _over(tiny_dir, *extra):
    """A tiny run scored by a reward a subprocess can load too (the dense GenEval-S verifier)."""
    return [f"model={tiny_dir}", "train.batch_size=8", "train.group_size=4", "train.eval_per_category=1",
            "sampling.steps=3", "reward=geneval_s", "reward_options.dense=true", "train.checkpoint_every=1",
            "train.eval_every=2", "train.diagnose_every=0", *extra]


def _one_line(capsys, needle: str) -> str:
    """The error is one line on stderr (beside a training run's progress bar), and no traceback."""
    err = capsys.readouterr().err
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("visalign ")]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    return lines[0]


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS and not k.startswith("time_")} for r in rows]


# ------------------------------------------------------------------------------------------- output paths


@pytest.mark.parametrize("argv", [
    ["sample", "--model", "oracle", "--prompt", "a red circle"],
    ["eval", "--model", "oracle"],
    ["diagnose", "geneval-s-grpo"],
    ["train", "geneval-s-grpo"],
    ["pretrain", "shapes-flow-pretrain"],
    ["make-pairs", "--model", "oracle"],
    ["export", "runs/x", "--format", "merged"],
    ["compare", "grpo"],
])
def test_an_empty_out_is_refused(argv, capsys):
    """`--out ""` would make the current folder the output (a run folder, a dataset): refused before loading."""
    assert main([*argv, "--out", ""]) == 2
    _one_line(capsys, "--out is empty; accepted: a path")


def test_an_empty_run_is_refused(capsys):
    assert main(["report", ""]) == 2
    _one_line(capsys, "RUN is empty")


def test_sample_out_must_be_a_png_file(tmp_path, capsys):
    base = ["sample", "--model", "oracle", "--prompt", "a red circle", "--n", "1", "--out"]
    assert main([*base, str(tmp_path)]) == 2
    _one_line(capsys, "is a folder; accepted: a file path ending in .png")
    (tmp_path / "eval.json").write_text("{}")
    assert main([*base, str(tmp_path / "eval.json")]) == 2
    _one_line(capsys, "ends in '.json'; accepted: .png")
    assert (tmp_path / "eval.json").read_text() == "{}"  # untouched
    png = tmp_path / "grid.png"
    png.write_bytes(b"old")
    assert main([*base, str(png)]) == 0  # overwriting an image is what --out is for
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_eval_out_must_be_json_and_train_out_a_folder(tmp_path, capsys):
    assert main(["eval", "--model", "oracle", "--out", str(tmp_path)]) == 2
    _one_line(capsys, "is a folder; accepted: a file path ending in .json")
    (tmp_path / "file").write_text("x")
    assert main(["train", "geneval-s-grpo", "--out", str(tmp_path / "file")]) == 2
    _one_line(capsys, "is an existing file; accepted: a folder")


# ------------------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("text, needle", [
    ("kind: train\nmodel: [unclosed\n", "is not valid YAML at line"),
    ("- kind: train\n- model: x\n", "holds a list at the top level; accepted: a mapping"),
])
def test_a_broken_yaml_recipe_is_one_line(tmp_path, capsys, text, needle):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    for command in ("train", "pretrain"):
        assert main([command, str(recipe), "--out", str(tmp_path / "out")]) == 2
        _one_line(capsys, needle)


# ------------------------------------------------------------------------------------------- file-system errors


def test_os_errors_a_user_causes_are_named_and_others_are_bugs():
    assert os_error_line(OSError(errno.ENOSPC, "No space left on device"), "runs/r", training=True) == (
        "disk full while writing runs/r; free some space and resume the run (--resume goes on from its last "
        "checkpoint)")
    assert os_error_line(OSError(errno.EADDRINUSE, "Address already in use"), "port 8000") == (
        "cannot use port 8000: address already in use (another process listens there)")
    assert os_error_line(OSError(errno.EROFS, "Read-only file system", "/mnt/r")) == (
        "cannot use /mnt/r: read-only file system")
    assert os_error_line(OSError(errno.EIO, "Input/output error", "/x")) is None  # not the user's: a traceback


def test_an_unwritable_out_is_one_line(tiny_dir, tmp_path, capsys, monkeypatch):
    """Permissions cannot be tested as root (root writes anywhere): the refusal the OS gives is simulated."""
    real = Path.mkdir

    def refuse(self, *args, **kwargs):
        if self.name == "r":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert main(["train", "geneval-s-grpo", *_over(tiny_dir), "--out", str(tmp_path / "r")]) == 2
    _one_line(capsys, f"cannot use {tmp_path / 'r'}: permission denied")
    (tmp_path / "file").write_text("x")  # a path through a file: the OS refuses, one line too
    assert main(["train", "geneval-s-grpo", *_over(tiny_dir), "--out", str(tmp_path / "file" / "run")]) == 2
    _one_line(capsys, "a part of the path is a file, not a folder")


def test_a_full_disk_is_named_and_the_run_resumes(tiny_dir, tmp_path, capsys, monkeypatch):
    """The second checkpoint hits a full disk: one line naming it (not torch's or safetensors' words), no temp
    folder left, and --resume goes on from the first."""
    from visalign import checkpoint

    real, calls = checkpoint.save_file, []

    def full(tensors, path):
        calls.append(path)
        if len(calls) == 3:  # iteration 2's weights (iteration 1 wrote weights and rng)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, path)

    monkeypatch.setattr(checkpoint, "save_file", full)
    run = tmp_path / "r"
    assert main(["train", "geneval-s-grpo", *_over(tiny_dir, "train.iterations=2"), "--out", str(run)]) == 2
    _one_line(capsys, f"disk full while writing {run / 'checkpoints' / 'iter-000002'}")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter-000001", "latest"]
    monkeypatch.setattr(checkpoint, "save_file", real)
    assert main(["train", "geneval-s-grpo", *_over(tiny_dir, "train.iterations=2"), "--out", str(run),
                 "--resume"]) == 0


# ------------------------------------------------------------------------------------------- run files


def test_run_files_damaged_by_a_crash(tiny_dir, tmp_path, capsys):
    """A partial last line of metrics.jsonl (a kill mid-write) is dropped with a note, by report and resume; a
    corrupt line elsewhere and a state.json without its keys are refused in one line naming the file; stale
    temp folders and files of a killed write are removed on the next start."""
    run = tmp_path / "r"
    over = _over(tiny_dir, "train.keep_checkpoints=2")
    assert main(["train", "geneval-s-grpo", *over, "train.iterations=2", "--out", str(run)]) == 0
    metrics = run / "metrics.jsonl"
    whole = metrics.read_text()
    cut = whole[: whole.rstrip("\n").rindex("\n") + 25]  # iteration 2's line cut mid-way
    metrics.write_text(cut)
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    assert "metrics.jsonl ends in a partial line" in capsys.readouterr().err
    assert [r["iteration"] for r in read_metrics(run, note=lambda m: None)] == [0, 1]

    lines = whole.splitlines()
    metrics.write_text("\n".join([lines[0], lines[1][:20], *lines[2:]]) + "\n")
    assert main(["report", str(run)]) == 2
    _one_line(capsys, f"{metrics} line 2 is not JSON")

    metrics.write_text(cut)
    stale = [run / "checkpoints" / ".tmp-abc123", run / "checkpoints" / ".latest.x1.tmp", run / ".recipe.json.y.tmp"]
    stale[0].mkdir()
    (stale[0] / "weights.safetensors").write_bytes(b"half")
    for path in stale[1:]:
        path.write_text("half")
    state_path = run / "checkpoints" / "iter-000001" / "state.json"
    state = json.loads(state_path.read_text())
    state_path.write_text(json.dumps({k: v for k, v in state.items() if k != "nfe"}))
    assert main(["train", "geneval-s-grpo", *over, "train.iterations=3", "--out", str(run), "--resume",
                 "iter-000001"]) == 2
    _one_line(capsys, f"{state_path} lacks nfe")
    assert not any(path.exists() for path in stale)  # removed at the start, before the resume was refused

    state_path.write_text(json.dumps(state))
    assert main(["train", "geneval-s-grpo", *over, "train.iterations=3", "--out", str(run), "--resume",
                 "iter-000001"]) == 0
    assert "ends in a partial line" in capsys.readouterr().err
    assert [r["iteration"] for r in read_metrics(run)] == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------------- pairs datasets


def _pairs(root: Path, chosen: str, image: bytes | None = None) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "images" / "b.png")
    if image is not None:
        (root / "images" / "a.png").write_bytes(image)
    (root / "meta.json").write_text(json.dumps({"format": "visalign-pairs/1"}))
    pair = {"prompt": "a red circle", "chosen": chosen, "rejected": "images/b.png"}
    (root / "pairs.jsonl").write_text(json.dumps(pair) + "\n")
    return root


@pytest.mark.parametrize("chosen", ["/etc/passwd", "../outside.png", "images/../../outside.png", "link/x.png"])
def test_pairs_images_stay_inside_the_dataset_folder(tmp_path, chosen):
    (tmp_path / "outside.png").write_bytes(b"secret")
    root = _pairs(tmp_path / "ds", chosen)
    (root / "link").symlink_to(tmp_path, target_is_directory=True)  # a link out of the folder
    with pytest.raises(PairDataError, match=r"pairs.jsonl' line 1 chosen is '.*', outside the dataset folder"):
        PairDataset(root)


def test_pairs_image_that_is_not_an_image_is_one_line(tmp_path):
    ds = PairDataset(_pairs(tmp_path / "ds", "images/a.png", image=b"GIF89a not really"))
    with pytest.raises(PairDataError, match=r"lists images/a.png, which is not a readable image \(Unidentified"):
        ds.batch(0, 1, 1)


def test_pairs_index_line_that_is_not_json_names_it(tmp_path):
    root = _pairs(tmp_path / "ds", "images/b.png")
    (root / "pairs.jsonl").write_text((root / "pairs.jsonl").read_text() + "{oops\n")
    with pytest.raises(PairDataError, match=r"pairs.jsonl' line 2 is not JSON"):
        PairDataset(root)


# ------------------------------------------------------------------------------------------- the lock


_HOLDER = ("import sys, time; from pathlib import Path; from visalign.runfolder import RunLock; "
           "lock = RunLock(Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)")


def test_a_locked_run_is_refused_naming_the_holder_and_freed_when_it_dies(tiny_dir, tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", "geneval-s-grpo", *_over(tiny_dir), "--out", str(run)]) == 2
        _one_line(capsys, f"is in use by another training run (PID {holder.pid} holds {run / '.lock'})")
        with pytest.raises(RunFolderError):
            RunLock(run)
    finally:
        holder.kill()  # kill -9: the kernel drops the flock with the process
        holder.wait()
    lock = RunLock(run)
    assert (run / ".lock").read_text().strip() == str(os.getpid())
    with pytest.raises(RunFolderError, match=r"\(this process\)"):  # a second trainer in one process, too
        RunLock(run)
    lock.release()


# ------------------------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_says_where_to_resume_and_the_resumed_run_equals_an_uninterrupted_one(tiny_dir, tmp_path, capsys):
    """SIGINT to a training process: exit 130 and one line naming the iteration, the last checkpoint and the
    command that resumes; meanwhile the folder is locked by it. --resume then equals a run never stopped."""
    run, straight = tmp_path / "split", tmp_path / "straight"
    over = _over(tiny_dir)
    argv = ["train", "geneval-s-grpo", *over, "train.iterations=1000", "--out", str(run)]
    env = {**os.environ, "VISALIGN_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "visalign.cli", *argv], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        deadline = time.time() + 60
        while not (run / "checkpoints" / "latest").exists() and child.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert (run / "checkpoints" / "latest").exists(), child.stderr.read() if child.poll() is not None else ""
        assert main(["train", "geneval-s-grpo", *over, "--out", str(run), "--resume"]) == 2
        _one_line(capsys, f"(PID {child.pid} holds")
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130, err
    line = [x for x in err.replace("\r", "\n").splitlines() if "interrupted at iteration" in x]
    assert len(line) == 1 and "Traceback" not in err, err
    command = line[0].split("; the last checkpoint is ")[1]
    ck, resume = command.split(": ", 1)
    assert resume == shlex.join(["visalign", *argv, "--resume"])
    done = int(ck.removeprefix("iter-"))
    stop = done + 2
    assert main(["train", "geneval-s-grpo", *over, f"train.iterations={stop}", "--out", str(run), "--resume"]) == 0
    assert main(["train", "geneval-s-grpo", *over, f"train.iterations={stop}", "--out", str(straight)]) == 0
    name = ("checkpoints", f"iter-{stop:06d}", "weights.safetensors")
    a, b = load_file(str(straight.joinpath(*name))), load_file(str(run.joinpath(*name)))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _strip(read_metrics(run)) == _strip(read_metrics(straight))
