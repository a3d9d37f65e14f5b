"""The RL loop end to end on a tiny random model: exact resume, 2 processes == 1, NaN handling, errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from visalign.cli import main
from visalign.recipe import load_train_recipe
from visalign.rewards.base import REWARDS, Reward
from visalign.metrics import TIMING_FIELDS, read_metrics
from visalign.trainer.trainer import Trainer, TrainingStopped
from visalign.types import RewardOutput


class _Brightness(Reward):
    """Test reward: mean brightness (a dense, always-varying signal); `nan_after` rollouts (calls with the
    trainer's grouping; held-out evaluations score without it) return NaN from then on."""

    def __init__(self, nan_after: int = -1):
        self.calls, self.nan_after = 0, nan_after

    def __call__(self, images, prompts, metadata=None):
        self.calls += metadata is not None
        s = images.float().mean(dim=(1, 2, 3))
        if 0 <= self.nan_after < self.calls:
            s = s * float("nan")
        return RewardOutput(s)


if "test_brightness" not in REWARDS:
    REWARDS.register("test_brightness")(lambda nan_after=-1: _Brightness(nan_after))


@pytest.fixture
def tiny_dir(tiny_flow_model, tmp_path):
    path = tmp_path / "tiny"
    tiny_flow_model.save_pretrained(path)
    return path


@pytest.fixture
def tiny_ddpm_dir(tiny_vpred_model, tmp_path):
    """A tiny v-prediction DDPM, the kind of builtin:shapes-ddpm. (With eps prediction, x0 = (x - sqrt(1 - ab)
    eps) / sqrt(ab) multiplies float rounding by ~300 on the first step, so batch composition shows at 1e-4.)"""
    path = tmp_path / "tiny-ddpm"
    tiny_vpred_model.save_pretrained(path)
    return path


def _overrides(tiny_dir, *extra):
    return [f"model={tiny_dir}", "train.batch_size=8", "train.group_size=4", "train.eval_per_category=1",
            "sampling.steps=3", "reward=test_brightness", "train.checkpoint_every=2", "train.eval_every=2", *extra]


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS and not k.startswith("time_")} for r in rows]


