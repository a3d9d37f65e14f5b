"""Memory and checkpoint options of a run on tiny models: train.gradient_checkpointing (same loss and gradients,
and the checkpointed path really runs in updates), train.optimizer (adamw8bit through bitsandbytes, or one line
without it), train.keep_checkpoints, and --resume from the newest complete checkpoint or a named one."""

import shutil
import sys
import types

import pytest
import torch

from visalign.cli import main
from visalign.config import ConfigError
from visalign.recipe import load_train_recipe
from visalign.testbed.models.ar import ARConfig, TokenGPT
from visalign.models.diffusers_adapter import adapter_for
from visalign.models.tiny_diffusers import build_tiny_pipeline, save_tiny_pipeline
from visalign.policies import DiffusionSampling, FlowSampling, make_policy
from visalign.checkpoint import ResumeError, find_checkpoint, save_checkpoint
from visalign.metrics import TIMING_FIELDS, read_metrics
from visalign.trainer.memory import enable_gradient_checkpointing
from visalign.trainer.trainer import Trainer


@pytest.fixture
def tiny_dir(tiny_flow_model, tmp_path):
    path = tmp_path / "tiny"
    tiny_flow_model.save_pretrained(path)
    return path


@pytest.fixture
def checkpoint_calls(monkeypatch):
    """Counts torch.utils.checkpoint.checkpoint calls (diffusers' default checkpointing function and the built-in
    networks call it through the module, so the patch sees both): a list, one entry per call."""
    calls, real = [], torch.utils.checkpoint.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(fn)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    return calls


def _overrides(model, *extra):
    return [f"model={model}", "train.batch_size=8", "train.group_size=4", "train.eval_per_category=1",
            "sampling.steps=3", "reward=compressibility", "train.eval_every=2", "train.diagnose_every=0", *extra]


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS and not k.startswith("time_")} for r in rows]


# ------------------------------------------------------------------------------------ gradient checkpointing


def _sampling(adapter):
    if adapter.family == "diffusion":
        return DiffusionSampling(steps=3, kind="ddim", eta=1.0, guidance_scale=2.0)
    return FlowSampling(steps=3, kind="flow", guidance_scale=2.0, shift=adapter.default_shift)


@pytest.mark.parametrize("kind", ["sd15", "sd3", "flux"])
def test_diffusers_gradient_checkpointing_keeps_loss_and_gradients(kind, checkpoint_calls):
    """Two copies of one tiny pipeline, the network in eval mode as visalign keeps it: with checkpointing on, the
    log-prob loss and every gradient equal those with it off, and the checkpointed path ran in the backward pass
    only (the no_grad rollout runs none)."""
    plain, ckpt = (adapter_for(build_tiny_pipeline(kind), resolution=32) for _ in range(2))
    for a in (plain, ckpt):
        a.module.eval()
    ckpt.enable_gradient_checkpointing()
    assert ckpt.module.is_gradient_checkpointing and not plain.module.is_gradient_checkpointing
    traj = make_policy(ckpt, _sampling(ckpt)).sample(["a red circle", "two blue squares"], [1, 2])
    assert checkpoint_calls == []  # rollouts run under no_grad: nothing to recompute
    steps = [int(i) for i in torch.nonzero(traj.stochastic).flatten()]
    losses = []
    for a in (plain, ckpt):
        before = len(checkpoint_calls)
        loss = make_policy(a, _sampling(a)).log_prob(traj, steps).log_prob.mean()
        loss.backward()
        losses.append(loss.detach())
        assert (len(checkpoint_calls) > before) == (a is ckpt)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    pairs = list(zip(plain.module.parameters(), ckpt.module.parameters()))
    assert sum(float(p.grad.abs().sum()) for p, _ in pairs if p.grad is not None) > 0
    for p, q in pairs:
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)


def test_token_gpt_checkpoints_teacher_forced_forwards_only(checkpoint_calls):
    """The GPT's blocks are checkpointed in a teacher-forced forward with gradients (the update's), with the same
    logits and gradients; decoding with a KV cache (written in place) is never checkpointed."""
    torch.manual_seed(0)
    plain = TokenGPT(ARConfig(dim=32, layers=2, heads=2, codebook_size=16, grid=2)).eval()
    ckpt = TokenGPT(plain.config).eval()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.enable_gradient_checkpointing()
    assert ckpt.is_gradient_checkpointing and not plain.is_gradient_checkpointing
    ids = torch.randint(0, plain.prompt_vocab + plain.config.out_vocab, (3, 12))
    outs = []
    for m in (plain, ckpt):
        logits = m(ids)[0]
        (logits.float().logsumexp(-1).mean()).backward()
        outs.append(logits.detach())
    assert len(checkpoint_calls) == 2  # one per block of the checkpointed model
    torch.testing.assert_close(outs[0], outs[1])
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=n)
    cache = ckpt.new_cache()
    ckpt(ids[:, :4], 0, cache)  # gradients on, but a cache: decoding
    with torch.no_grad():
        ckpt(ids)
    assert len(checkpoint_calls) == 2


