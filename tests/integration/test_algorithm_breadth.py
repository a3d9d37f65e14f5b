"""Every registered algorithm trains the bundled models: one update changes every trainable tensor; the ones
that cannot work with a policy, a reward or a recipe are refused at construction with a one-line reason;
`visalign make-pairs` writes a whole dataset or nothing."""

import dataclasses
import json

import pytest
import torch

from visalign import config as C
from visalign.algorithms import ALGORITHMS, CapabilityError
from visalign.cli import main
from visalign.testbed.models.reward_net import RewardNet
from visalign.pairs import PairDataError, PairDataset
from visalign.trainer.trainer import Trainer

SMALL = ["train.iterations=1", "train.batch_size=8", "train.group_size=4", "train.eval_per_category=1",
         "train.eval_every=1", "train.checkpoint_every=1", "train.diagnose_every=0", "train.finetune=full",
         "train.lr=1e-3", "train.minibatches=1", "train.epochs=1", "sampling.steps=4", "eval.steps=4"]

# algorithm -> (model, reward, sampling kind, extra overrides)
CASES = {
    "grpo": ("builtin:shapes-flow", "compressibility", "flow", []),
    "ddpo": ("builtin:shapes-ddpm", "compressibility", "ddim", []),
    "dpok": ("builtin:shapes-ddpm", "compressibility", "ddim", []),
    "online_dpo": ("builtin:shapes-flow", "compressibility", "flow", []),
    "nft": ("builtin:shapes-flow", "compressibility", "ode", []),
    "rwr": ("builtin:shapes-ddpm", "compressibility", "ode", []),
    "diffusion_dpo": ("builtin:shapes-flow", "geneval_s", "ode", ["train.group_size=2"]),
    "refl": ("builtin:shapes-flow", "geneval_s_learned", "ode", []),
    "draft": ("builtin:shapes-ddpm", "geneval_s_learned", "ode", ["algorithm_options.k=2"]),
    "alignprop": ("builtin:shapes-flow", "geneval_s_learned", "ode", []),
}


def _recipe(algorithm, model, reward, kind, extra, tmp_path, data=None, small=SMALL):
    d = {"name": "test", "model": model, "reward": reward, "algorithm": algorithm, "sampling": {"kind": kind}}
    if reward == "geneval_s_learned":  # a random reward network: the gradient path, not the reward's quality
        torch.manual_seed(0)
        RewardNet().save_pretrained(tmp_path / "reward-net", dtype=torch.float32)
        d["reward_options"] = {"path": str(tmp_path / "reward-net")}
    if data:
        d["data"] = str(data)
    d = C.apply_overrides(d, small + extra)
    recipe = C.build(C.TrainRecipe, d)
    return recipe, dataclasses.asdict(recipe)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs") / "ds"
    assert main(["make-pairs", "--model", "builtin:shapes-flow?steps=4", "--n-prompts", "12", "--per-prompt", "4",
                 "--out", str(out)]) == 0
    return out


def test_every_algorithm_is_covered():
    assert set(CASES) == set(ALGORITHMS.names())


def _assert_one_update_changes_every_tensor(algorithm, recipe, resolved, tmp_path) -> Trainer:
    trainer = Trainer(recipe, resolved, tmp_path / "run", progress=False, log=lambda *a: None)
    before = {n: p.detach().clone() for n, p in trainer.module.named_parameters() if p.requires_grad}
    rec = trainer.train()[-1]
    assert rec["loss"] is not None and torch.isfinite(torch.tensor(rec["loss"]))
    after = dict(trainer.module.named_parameters())
    unchanged = [n for n, p in before.items() if torch.equal(p, after[n].detach())]
    assert not unchanged, f"{algorithm} left {len(unchanged)} of {len(before)} tensors unchanged: {unchanged[:5]}"
    return trainer


@pytest.mark.parametrize("algorithm", sorted(CASES))
def test_one_update_changes_every_trainable_tensor(algorithm, tmp_path, pairs):
    model, reward, kind, extra = CASES[algorithm]
    recipe, resolved = _recipe(algorithm, model, reward, kind, extra, tmp_path,
                               data=pairs if algorithm == "diffusion_dpo" else None)
    _assert_one_update_changes_every_tensor(algorithm, recipe, resolved, tmp_path)


@pytest.mark.parametrize("algorithm", ["grpo", "ddpo", "dpok", "online_dpo", "rwr"])
def test_log_prob_algorithms_change_every_tensor_of_the_token_model(algorithm, tmp_path):
    """The same algorithms on the bundled token model (builtin:shapes-ar): rwr takes its exact log-probs."""
    small = [o for o in SMALL if "steps=" not in o]  # a token model writes a fixed number of tokens
    recipe, resolved = _recipe(algorithm, "builtin:shapes-ar", "compressibility", "sample", [], tmp_path, small=small)
    trainer = _assert_one_update_changes_every_tensor(algorithm, recipe, resolved, tmp_path)
    assert trainer.algorithm.likelihood if algorithm == "rwr" else True


@pytest.mark.parametrize("algorithm, reward, kind, match", [
    ("refl", "geneval_s", "ode", "refl backpropagates the reward, but reward 'geneval_s' is not differentiable"),
    ("alignprop", "compressibility", "ode", "is not differentiable"),
    ("online_dpo", "geneval_s", "ode", "online_dpo needs log-probs of sampled steps, but the rollout sampler is "
                                       "deterministic"),
    ("grpo", "geneval_s", "ode", "grpo needs log-probs"),
])
def test_capabilities_are_checked_at_construction(algorithm, reward, kind, match, tmp_path):
    recipe, resolved = _recipe(algorithm, "builtin:shapes-flow", reward, kind, [], tmp_path)
    with pytest.raises(CapabilityError, match=match):
        Trainer(recipe, resolved, tmp_path / "run", progress=False)