def _straight_and_resumed(recipe, over, tmp_path):
    """4 iterations straight vs 2 + --resume for 2 more -> (straight, split) run folders, after checking that
    the final checkpoints' files are bitwise equal (weights, and extra state such as NFT's old model)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", recipe, *over, "train.iterations=4", "--out", str(straight)]) == 0
    assert main(["train", recipe, *over, "train.iterations=2", "--out", str(split)]) == 0
    assert main(["train", recipe, *over, "train.iterations=4", "--out", str(split), "--resume"]) == 0
    ck = ("checkpoints", "iter-000004")
    for name in ("weights.safetensors", "extra.safetensors"):
        if name == "weights.safetensors" or straight.joinpath(*ck, name).exists():
            a, b = load_file(str(straight.joinpath(*ck, name))), load_file(str(split.joinpath(*ck, name)))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    return straight, split


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_resume_equals_uninterrupted_bitwise(tiny_dir, tmp_path, finetune):
    over = _overrides(tiny_dir, f"train.finetune={finetune}", "algorithm_options.kl_beta=0.01")
    straight, split = _straight_and_resumed("geneval-s-grpo", over, tmp_path)
    ma, mb = _strip(read_metrics(straight)), _strip(read_metrics(split))
    assert [r["iteration"] for r in ma] == [0, 1, 2, 3, 4]
    assert ma == mb
    assert all(r["loss"] is not None for r in ma[1:]) and ma[-1]["nfe"] > ma[1]["nfe"] > 0


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_nft_resume_equals_uninterrupted_bitwise(tiny_dir, tmp_path, finetune):
    """NFT's EMA old model and the variance curriculum's statistics are part of the resumed state."""
    over = _overrides(tiny_dir, f"train.finetune={finetune}", "train.curriculum=variance", "train.diagnose_every=2")
    straight, split = _straight_and_resumed("geneval-s-nft", over, tmp_path)
    assert (straight / "checkpoints" / "iter-000004" / "extra.safetensors").exists()
    # the run-level share is computed over the planned iterations (2 before the resume, 4 after): leave it out
    ma, mb = ([{k: v for k, v in r.items() if k != "diag_run_signal_share"} for r in _strip(read_metrics(run))]
              for run in (straight, split))
    assert ma == mb and all(r["loss"] is not None for r in ma[1:])
    assert "diag_signal_share_mean" in ma[4] and 0 < ma[1]["nft_r_mean"] < 1  # the mean at 4 uses the restored history


@pytest.mark.parametrize("algorithm", ["ddpo", "dpok"])
def test_ddpo_resume_equals_uninterrupted_bitwise(tiny_ddpm_dir, tmp_path, algorithm):
    """DDPO's per-prompt statistics are part of the resumed state; DPOK's reference is the LoRA-free base."""
    over = _overrides(tiny_ddpm_dir, f"algorithm={algorithm}", "algorithm_options.stat_min_count=4",
                      "train.diagnose_every=2")
    straight, split = _straight_and_resumed("geneval-s-ddpo", over, tmp_path)
    ma, mb = ([{k: v for k, v in r.items() if k != "diag_run_signal_share"} for r in _strip(read_metrics(run))]
              for run in (straight, split))
    assert ma == mb and all(r["loss"] is not None for r in ma[1:])
    assert ("kl" in ma[2]) == (algorithm == "dpok")


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_ema_resume_equals_uninterrupted_bitwise(tiny_dir, tmp_path, finetune):
    """train.ema_decay: the averaged weights are part of the resumed state, and so are the evaluations of them."""
    over = _overrides(tiny_dir, f"train.finetune={finetune}", "train.ema_decay=0.5")
    straight, split = _straight_and_resumed("geneval-s-grpo", over, tmp_path)
    assert (straight / "checkpoints" / "iter-000004" / "extra.safetensors").exists()
    assert _strip(read_metrics(straight)) == _strip(read_metrics(split))


def test_ema_averages_the_steps_and_is_what_evaluation_and_export_score(tiny_dir, tmp_path):
    """The EMA after 4 optimizer steps at decay 0.6 is the hand-written average; evaluation (mean reward on a
    prompt file, a continuous score) and `visalign export --format merged` use it, not the raw weights."""
    from visalign.models.registry import load_model

    run, prompts = tmp_path / "run", tmp_path / "prompts.txt"
    prompts.write_text("a red circle\ntwo blue stars\na green square\nthree yellow triangles\none purple star\n")
    recipe, resolved = load_train_recipe("geneval-s-grpo", _overrides(
        tiny_dir, f"prompts=file:{prompts}", "train.iterations=2", "train.minibatches=2", "train.finetune=full",
        "train.lr=1e-2", "train.ema_decay=0.6"))
    t = Trainer(recipe, resolved, run, progress=False, log=lambda *a: None)
    seen = [[p.detach().clone() for p in t.params]]
    t.optimizer.register_step_post_hook(lambda *a: seen.append([p.detach().clone() for p in t.params]))
    rows = t.train()
    assert len(seen) == 5  # the base, then 2 iterations x 2 minibatches
    expect = seen[0]
    for now in seen[1:]:
        expect = [0.6 * e + 0.4 * p for e, p in zip(expect, now)]  # e_k = 0.6 e_(k-1) + 0.4 p_k
    for e, s in zip(expect, t.ema.shadow):
        torch.testing.assert_close(s, e, rtol=1e-6, atol=1e-7)

    ema, t.ema = t.ema, None
    raw_score = t.evaluate(2)["eval_overall"]
    with ema.swapped():
        ema_score = t.evaluate(2)["eval_overall"]
        averaged = {k: v.clone() for k, v in t.module.state_dict().items()}
    assert rows[-1]["eval_overall"] == ema_score != raw_score

    out = tmp_path / "merged"
    assert main(["export", str(run), "--format", "merged", "--out", str(out)]) == 0
    exported = load_model(str(out)).module.state_dict()
    assert exported.keys() == averaged.keys() and all(torch.equal(exported[k], averaged[k]) for k in averaged)


def test_every_trainable_parameter_changes_and_kl_is_logged(tiny_dir, tmp_path):
    recipe, resolved = load_train_recipe("geneval-s-grpo", _overrides(
        tiny_dir, "train.iterations=2", "train.finetune=full", "algorithm_options.kl_beta=0.1", "train.lr=1e-2",
        "algorithm_options.clip_range=10"))
    t = Trainer(recipe, resolved, tmp_path / "run", progress=False, log=lambda *a: None)
    before = {n: p.detach().clone() for n, p in t.module.named_parameters()}
    rows = t.train()
    unchanged = [n for n, p in t.module.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == [], unchanged
    assert rows[1]["kl"] < 1e-10 < 1e-6 < rows[2]["kl"]  # policy == reference at the first update, then it moves


def test_nan_reward_skips_update_and_stops_after_limit(tiny_dir, tmp_path):
    recipe, resolved = load_train_recipe("geneval-s-grpo", _overrides(
        tiny_dir, "train.iterations=6", "reward_options.nan_after=1", "train.max_bad_updates=2"))
    logs = []
    t = Trainer(recipe, resolved, tmp_path / "run", progress=False, log=logs.append)
    with pytest.raises(TrainingStopped, match="2 consecutive non-finite updates"):
        t.train()
    assert any("non-finite reward; update skipped" in line for line in logs)
    assert t.iteration == 2  # iteration 1 trained, 2 skipped (logged), 3 skipped -> stop


@pytest.mark.parametrize("recipe", ["geneval-s-grpo", "geneval-s-nft", "geneval-s-ddpo", "geneval-s-online-dpo"])
def test_two_processes_equal_one(tiny_dir, tiny_ddpm_dir, tmp_path, recipe, free_port):
    if recipe == "geneval-s-ddpo":  # the diffusion family, and DDPO's per-prompt statistics, across processes
        tiny_dir = tiny_ddpm_dir
    # online DPO pairs samples within a group: one group per process, minibatches of whole groups
    extra = (["train.minibatches=1", "reward=compressibility", "train.lr=1e-3"] if recipe == "geneval-s-online-dpo"
             else ["reward=geneval_s", "reward_options.dense=true"])
    over = _overrides(tiny_dir, "train.iterations=2", "train.finetune=full", "train.diagnose_every=2",
                      "train.curriculum=variance", *extra)
    env = {**os.environ, "VISALIGN_THREADS": "1", "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "visalign.cli", "train", recipe, *over, "--out",
                          str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port)]  # not the fixed default: another xdist worker may launch too
    two = subprocess.run([*launcher, "-m", "visalign.cli", "train", recipe, *over, "--out",
                          str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a = load_file(str(tmp_path / "one" / "checkpoints" / "iter-000002" / "weights.safetensors"))
    b = load_file(str(tmp_path / "two" / "checkpoints" / "iter-000002" / "weights.safetensors"))
    base = load_file(str(tiny_dir / "model.safetensors"))
    assert max((a[k] - base[k]).abs().max().item() for k in a) > 1e-4  # training moved the weights
    diff = {k: (a[k] - b[k]).abs().max().item() for k in a}
    worst = sorted(diff.items(), key=lambda kv: -kv[1])[:4]
    if recipe == "geneval-s-online-dpo":
        # at lr 1e-3 Adam turns float-level gradient differences on tensors whose true gradient is ~0 (attention
        # key biases: softmax ignores them) into steps of up to lr; a wrong pairing would move every tensor by ~lr
        assert max(diff.values()) < 0.2 * 1e-3 and float(np.median(list(diff.values()))) < 1e-6, worst
    else:
        assert max(diff.values()) < 1e-5, worst
    ra, rb = _strip(read_metrics(tmp_path / "one")), _strip(read_metrics(tmp_path / "two"))
    assert [r["reward_mean"] for r in ra] == [r["reward_mean"] for r in rb]  # the same global batch, groups intact
    assert [r["nfe"] for r in ra] == [r["nfe"] for r in rb]
    # the diagnostics split groups across ranks (here one group per rank) and still agree
    keys = [k for k in ra[2] if k.startswith("diag_")]
    assert "diag_signal_share" in keys and (any(k.startswith("diag_cos_") for k in keys) or recipe == "geneval-s-nft")
    assert all(abs(ra[2][k] - rb[2][k]) < 1e-5 for k in keys), [(k, ra[2][k], rb[2][k]) for k in keys]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["train.group_size=3"], "train.group_size=3 does not divide train.batch_size=8"),
        (["sampling.sde_window=[2, 9]"], "sde_window (2, 9) must satisfy 0 <= start < end <= steps (3)"),
        (["train.lr=fast"], "train.lr='fast' must be a number"),
        (["train.nope=1"], "unknown key 'train.nope'"),
        (["algorithm=nope"], "unknown algorithm 'nope'"),
        (["reward=nope"], "unknown reward 'nope'"),
        (["sampling.kind=ode"], "grpo needs log-probs of sampled steps"),
        (["train.lora_targets=[qkv]"], "LoRA targets ['qkv'] are not modules of this model; it has:"),
        (["train.ema_decay=1"], "train.ema_decay must be in [0, 1) (0 = off), got 1"),
        (["train.compile=true", "train.compile_backend=fast"],
         "train.compile_backend 'fast' is not a torch.compile backend; available: aot_eager"),
    ],
)
def test_bad_training_input_is_one_line(tiny_dir, tmp_path, extra, needle, capsys):
    assert main(["train", "geneval-s-grpo", *_overrides(tiny_dir, *extra), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err, err


def test_resume_errors(tiny_dir, tmp_path, capsys):
    over = _overrides(tiny_dir, "train.iterations=2")
    assert main(["train", "geneval-s-grpo", *over, "--out", str(tmp_path / "missing"), "--resume"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "geneval-s-grpo", *over, "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert main(["train", "geneval-s-grpo", *over, "--out", str(tmp_path / "r")]) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert main(["train", "geneval-s-grpo", *over, "train.lr=1e-2", "train.iterations=3", "--out",
                 str(tmp_path / "r"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "made by another recipe or settings (differs in train.lr)" in err and "\n" not in err.strip()
    # a run made before a train.* setting existed resumes when the setting is at its default
    ck = tmp_path / "r" / "checkpoints" / (tmp_path / "r" / "checkpoints" / "latest").read_text().strip()
    state = json.loads((ck / "state.json").read_text())
    del state["recipe"]["train"]["ema_decay"]
    del state["recipe"]["eval"]["judges"]  # and an eval.* one
    (ck / "state.json").write_text(json.dumps(state))
    assert main(["train", "geneval-s-grpo", *over, "train.iterations=3", "--out", str(tmp_path / "r"), "--resume"]) == 0


def test_report_has_curves_table_and_grids(tiny_dir, tmp_path):
    run = tmp_path / "r"
    assert main(["train", "geneval-s-grpo", *_overrides(tiny_dir, "train.iterations=2"), "--out", str(run)]) == 0
    page = (run / "report.html").read_text()
    for needle in ("Held-out GenEval-S", "<svg", "before (iter 0)", "after (iter 2)", "data:image/png;base64",
                   "Where the time went", "color_attr", "exact reading", "extra objects per image", "Hacking monitor",
                   "judge geneval_s_learned"):
        assert needle in page
    rows = read_metrics(run)
    assert {"iteration", "reward_mean", "loss", "nfe", "wall_s"} <= rows[1].keys()
    assert "eval_overall" in rows[2] and json.loads((run / "recipe.json").read_text())["algorithm"] == "grpo"


def test_window_gradients_sum_to_the_update_gradient(tiny_dir, tmp_path):
    recipe, resolved = load_train_recipe("geneval-s-grpo", _overrides(tiny_dir, "sampling.steps=4"))
    t = Trainer(recipe, resolved, tmp_path / "r", progress=False)
    traj, prompts, rewards, local = t.rollout(1)
    adv = t.algorithm.advantages(rewards, prompts, t.cfg.group_size)
    windows = [[0, 1], [2], [3]]
    parts = t.window_grads(traj, adv, windows, 1.0)
    (whole,) = t.window_grads(traj, adv, [[0, 1, 2, 3]], 1.0)
    assert whole.norm() > 0
    torch.testing.assert_close(sum(parts), whole, rtol=1e-5, atol=1e-9)
    assert all(p.grad is None for p in t.params)  # the diagnostic leaves no gradient behind


@pytest.mark.parametrize("recipe,extra", [("geneval-s-nft", []), ("geneval-s-nft", ["algorithm_options.kl_beta=1"]),
                                          ("geneval-s-grpo", ["algorithm_options.kl_beta=1"])])
def test_signal_loss_leaves_out_reward_independent_terms(tiny_dir, tmp_path, recipe, extra):
    """NFT's pull towards the old model and GRPO's KL to the reference are shared by any two batches without
    being reward signal: with all advantages 0 the diagnostic's gradient is 0, the update's is not."""
    r, resolved = load_train_recipe(recipe, _overrides(tiny_dir, "train.finetune=full", *extra))
    t = Trainer(r, resolved, tmp_path / "r", progress=False)
    traj, _, _, _ = t.rollout(1)
    with torch.no_grad():  # move the policy away from its old copy / the reference
        for p in t.params:
            p.add_(0.01 * torch.randn_like(p))
    zero = torch.zeros(len(traj))
    step = t.algorithm.train_steps(traj, torch.Generator().manual_seed(0))[0]
    (g,) = t.window_grads(traj, zero, [[step]], 1.0)
    assert g.abs().max() == 0
    loss, _ = t.algorithm.step_loss(t.policy, traj, zero, step, t.reference, old=t.old.swapped if t.old else None)
    loss.backward()
    assert max(p.grad.abs().max().item() for p in t.params if p.grad is not None) > 0


def test_diagnostics_in_metrics_and_constant_reward_has_no_signal(tiny_dir, tmp_path, capsys):
    if "test_constant" not in REWARDS:
        REWARDS.register("test_constant")(
            lambda: (lambda images, prompts, metadata=None: RewardOutput(torch.ones(len(prompts)))))
    over = _overrides(tiny_dir, "train.iterations=2", "train.diagnose_every=1")
    assert main(["train", "geneval-s-grpo", *over, "--out", str(tmp_path / "r")]) == 0
    rows = read_metrics(tmp_path / "r")
    assert all(-1 <= r["diag_grad_cos"] <= 1 and r["diag_equal_groups"] == 0 for r in rows[1:])
    assert "Gradient signal" in (tmp_path / "r" / "report.html").read_text()
    capsys.readouterr()
    over = _overrides(tiny_dir, "train.iterations=3", "train.diagnose_every=1", "reward=test_constant")
    assert main(["train", "geneval-s-grpo", *over, "--out", str(tmp_path / "c")]) == 0
    rows = read_metrics(tmp_path / "c")[1:]
    assert all(r["diag_equal_groups"] == 1.0 and r["diag_ess"] == 0.0 and r["diag_signal_share"] == 0.0 for r in rows)
    out = capsys.readouterr().out
    assert "iteration 2: warning" not in out  # two diagnostics are not yet evidence enough
    assert "iteration 3: warning: gradient signal share at most 0.000" in out and "no measurable signal" in out


def test_diagnose_command(tiny_dir, tmp_path, capsys):
    out = tmp_path / "d.json"
    assert main(["diagnose", "geneval-s-grpo", *_overrides(tiny_dir), "--batches", "3", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert -1 <= res["signal_share"] <= 1 and res["batches"] == 3 and res["nfe"] > 0
    assert {"signal_share_early", "signal_share_late", "diag_equal_groups"} <= set(res)
    printed = capsys.readouterr().out
    assert f"signal_share {res['signal_share']} per update" in printed  # the JSON's numbers, as printed
    assert all(f"  {k:<24} {'none' if v is None else v}" in printed for k, v in res.items() if k != "warning")
    assert main(["diagnose", "geneval-s-grpo", *_overrides(tiny_dir), "--batches", "1"]) == 2
    assert "--batches: 1 is out of range; accepted: an integer >= 2" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", ["geneval-s-grpo", "geneval-s-nft"])
def test_micro_batches_and_step_chunks_give_the_update_of_one_forward(tiny_dir, tmp_path, recipe):
    """train.micro_batch / train.step_chunk only split the forwards (memory); the update is the same."""
    weights, diags = [], []
    for extra in ([], ["train.micro_batch=3", "train.step_chunk=1"]):
        out = tmp_path / f"r{len(extra)}"
        over = _overrides(tiny_dir, "train.iterations=1", "train.finetune=full", "train.lr=1e-3",
                          "algorithm_options.kl_beta=0.1", "train.diagnose_every=1", *extra)
        assert main(["train", recipe, *over, "--out", str(out)]) == 0
        weights.append(load_file(str(out / "checkpoints" / "iter-000001" / "weights.safetensors")))
        diags.append(read_metrics(out)[1]["diag_grad_cos"])
    base = load_file(str(tiny_dir / "model.safetensors"))
    a, b = weights
    assert max((a[k] - base[k]).abs().max().item() for k in base) > 5e-4  # Adam's first step is ~lr = 1e-3
    # the same up to float rounding, which Adam's first step (~lr sign(g)) turns into up to a few % of lr
    # on entries whose gradient is ~0
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert abs(diags[0] - diags[1]) < 1e-4


def test_compiled_network_trains_as_the_eager_one(tiny_ddpm_dir, tmp_path):
    """train.compile compiles the network in place: the same updates up to float rounding, and checkpoints with
    the eager run's keys. (aot_eager traces forward and backward as inductor does, without its minutes of
    kernel compilation; benchmarks/vs_trl_ddpo.py measures inductor.)"""
    from torch._dynamo.utils import counters

    over = _overrides(tiny_ddpm_dir, "train.iterations=2", "train.lr=1e-3", "train.finetune=full")
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["train.compile=true", "train.compile_backend=aot_eager"])):
        counters.clear()
        runs[name] = tmp_path / name
        assert main(["train", "geneval-s-ddpo", *over, *extra, "--out", str(runs[name])]) == 0
        graphs = counters["stats"]["unique_graphs"]
        assert (graphs >= 2) == (name == "compiled"), (name, graphs)  # rollout (no grad) and update graphs
    a, b = (load_file(str(r / "checkpoints" / "iter-000002" / "weights.safetensors")) for r in runs.values())
    base = load_file(str(tiny_ddpm_dir / "model.safetensors"))
    assert a.keys() == b.keys() == base.keys()
    assert max((a[k] - base[k]).abs().max().item() for k in base) > 5e-4  # it trained
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    ma, mb = _strip(read_metrics(runs["eager"])), _strip(read_metrics(runs["compiled"]))
    assert [r["loss"] for r in ma[1:]] == pytest.approx([r["loss"] for r in mb[1:]], abs=1e-5)


def test_evaluation_logs_both_readings_the_judges_and_per_image_scores(tiny_dir, tmp_path, monkeypatch):
    from visalign import monitor

    run, logs = tmp_path / "r", []
    recipe, resolved = load_train_recipe("geneval-s-grpo", _overrides(
        tiny_dir, "train.iterations=2", "eval.judges=['geneval_s?exact=true', geneval_s_learned]"))
    seen = []
    monkeypatch.setattr(monitor, "hacking_warning", lambda base, now, labels, **kw: seen.append((base, now)) or "it hacks")
    rows = Trainer(recipe, resolved, run, progress=False, log=logs.append).train()
    evals = [r for r in rows if "eval_overall" in r]
    for r in evals:
        assert {"eval_exact", "eval_exact_categories", "eval_extra", "eval_extra_categories", "eval_stray",
                "eval_reward"} <= r.keys()
        assert set(r["eval_judges"]) == {"geneval_s?exact=true", "geneval_s_learned"}
        assert r["eval_judges"]["geneval_s?exact=true"] == pytest.approx(r["eval_exact"])  # the same images
    saved = json.loads((run / "evals" / "iter-000002.json").read_text())
    assert set(saved["series"]) == {"reward", "geneval_rules", "exact", "extra", "lenient", "geneval_s?exact=true",
                                    "geneval_s_learned"}
    assert all(len(v) == 6 for v in saved["series"].values()) and len(saved["prompts"]) == 6  # 1 per category
    # the monitor compares every later evaluation with the base's per-image scores; its line reaches the record,
    # the log and the report
    assert len(seen) == 1 and np.array_equal(seen[0][0]["exact"], np.asarray(
        json.loads((run / "evals" / "iter-000000.json").read_text())["series"]["exact"]))
    assert evals[-1]["eval_hacking"] == "it hacks" and "eval_hacking" not in evals[0]
    assert "iteration 2: warning: it hacks" in logs
    assert main(["report", str(run)]) == 0 and "it hacks" in (run / "report.html").read_text()


def test_judges_that_do_not_load(tiny_dir, tmp_path, capsys):
    over = _overrides(tiny_dir, "train.iterations=1", "eval.judges=[nope]")
    assert main(["train", "geneval-s-grpo", *over, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "eval.judges: 'nope' does not load: unknown reward 'nope'. Supported:" in err and "\n" not in err
    # a default judge that does not load (a hub model outside the cache) is left out with a note
    logs = []
    recipe, resolved = load_train_recipe("geneval-s-grpo", _overrides(tiny_dir, "prompts=animals", "reward=pickscore",
                                                                      "train.iterations=1"))
    t = Trainer.__new__(Trainer)
    t.log, t.dist = logs.append, type("D", (), {"device": "cpu"})()
    assert t._judges(recipe) == {}
    assert len(logs) == 1 and logs[0].startswith("note: default judge 'clip_score' left out (")