def _trainer(model, run, recipe, *extra):
    r, resolved = load_train_recipe(recipe, _overrides(model, *extra))
    return Trainer(r, resolved, run, progress=False, log=lambda *a, **k: None)


@pytest.mark.parametrize("backend", ["builtin", "sd15"])
def test_gradient_checkpointing_acts_in_updates_with_the_same_result(backend, tiny_dir, tmp_path, checkpoint_calls):
    """Through the trainer: train.gradient_checkpointing=true turns the backbone's checkpointing on, the network
    stays in eval mode, rollouts run no checkpointed block, updates do, and the update (loss, gradient norm,
    weights after the step) equals the one without it."""
    if backend == "builtin":
        model, recipe = tiny_dir, "geneval-s-grpo"
    else:
        save_tiny_pipeline("sd15", tmp_path / "sd")
        model, recipe = f"diffusers:{tmp_path / 'sd'}", "sd-ddpo-compressibility"
    runs = {}
    for on in (False, True):
        t = _trainer(model, tmp_path / f"run-{on}", recipe, f"train.gradient_checkpointing={str(on).lower()}")
        assert t.module.is_gradient_checkpointing == on and not t.module.training
        before = len(checkpoint_calls)
        t.rollout(1)
        assert len(checkpoint_calls) == before
        rec = t.train_iteration(1)
        assert (len(checkpoint_calls) > before) == on
        runs[on] = rec, [p.detach().clone() for p in t.params]
    (off, w_off), (on, w_on) = runs[False], runs[True]
    assert off["grad_norm"] > 0
    assert on["loss"] == pytest.approx(off["loss"], rel=1e-5, abs=1e-7)
    assert on["grad_norm"] == pytest.approx(off["grad_norm"], rel=1e-4)
    for a, b in zip(w_off, w_on):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_gradient_checkpointing_refused_where_a_model_has_none(monkeypatch):
    with pytest.raises(ConfigError, match="model 'mine' has no gradient checkpointing; supported: builtin:shapes-flow"):
        enable_gradient_checkpointing(types.SimpleNamespace(module=torch.nn.Linear(2, 2)), "mine")
    adapter = adapter_for(build_tiny_pipeline("sd15"), resolution=32)
    monkeypatch.setattr(type(adapter.module), "_supports_gradient_checkpointing", False)
    with pytest.raises(ConfigError, match="diffusers' UNet2DConditionModel has no gradient checkpointing; supported:"):
        adapter.enable_gradient_checkpointing()


# ------------------------------------------------------------------------------------------------ optimizer


def _fake_bitsandbytes():
    """A stand-in bitsandbytes whose AdamW8bit is torch's AdamW recording how it was built."""

    class AdamW8bit(torch.optim.AdamW):
        made: list[dict] = []  # noqa: RUF012 - one record per construction, read by the test

        def __init__(self, params, **kwargs):
            params = list(params)
            AdamW8bit.made.append({"params": params, **kwargs})
            super().__init__(params, **kwargs)

    return types.SimpleNamespace(optim=types.SimpleNamespace(AdamW8bit=AdamW8bit))


def _inner(optimizer):
    """The optimizer the run made, under the wrapper distributed.py may put around it (accelerate's)."""
    return getattr(optimizer, "optimizer", optimizer)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_adamw8bit_is_bitsandbytes_with_the_run_settings(tiny_dir, tmp_path, monkeypatch, finetune):
    bnb = _fake_bitsandbytes()
    monkeypatch.setitem(sys.modules, "bitsandbytes", bnb)
    t = _trainer(tiny_dir, tmp_path / "r", "geneval-s-grpo", "train.optimizer=adamw8bit", "train.lr=3e-4",
                 "train.adam_betas=[0.8, 0.95]", "train.weight_decay=0.01", f"train.finetune={finetune}")
    (made,) = bnb.optim.AdamW8bit.made
    assert type(_inner(t.optimizer)) is bnb.optim.AdamW8bit
    assert made["lr"] == 3e-4 and made["betas"] == (0.8, 0.95) and made["weight_decay"] == 0.01
    assert len(made["params"]) == len(t.params) and all(a is b for a, b in zip(made["params"], t.params))
    before = [p.detach().clone() for p in t.params]
    assert t.train_iteration(1)["grad_norm"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, t.params))  # it stepped the trained weights


