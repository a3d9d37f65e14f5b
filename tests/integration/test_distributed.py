"""The distributed engine (visalign/distributed.py, accelerate): mixed precision is honoured or refused, never
ignored; the once-per-step gradient reduction is exact; 2 processes under bf16 compute what 1 does; FSDP shards
the network and computes what 1 process does, resuming exactly; what the trainer cannot run (DeepSpeed, fp16 on
CPU, FSDP settings it does not honour, contradicting settings) is refused in one line."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from visalign.cli import main
from visalign.recipe import load_train_recipe
from visalign.trainer.trainer import Trainer

ENV = {**os.environ, "VISALIGN_THREADS": "1", "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def tiny_dir(tiny_flow_model, tmp_path):
    path = tmp_path / "tiny"
    tiny_flow_model.save_pretrained(path)
    return path


def _overrides(tiny_dir, *extra):
    """A tiny run (test_train.py's) scored by a dense reward every process can load."""
    return [f"model={tiny_dir}", "train.batch_size=8", "train.group_size=4", "train.eval_per_category=1",
            "sampling.steps=3", "reward=geneval_s", "reward_options.dense=true", "train.checkpoint_every=2",
            "train.eval_every=2", *extra]


def _trainer(tiny_dir, tmp_path, *extra):
    recipe, resolved = load_train_recipe("geneval-s-grpo", _overrides(tiny_dir, "train.iterations=1",
                                                                      "train.finetune=full", *extra))
    return Trainer(recipe, resolved, tmp_path / "run", progress=False, log=lambda *a: None)


def _record_outputs(module) -> list:
    """(output dtype, grad enabled) of every forward of the trained network, appended as they happen."""
    seen = []
    module.register_forward_hook(lambda m, args, out: seen.append((out.dtype, torch.is_grad_enabled())))
    return seen


@pytest.mark.parametrize("setting, launcher, dtype", [
    ("train.mixed_precision=bf16", None, torch.bfloat16),
    ("train.mixed_precision=no", None, torch.float32),
    (None, "bf16", torch.bfloat16),  # accelerate launch --mixed_precision bf16 alone
    ("train.mixed_precision=bf16", "no", torch.bfloat16),  # the recipe's wins over the launcher's default
])
def test_mixed_precision_runs_the_network_in_it_and_the_step_math_in_fp32(tiny_dir, tmp_path, monkeypatch,
                                                                          setting, launcher, dtype):
    if launcher is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    t = _trainer(tiny_dir, tmp_path, *([setting] if setting else []))
    seen = _record_outputs(t.module)
    traj, *_ = t.rollout(1)
    lp = t.policy.log_prob(traj, [0, 1])
    assert traj.log_probs.dtype == lp.log_prob.dtype == lp.mean.dtype == torch.float32
    assert seen and all(d == dtype for d, _ in seen), seen  # every rollout forward
    seen.clear()
    t.train()  # evaluation at 0 and 1, and one update
    assert (dtype, True) in seen and all(d == dtype for d, _ in seen), set(seen)
    assert all(p.dtype == torch.float32 for p in t.params)  # fp32 master weights
    assert t.dist.mixed_precision == {torch.bfloat16: "bf16", torch.float32: "no"}[dtype]


def test_bf16_changes_the_numbers_but_not_by_much(tiny_dir, tmp_path, monkeypatch):
    """The hook above sees the dtype; this sees that autocast computed with it: bf16 rollout log-probs differ
    from fp32 ones by bf16 rounding, not more (the step math after the network stays fp32)."""
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    lps = {}
    for precision in ("no", "bf16"):
        t = _trainer(tiny_dir, tmp_path / precision, f"train.mixed_precision={precision}")
        lps[precision] = t.rollout(1)[0].log_probs  # [B, T]
    diff = (lps["no"] - lps["bf16"]).abs().max().item()
    assert 0 < diff < 0.05 * lps["no"].abs().max().item(), diff


@pytest.mark.parametrize("extra, env, needle", [
    (["train.mixed_precision=fp16"], {}, "mixed precision fp16 needs a GPU (accelerate runs no fp16 autocast"),
    (["train.mixed_precision=no"], {"ACCELERATE_MIXED_PRECISION": "bf16"},
     "train.mixed_precision=no contradicts accelerate launch --mixed_precision bf16"),
    ([], {"ACCELERATE_MIXED_PRECISION": "fp8"}, "accelerate launch --mixed_precision fp8 is not supported; accepted: no"),
    (["train.mixed_precision=fp32"], {}, "train.mixed_precision 'fp32' is not one of no, bf16, fp16"),
    ([], {"ACCELERATE_USE_FSDP": "true", "FSDP_OFFLOAD_PARAMS": "true"},
     "accelerate launch --fsdp_offload_params true is not supported by the trainer's FSDP; accepted: false"),
    (["train.fsdp=true"], {"FSDP_SHARDING_STRATEGY": "SHARD_GRAD_OP"}, "the trainer's FSDP shards fully and"),
    (["train.fsdp=true"], {"FSDP_ACTIVATION_CHECKPOINTING": "true"}, "set train.gradient_checkpointing=true"),
    ([], {"ACCELERATE_USE_DEEPSPEED": "true"}, "DeepSpeed is not supported by the trainer"),
])
def test_unsupported_engine_settings_are_refused_in_one_line(tiny_dir, tmp_path, monkeypatch, capsys, extra, env,
                                                             needle):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["train", "geneval-s-grpo", *_overrides(tiny_dir, *extra), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err, err


REDUCE_SCRIPT = """
import json, sys, torch
import visalign.distributed as vd
vd.BUCKET = 3  # several buckets, split by size and by dtype
d = vd.Distributed(cpu=True)
d.configure()
r = d.rank
p = [torch.nn.Parameter(torch.zeros(n, dtype=dt)) for n, dt in [(2, torch.float32), (4, torch.float32),
     (2, torch.bfloat16), (1, torch.float32), (3, torch.float32)]]
p[0].grad = torch.tensor([1.0, 2.0]) * (r + 1)  # ranks: [1, 2], [2, 4] -> mean [1.5, 3]
p[1].grad = torch.arange(4.0) + 10 * r  # [0..3], [10..13] -> mean [5, 6, 7, 8]
p[2].grad = torch.tensor([2.0, 4.0], dtype=torch.bfloat16) * r  # -> [1, 2]
if r == 1:
    p[3].grad = torch.tensor([8.0])  # only on rank 1 -> [4]; p[4]: no gradient anywhere
keep = p[1].grad
d.reduce_gradients(p)
with open(f"{sys.argv[1]}/rank{r}.json", "w") as f:  # a file each: the ranks' stdout lines can interleave
    json.dump({"rank": r, "grads": [None if q.grad is None else q.grad.float().tolist() for q in p],
               "in_place": p[1].grad is keep}, f)
d.shutdown()
"""


def test_gradient_reduction_is_the_mean_and_keeps_absent_gradients_absent(tmp_path):
    """The once-per-step reduction: the mean over processes, in place, over buckets of mixed size and dtype; a
    gradient one process lacks counts as zero there, and a parameter with none anywhere keeps None (so Adam
    skips it, as a single process would)."""
    script = tmp_path / "reduce.py"
    script.write_text(REDUCE_SCRIPT)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(tmp_path)], env=ENV, check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(r["rank"] for r in rows) == [0, 1]
    for row in rows:
        assert row["grads"] == [[1.5, 3.0], [5.0, 6.0, 7.0, 8.0], [1.0, 2.0], [4.0], None], row
        assert row["in_place"]


def test_two_processes_under_bf16_equal_one(tiny_dir, tmp_path, free_port):
    """`accelerate launch --mixed_precision bf16` with 2 processes computes what 1 process with
    train.mixed_precision=bf16 does (same global batch), and what fp32 does only to bf16 rounding."""
    over = _overrides(tiny_dir, "train.iterations=2", "train.finetune=full", "train.diagnose_every=0")
    runs = {}
    for name, precision in (("one", "bf16"), ("fp32", "no")):
        env = {k: v for k, v in ENV.items() if k != "ACCELERATE_MIXED_PRECISION"}
        one = subprocess.run([sys.executable, "-m", "visalign.cli", "train", "geneval-s-grpo", *over,
                              f"train.mixed_precision={precision}", "--out", str(tmp_path / name)],
                             env=env, check=False, capture_output=True, text=True, timeout=300)
        assert one.returncode == 0, one.stderr[-2000:]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no",
                "--main_process_port", str(free_port)]
    two = subprocess.run([*launcher, "-m", "visalign.cli", "train", "geneval-s-grpo", *over, "--out",
                          str(tmp_path / "two")], env=ENV, check=False, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    for name in ("one", "two", "fp32"):
        runs[name] = load_file(str(tmp_path / name / "checkpoints" / "iter-000002" / "weights.safetensors"))
    base = load_file(str(tiny_dir / "model.safetensors"))
    keys = runs["one"].keys()
    moved = max((runs["one"][k] - base[k]).abs().max().item() for k in keys)
    two_vs_one = max((runs["one"][k] - runs["two"][k]).abs().max().item() for k in keys)
    bf16_vs_fp32 = max((runs["one"][k] - runs["fp32"][k]).abs().max().item() for k in keys)
    assert all(v.dtype == torch.float32 for v in runs["two"].values())  # fp32 master weights are what is saved
    assert moved > 1e-4 and bf16_vs_fp32 > 0, (moved, bf16_vs_fp32)
    assert two_vs_one < 1e-5, (two_vs_one, bf16_vs_fp32)


def test_fp16_grad_scaler_path_unscales_before_clipping_and_skips_an_overflowing_step(monkeypatch):
    """fp16 runs on GPUs only; its scaler logic (scaled backward, unscale before the norm, a skipped step on inf
    gradients) is checked here with accelerate's Accelerator given a CPU GradScaler."""
    from visalign.distributed import Distributed

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    d = Distributed(cpu=True)
    d.configure()
    d.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = torch.optim.SGD([p], lr=0.1)
    d.backward((p**2).sum())
    assert torch.equal(p.grad, 256 * 2 * p.detach())  # scaled
    gnorm = d.clip_grad_norm_(opt, [p], 1e9)
    assert torch.isclose(gnorm, torch.tensor(20.0).sqrt()) and torch.equal(p.grad, 2 * p.detach())  # unscaled
    assert d.step(opt) and torch.allclose(p.detach(), torch.tensor([0.8, 1.6]))
    opt.zero_grad()
    d.backward(p.sum() * float("inf"))
    assert not torch.isfinite(d.clip_grad_norm_(opt, [p], 1e9))
    assert not d.step(opt) and torch.allclose(p.detach(), torch.tensor([0.8, 1.6]))  # skipped
    assert d.accelerator.scaler.get_scale() == 128.0  # and the scale lowered


FSDP_SCRIPT = """
import json, sys
from torch.distributed.tensor import DTensor
from visalign.recipe import load_train_recipe
from visalign.distributed import Distributed
from visalign.trainer.trainer import Trainer
out = sys.argv[1]
recipe, resolved = load_train_recipe("geneval-s-grpo", sys.argv[2:])
d = Distributed()
t = Trainer(recipe, resolved, f"{out}/fsdp", dist=d, progress=False, log=lambda *a: None)
held = lambda m: {n: [p.to_local().numel() if isinstance(p, DTensor) else -1, p.numel(), p.shape[0]]
                  for n, p in m.named_parameters()}
with open(f"{out}/shards{d.rank}.json", "w") as f:  # what this process holds, from inside the run
    json.dump({"trained": held(t.module), "reference": held(t.ref_policy.adapter.module)}, f)
t.train()
d.shutdown()
"""

# compared between runs: the whole-batch numbers (per-process statistics such as kl are the main process's own)
COMPARED = ("reward_mean", "reward_std", "nfe", "loss", "grad_norm", "eval_overall", "eval_reward", "eval_diversity",
            "diag_grad_cos", "diag_signal_share")


def _held_halves(rows: list[dict]) -> None:
    """Every parameter is sharded over the 2 processes: together they hold it once, each about half (dim 0 split
    in 2 as torch.chunk does)."""
    for name, (held0, n, rows0) in rows[0].items():
        held1 = rows[1][name][0]
        assert held0 >= 0 and held1 >= 0 and held0 + held1 == n, (name, held0, held1, n)
        per_row = n // rows0
        assert held0 == -(-rows0 // 2) * per_row, (name, held0, n)


def test_fsdp_on_two_processes_equals_one_and_resumes_exactly(tiny_dir, tmp_path, free_port):
    """train.fsdp=true (torchrun) and accelerate launch --use_fsdp on 2 CPU processes (gloo): the network and the
    KL reference are sharded (each process holds half of every parameter), evaluation, EMA, diagnostics and
    checkpoints run across the shards, the result equals 1 process without FSDP (weights, EMA weights, metrics),
    and resuming the FSDP run from its checkpoint reproduces it bitwise (the checkpoint files are unsharded)."""
    over = _overrides(tiny_dir, "train.iterations=3", "train.finetune=full", "train.diagnose_every=2",
                      "train.ema_decay=0.9", "algorithm_options.kl_beta=0.01", "train.keep_checkpoints=2",
                      "train.report_to=none")
    env = {k: v for k, v in ENV.items() if k != "ACCELERATE_MIXED_PRECISION"}
    one = subprocess.run([sys.executable, "-m", "visalign.cli", "train", "geneval-s-grpo", *over, "--out",
                          str(tmp_path / "one")], env=env, check=False, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    script = tmp_path / "fsdp.py"
    script.write_text(FSDP_SCRIPT)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(tmp_path), *over, "train.fsdp=true"], env=env, check=False,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    shards = [json.loads((tmp_path / f"shards{r}.json").read_text()) for r in (0, 1)]
    for part in ("trained", "reference"):
        _held_halves([s[part] for s in shards])

    ck = ("checkpoints", "iter-000003")
    base = load_file(str(tiny_dir / "model.safetensors"))
    for name in ("weights.safetensors", "extra.safetensors"):  # the weights, and the EMA weights under their names
        a, b = (load_file(str(tmp_path.joinpath(run, *ck, name))) for run in ("one", "fsdp"))
        assert a.keys() == b.keys()
        diff = max((a[k] - b[k]).abs().max().item() for k in a)
        assert diff < 5e-5, (name, diff)  # what 2 processes with DDP reach too (float order of the reductions)
    moved = max((a[k] - base[k.removeprefix("ema_weights.")]).abs().max().item() for k in a)
    assert moved > 1e-4, moved
    ra, rb = _metrics(tmp_path / "one"), _metrics(tmp_path / "fsdp")
    assert [r["iteration"] for r in ra] == [r["iteration"] for r in rb] == [0, 1, 2, 3]
    for x, y in zip(ra, rb):
        assert {k for k in COMPARED if k in x} == {k for k in COMPARED if k in y}
        for k in COMPARED:
            if x.get(k) is not None:
                assert y[k] == pytest.approx(x[k], rel=1e-4, abs=1e-6), (x["iteration"], k, x[k], y[k])
    assert "eval_overall" in rb[2] and "diag_grad_cos" in rb[2]

    # resume the FSDP run from its iteration-2 checkpoint, launched the accelerate way this time
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "fsdp", resumed)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port)]  # --use_fsdp instead of --multi_gpu (accelerate takes one)
    again = subprocess.run([*launcher, "-m", "visalign.cli", "train", "geneval-s-grpo", *over, "--out", str(resumed),
                            "--resume", "iter-000002"], env=env, check=False, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "FSDP over 2 processes: the main process holds" in again.stdout, again.stdout[-2000:]
    for name in ("weights.safetensors", "extra.safetensors"):
        a, b = (load_file(str(run.joinpath(*ck, name))) for run in (tmp_path / "fsdp", resumed))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    oa, ob = (torch.load(run.joinpath(*ck, "optimizer.pt"), weights_only=True) for run in (tmp_path / "fsdp", resumed))
    assert oa["param_groups"] == ob["param_groups"] and oa["state"].keys() == ob["state"].keys()
    assert all(torch.equal(v, ob["state"][i][k]) for i, s in oa["state"].items() for k, v in s.items())
    assert _metrics(resumed) == rb


def _metrics(run) -> list[dict]:
    """RUN/metrics.jsonl without its timings."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time_") and k != "wall_s"} for r in rows]
