"""The learned GenEval-S reward (`geneval_s_learned`) on a tiny random network: gradients reach the images (and
match finite differences), a sample's score does not depend on its batch, save/load round trips, bad paths
fail in one line naming what was tried."""

import numpy as np
import pytest
import torch

from visalign.testbed.models.builtin import CheckpointError
from visalign.testbed.models.reward_net import RewardNet, RewardNetConfig
from visalign.rewards import REWARDS, load_reward
from visalign.testbed.rewards.learned import LearnedGenEvalSReward

PROMPTS = ["a red circle", "three stars", "a circle left of a square", "a red circle and a blue square"]


@pytest.fixture(params=["spec", "attention"])
def net(request):
    torch.manual_seed(0)
    net = RewardNet(RewardNetConfig(resolution=16, channels=(8, 8, 16), head=request.param, text_dim=16, heads=2,
                                    text_layers=1, fusion_layers=1, count_channels=4))
    with torch.no_grad():  # FiLM starts at zero; make the prompt matter
        for name, p in net.named_parameters():
            if "film" in name:
                p.normal_(0, 0.1)
    return net.eval()


def _images(n=4, res=16, seed=0):
    return torch.rand(n, 3, res, res, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_registered_and_declares_what_it_can_do(net):
    assert "geneval_s_learned" in REWARDS.names()
    assert "learned" in REWARDS.doc("geneval_s_learned")
    r = LearnedGenEvalSReward(net=net)
    assert r.differentiable and r.needs_text and r.value_range == (0.0, 1.0)
    out = r(_images(), PROMPTS)
    assert out.scores.shape == (4,) and ((out.scores > 0) & (out.scores < 1)).all()
    assert torch.allclose(torch.sigmoid(out.details["logit"]), out.scores)


def test_gradients_reach_the_images(net):
    r = LearnedGenEvalSReward(net=net)
    x = _images().requires_grad_(True)
    r(x, PROMPTS).scores.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad.abs().flatten(1).sum(1) > 0).all()  # every sample's pixels get a gradient


def test_gradient_matches_finite_differences_in_float64(net):
    r = LearnedGenEvalSReward(net=net.double())
    x = _images(2).double().requires_grad_(True)
    prompts = PROMPTS[:2]
    r(x, prompts).scores[1].backward()
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v[0] = 0
    h = 1e-5
    with torch.no_grad():
        fd = (r(x + h * v, prompts).scores[1] - r(x - h * v, prompts).scores[1]) / (2 * h)
    analytic = (x.grad * v).sum()
    assert abs(float(fd - analytic)) <= 1e-6 * max(1.0, abs(float(analytic))), (float(fd), float(analytic))
    assert x.grad[0].abs().max() == 0  # sample 1's score does not depend on sample 0's pixels


def test_other_resolutions_are_scored_at_the_networks_own(net):
    """A judge of a model drawing the world at another size: the image is resized to the network's resolution
    (16 here) first, with gradients through the resize."""
    reward = LearnedGenEvalSReward(net=net)
    small = _images(4, 16)
    big = torch.nn.functional.interpolate(small, scale_factor=4, mode="nearest")  # the same picture at 64 px
    assert torch.allclose(reward(big, PROMPTS).scores, reward(small, PROMPTS).scores, atol=1e-5)
    big.requires_grad_(True)
    reward(big, PROMPTS).scores.sum().backward()
    assert big.grad.shape == big.shape and big.grad.abs().sum() > 0


def test_a_sample_does_not_depend_on_its_batch(net):
    r = LearnedGenEvalSReward(net=net)
    x = _images(4)
    with torch.no_grad():
        full = r(x, PROMPTS).scores
        alone = torch.cat([r(x[i : i + 1], PROMPTS[i : i + 1]).scores for i in range(4)])
        others = [PROMPTS[2], "a star", "two circles", "a blue square"]
        other = r(torch.cat([x[2:3], _images(3, seed=5)]), others).scores
    assert torch.allclose(full, alone, atol=1e-6)
    assert torch.allclose(full[2], other[0], atol=1e-6)