def test_default_optimizer_is_torch_adamw(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", _fake_bitsandbytes())
    t = _trainer(tiny_dir, tmp_path / "r", "geneval-s-grpo", "train.adam_betas=[0.8, 0.95]")
    assert type(_inner(t.optimizer)) is torch.optim.AdamW and t.optimizer.defaults["betas"] == (0.8, 0.95)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["train.optimizer=adamw8bit"],
         "train.optimizer=adamw8bit needs bitsandbytes (pip install bitsandbytes); accepted: adamw, adamw8bit"),
        (["train.optimizer=sgd"], "train.optimizer 'sgd' is not one of adamw, adamw8bit"),
        (["train.keep_checkpoints=0"], "train.keep_checkpoints must be >= 1 (the newest checkpoint is always kept), got 0"),
        (["train.gradient_checkpointing=maybe"], "train.gradient_checkpointing='maybe' must be true or false"),
    ],
)
def test_bad_option_is_one_line(tiny_dir, tmp_path, monkeypatch, capsys, extra, needle):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not importable, installed or not
    assert main(["train", "geneval-s-grpo", *_overrides(tiny_dir, *extra), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err, err


# ---------------------------------------------------------------------------------------------- checkpoints


def _names(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def test_save_checkpoint_keeps_the_newest(tmp_path):
    """keep=N leaves the N newest; checkpoints past the one written (a run resumed from an earlier one) and temp
    folders of a crashed write are removed."""
    w, opt = {"w": torch.zeros(2)}, {"state": {}, "param_groups": []}
    for it in range(1, 6):
        save_checkpoint(tmp_path, it, w, opt, {}, keep=3)
    assert _names(tmp_path) == ["iter-000003", "iter-000004", "iter-000005", "latest"]
    (tmp_path / "checkpoints" / ".tmp-crashed").mkdir()
    save_checkpoint(tmp_path, 4, w, opt, {}, keep=2)  # resumed from 3: 5 is another future
    assert _names(tmp_path) == ["iter-000003", "iter-000004", "latest"]
    save_checkpoint(tmp_path, 5, w, opt, {})  # keep=1 (the default)
    assert _names(tmp_path) == ["iter-000005", "latest"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "iter-000005"


def test_keep_checkpoints_through_the_trainer(tiny_dir, tmp_path):
    for keep, left in ((1, ["iter-000004"]), (3, ["iter-000002", "iter-000003", "iter-000004"])):
        run = tmp_path / f"keep-{keep}"
        assert main(["train", "geneval-s-grpo", *_overrides(tiny_dir, "train.iterations=4", "train.checkpoint_every=1",
                                                          f"train.keep_checkpoints={keep}"), "--out", str(run)]) == 0
        assert _names(run) == [*left, "latest"]


def _straight(tiny_dir, tmp_path, *extra):
    run = tmp_path / "straight"
    assert main(["train", "geneval-s-grpo", *_overrides(tiny_dir, "train.iterations=3", "train.checkpoint_every=1",
                                                      *extra), "--out", str(run)]) == 0
    return _strip(read_metrics(run))


@pytest.mark.parametrize("crash", ["half-removed", "gone", "no-latest"])
def test_resume_falls_back_to_the_newest_complete_checkpoint(tiny_dir, tmp_path, capsys, crash):
    """A crash left `latest` naming a folder that is half removed or gone (with a temp folder of the write), or no
    `latest` at all: --resume goes on from the newest complete checkpoint, says so, and the run then equals an
    uninterrupted one."""
    over = _overrides(tiny_dir, "train.checkpoint_every=1", "train.keep_checkpoints=2")
    run = tmp_path / "split"
    assert main(["train", "geneval-s-grpo", *over, "train.iterations=2", "--out", str(run)]) == 0
    ck = run / "checkpoints"
    if crash == "half-removed":
        (ck / "iter-000002" / "optimizer.pt").unlink()
    elif crash == "gone":
        shutil.copytree(ck / "iter-000002", ck / ".tmp-abc")
        shutil.rmtree(ck / "iter-000002")
    else:
        (ck / "latest").unlink()
    expected = "iter-000001" if crash != "no-latest" else "iter-000002"
    assert find_checkpoint(run)[0].name == expected
    capsys.readouterr()
    assert main(["train", "geneval-s-grpo", *over, "train.iterations=3", "--out", str(run), "--resume"]) == 0
    assert f"resuming from {expected}, the newest complete checkpoint" in capsys.readouterr().out
    assert _strip(read_metrics(run)) == _straight(tiny_dir, tmp_path, "train.keep_checkpoints=2")
    assert _names(run) == ["iter-000002", "iter-000003", "latest"]


def test_resume_from_a_named_checkpoint_rewinds_the_run(tiny_dir, tmp_path):
    """--resume iter-000001 (or its path) goes on from there: the metrics after it are redone and equal an
    uninterrupted run's; a `--resume key=value` is read as an override, not as a checkpoint."""
    over = _overrides(tiny_dir, "train.checkpoint_every=1", "train.keep_checkpoints=3")
    run = tmp_path / "split"
    assert main(["train", "geneval-s-grpo", *over, "train.iterations=3", "--out", str(run)]) == 0
    changed = read_metrics(run)
    assert main(["train", "geneval-s-grpo", *over, "train.iterations=3", "--out", str(run),
                 "--resume", str(run / "checkpoints" / "iter-000001")]) == 0
    assert _strip(read_metrics(run)) == _strip(changed) == _straight(tiny_dir, tmp_path, "train.keep_checkpoints=3")
    assert main(["train", "geneval-s-grpo", *over, "--out", str(run), "--resume", "train.iterations=4"]) == 0
    assert [r["iteration"] for r in read_metrics(run)] == [0, 1, 2, 3, 4]
    assert _names(run) == ["iter-000002", "iter-000003", "iter-000004", "latest"]


def test_resume_errors_are_one_line(tiny_dir, tmp_path, capsys):
    over = _overrides(tiny_dir, "train.iterations=2", "train.checkpoint_every=1")
    run = tmp_path / "r"
    assert main(["train", "geneval-s-grpo", *over, "--out", str(run)]) == 0
    cases = [
        ("iter-000001", ("cannot resume {run} from iter-000001: not a complete checkpoint folder; this run has: "
                         "iter-000002")),
        (str(tmp_path), f"cannot resume {run} from {tmp_path}: accepted: a checkpoint folder of this run"),
    ]
    for value, needle in cases:
        capsys.readouterr()
        assert main(["train", "geneval-s-grpo", *over, "train.iterations=3", "--out", str(run), "--resume", value]) == 2
        err = capsys.readouterr().err.strip()
        assert needle.format(run=run) in err and "\n" not in err, err
    shutil.rmtree(run / "checkpoints" / "iter-000002")
    with pytest.raises(ResumeError, match="has no complete checkpoint"):
        find_checkpoint(run)
    (run / "checkpoints" / "latest").unlink()
    # a run folder whose `latest` is gone still holds a run: starting afresh there is refused
    (run / "checkpoints" / "iter-000007").mkdir()
    capsys.readouterr()
    assert main(["train", "geneval-s-grpo", *over, "--out", str(run)]) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err


# ------------------------------------------------------------------------------ DanceGRPO's best-of-N subsampling


def test_keep_best_worst_updates_on_each_groups_extremes(tiny_dir, tmp_path, monkeypatch):
    """train.keep_best_worst=1 on groups of 4: every update sees 2 of each group, the best and the worst by reward,
    with the advantages computed over the whole group."""
    from visalign.math.advantages import best_worst_rows, group_advantages

    seen, real_update, real_rollout = [], Trainer.update, Trainer.rollout

    def rollout(self, it):
        out = real_rollout(self, it)
        seen.append({"rewards": out[2].cpu().clone()})
        return out

    def update(self, it, traj, advantages):
        seen[-1].update(seeds=list(traj.seeds), adv=advantages.cpu().clone())
        return real_update(self, it, traj, advantages)

    monkeypatch.setattr(Trainer, "rollout", rollout)
    monkeypatch.setattr(Trainer, "update", update)
    run = tmp_path / "bon"
    assert main(["train", "geneval-s-grpo", *_overrides(tiny_dir, "train.iterations=2", "train.keep_best_worst=1"),
                 "--out", str(run)]) == 0
    for s in seen:
        keep = best_worst_rows(s["rewards"], 4, 1)
        assert len(s["seeds"]) == 4  # 2 of each of the 2 groups
        assert torch.allclose(s["adv"], group_advantages(s["rewards"], 4, global_std=True)[keep])


def test_keep_best_worst_refusals(tiny_dir, tmp_path, capsys):
    assert main(["train", "geneval-s-grpo", *_overrides(tiny_dir, "train.keep_best_worst=2"),
                 "--out", str(tmp_path / "a")]) != 0
    assert "2k < train.group_size" in capsys.readouterr().err