def test_offline_and_pair_recipes_are_checked(tmp_path, pairs):
    cases = [
        ("diffusion_dpo", ["train.group_size=2"], None, "diffusion_dpo trains on a pairs dataset: set data=DIR"),
        ("diffusion_dpo", [], pairs, "diffusion_dpo trains on pairs: set train.group_size=2"),
        ("rwr", [], pairs, "only read by offline algorithms"),
        ("online_dpo", ["train.micro_batch=2"], None, "micro_batch \\(2\\) a multiple of group_size"),
    ]
    for algorithm, extra, data, match in cases:
        kind = "flow" if algorithm == "online_dpo" else "ode"
        recipe, resolved = _recipe(algorithm, "builtin:shapes-flow", "geneval_s", kind, extra, tmp_path, data)
        with pytest.raises(ValueError, match=match):
            Trainer(recipe, resolved, tmp_path / "run", progress=False)


def test_make_pairs_dataset(pairs, tmp_path, capsys):
    ds = PairDataset(pairs)
    meta = json.loads((pairs / "meta.json").read_text())
    assert meta["format"] == "visalign-pairs/1" and len(ds) == meta["pairs"] > 0
    for line in (pairs / "pairs.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert row["score_chosen"] > row["score_rejected"]  # the verifier ranked them
        assert (pairs / row["chosen"]).is_file() and (pairs / row["rejected"]).is_file()
    images, prompts, pref, seeds = ds.batch(0, 1, 3)
    assert images.shape == (6, 3, 32, 32) and pref.tolist() == [1, 0] * 3
    assert seeds[0] == seeds[1] and prompts[0] == prompts[1]
    again = ds.batch(0, 1, 3)
    assert torch.equal(images, again[0]) and seeds == again[3]  # seeded by (seed, iteration)
    # an existing folder is never written over; a non-dataset is named
    assert main(["make-pairs", "--model", "oracle", "--n-prompts", "2", "--out", str(pairs)]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(PairDataError, match="is not a pairs dataset"):
        PairDataset(tmp_path)
    # every oracle render passes the verifier: no pair has a preference, nothing is written
    assert main(["make-pairs", "--model", "oracle", "--n-prompts", "2", "--out", str(tmp_path / "none")]) == 2
    assert "no pair had two different rewards" in capsys.readouterr().err
    assert not (tmp_path / "none").exists() and not list(tmp_path.glob(".none*"))


def test_compare_runs_each_algorithm_on_one_budget(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "nft", "grpo:kl_beta=0.04", "--budget-nfe", "400", "--per-category", "2", "--evals", "2",
                 "--set", "train.batch_size=8", "--set", "train.group_size=4", "--set", "sampling.steps=3",
                 "--set", "train.minibatches=1", "--prompts", "geneval-s:single_object,colors,counting",
                 "--out", str(out)]) == 0
    res = json.loads((out / "compare.json").read_text())
    assert [r["label"] for r in res["results"]] == ["nft", "grpo:kl_beta=0.04"]
    for r in res["results"]:
        assert 400 <= r["nfe"] < 400 + 8 * 3 * 4 * 2  # stopped at the first iteration past the budget
        assert len(r["curve"]) >= 2 and r["base"] == res["results"][0]["base"]  # same base, same eval items
        assert 0 < r["diversity"] < 1
    grpo_recipe = json.loads((out / "grpo_kl_beta-0.04" / "recipe.json").read_text())
    assert grpo_recipe["algorithm_options"]["kl_beta"] == 0.04
    assert grpo_recipe["prompts"] == "geneval-s:single_object,colors,counting"
    md = (out / "compare.md").read_text()
    assert "held-in gain" in md and "diversity base" in md and (out / "compare.html").exists()
    capsys.readouterr()
    assert main(["compare", "nft", "bogus", "--budget-nfe", "10", "--out", str(out)]) == 2
    assert "cannot compare 'bogus'; accepted: alignprop, ddpo," in capsys.readouterr().err
    assert main(["compare", "nft", "--out", str(out)]) == 2
    assert "give a budget" in capsys.readouterr().err


def test_compare_on_each_recipes_own_budget(tmp_path, capsys):
    """--budget-recipe: each algorithm runs its recipe's iterations and evaluation points; a finished run is
    read back, not trained again; a second budget beside it is refused in one line."""
    out = tmp_path / "cmp"
    args = ["compare", "nft", "--budget-recipe", "--per-category", "1", "--set", "train.iterations=2",
            "--set", "train.eval_every=1", "--set", "train.batch_size=8", "--set", "train.group_size=4",
            "--set", "sampling.steps=3", "--set", "train.minibatches=1", "--out", str(out)]
    assert main(args) == 0
    res = json.loads((out / "compare.json").read_text())
    (r,) = res["results"]
    assert [c[2] is not None for c in r["curve"]] == [True] * 3  # evaluated at 0, 1, 2: the recipe's points
    assert r["samples"] == 2 * 8 and "its recipe's iterations" in res["header"]
    stamp = (out / "nft" / "metrics.jsonl").stat().st_mtime_ns
    assert main(args) == 0 and (out / "nft" / "metrics.jsonl").stat().st_mtime_ns == stamp  # read back
    capsys.readouterr()
    assert main(args[:3] + ["--budget-nfe", "10", "--out", str(out)]) == 2
    assert "--budget-recipe keeps each recipe's iterations" in capsys.readouterr().err
    assert main(["compare", "diffusion_dpo", "--budget-recipe", "--pair-prompts", "0", "--out", str(out)]) == 2
    assert "--pair-prompts: 0 is out of range; accepted: an integer >= 1" in capsys.readouterr().err