def test_save_load_round_trip(net, tmp_path):
    x = _images()
    net.save_pretrained(tmp_path / "fp32", dtype=None)
    net.save_pretrained(tmp_path / "fp16")  # the default storage: fp16
    with torch.no_grad():
        ref = net(x, PROMPTS)
        assert torch.equal(RewardNet.from_pretrained(tmp_path / "fp32")(x, PROMPTS), ref)
        half = RewardNet.from_pretrained(tmp_path / "fp16")
        assert all(p.dtype == torch.float32 for p in half.parameters())
        rounded = RewardNet(net.config).eval()
        rounded.load_state_dict({k: v.half().float() for k, v in net.state_dict().items()})
        assert torch.equal(half(x, PROMPTS), rounded(x, PROMPTS))
        assert (half(x, PROMPTS) - ref).abs().max() < 1e-2
    reward = load_reward("geneval_s_learned", path=str(tmp_path / "fp32"))
    with torch.no_grad():
        assert torch.allclose(reward(x, PROMPTS).scores, torch.sigmoid(ref))
    assert sorted(p.name for p in (tmp_path / "fp16").iterdir()) == ["config.json", "model.safetensors"]
    size = {d: (tmp_path / d / "model.safetensors").stat().st_size for d in ("fp16", "fp32")}
    assert size["fp16"] < 0.6 * size["fp32"]


def test_bad_paths_fail_in_one_line_naming_what_was_tried(net, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointError) as e:
        load_reward("geneval_s_learned", path=str(missing))
    assert str(missing / "config.json") in str(e.value) and "\n" not in str(e.value)

    net.save_pretrained(tmp_path / "broken")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="corrupt or not safetensors") as e:
        RewardNet.from_pretrained(tmp_path / "broken")
    assert str(tmp_path / "broken" / "model.safetensors") in str(e.value) and "\n" not in str(e.value)

    from visalign.testbed.models.registry import WEIGHTS_DIR

    with pytest.raises(CheckpointError, match="not a reward model") as e:  # a generator's directory
        RewardNet.from_pretrained(WEIGHTS_DIR / "shapes-flow")
    assert "\n" not in str(e.value)


def test_prompt_outside_the_vocabulary_is_a_one_line_error(net):
    from visalign.testbed.world.grammar import PromptError

    with pytest.raises(PromptError, match="unknown word 'dog'"):
        LearnedGenEvalSReward(net=net)(_images(1), ["a dog"])


def test_metrics_against_hand_computed_values():
    from visalign.testbed.pretrain.reward_pretrain import agreement_metrics, roc_auc, spearman

    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert roc_auc(np.array([1, 1]), np.array([0.1, 0.2])) is None
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 45])) == pytest.approx(1.0)
    m = agreement_metrics([1, 0, 1, 0], [0.9, 0.2, 0.4, 0.6], ["colors"] * 4, ["a", "a", "b", "b"])
    assert m["accuracy"] == 0.5 and m["categories"]["colors"]["n"] == 4 and m["auc"] == pytest.approx(0.75)


def test_training_pairs_are_labelled_by_the_verifier_balanced_and_from_train_prompts():
    from visalign.testbed.pretrain.reward_pretrain import PairStream, RewardPretrainConfig, SpecEditor
    from visalign.testbed.world import grammar, verify

    editor = SpecEditor()
    cfg = RewardPretrainConfig(batch_size=32, generator_fraction=0.0, morph_prob=0.5, distractor_prob=0.5)
    stream = PairStream(cfg, editor, None, np.zeros(0, int), np.random.default_rng(0), 32)
    b = stream.batch(32)
    assert b["images"].shape == (32, 32, 32, 3) and b["labels"].sum() == 16
    for img, prompt, label in zip(b["images"], b["prompts"], b["labels"]):
        spec = grammar.parse_prompt(prompt)
        assert spec.canonical() in editor.train_keys  # never a held-out prompt
        assert verify.verify(img, spec).correct == bool(label)
    n_objects = (b["aux_shape"] > 0).sum((1, 2))
    assert (n_objects == (b["aux_color"] >= 0).sum((1, 2))).all() and n_objects.max() <= 5


def test_reward_pretrain_recipe_runs_from_the_cli(tmp_path, capsys):
    from visalign.cli import main

    out = tmp_path / "rm"
    rc = main(["pretrain", "geneval-s-reward-pretrain", "model.channels=[8,8,16]", "train.steps=2",
               "train.batch_size=8", "train.warmup_steps=1", "train.generator_fraction=0",
               "train.agreement_per_category=0", "--out", str(out)])
    assert rc in (0, None)
    assert "reward model trained" in capsys.readouterr().out
    net = RewardNet.from_pretrained(out)
    assert net.config.channels == (8, 8, 16) and (out / "pretrain_log.jsonl").is_file()
    assert main(["pretrain", "geneval-s-reward-pretrain", "train.batch_size=7", "--out", str(out)]) == 2
    assert "batch_size" in capsys.readouterr().err
