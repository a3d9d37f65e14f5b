"""DDPO / DPOK (per-prompt statistics, IS and SF estimators, KL), the compressibility rewards, prompt sets."""

import types

import numpy as np
import pytest
import torch

from visalign.algorithms import CapabilityError, load_algorithm
from visalign.algorithms.policy_gradient import score_function_loss
from visalign.config import ConfigError
from visalign.math.sde import flow_kl
from visalign.prompts import load_prompt_set
from visalign.rewards import load_reward
from visalign.types import StepLogProb


def test_ddpo_advantages_are_per_prompt_once_a_prompt_has_enough_rewards():
    algo = load_algorithm("ddpo", {"stat_buffer": 4, "stat_min_count": 2})
    # first batch: p has 2 rewards (its own stats: mean 0.5, std 0.5); q has 1 (batch stats)
    a = algo.advantages(torch.tensor([1.0, 0.0, 1.0]), ["p", "p", "q"], 1)
    batch = torch.tensor([1.0, 0.0, 1.0])
    assert torch.allclose(a[:2], torch.tensor([1.0, -1.0]), atol=1e-5)
    assert torch.allclose(a[2], (1 - batch.mean()) / batch.std(unbiased=False), atol=1e-5)
    # state round trip: a new DDPO given the state continues identically
    other = load_algorithm("ddpo", {"stat_buffer": 4, "stat_min_count": 2})
    other.load_state_dict(algo.state_dict())
    assert torch.equal(other.advantages(torch.tensor([0.0]), ["q"], 1), algo.advantages(torch.tensor([0.0]), ["q"], 1))


def test_ddpo_batch_statistics_when_per_prompt_is_off():
    algo = load_algorithm("ddpo", {"per_prompt_stats": False})
    r = torch.tensor([3.0, 1.0, 1.0, 3.0])
    assert torch.allclose(algo.advantages(r, ["p", "p", "q", "q"], 2), torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5)


def test_score_function_loss_hand_worked():
    lp = torch.tensor([-1.0, 2.0], requires_grad=True)
    adv = torch.tensor([2.0, -0.5])
    loss = score_function_loss(lp, adv)
    assert torch.allclose(loss, torch.tensor([2.0, 1.0]))
    loss.sum().backward()
    assert torch.allclose(lp.grad, -adv)  # the gradient of -A log p


class _Policy:
    """A stand-in policy whose step log-prob is a parameter (ratio exp(theta - old))."""

    def __init__(self, theta, mean):
        self.theta, self.mean = theta, mean

    def log_prob(self, traj, step):
        return StepLogProb(self.theta, self.mean, torch.ones(len(self.theta), 1))

    def step_kl(self, lp, ref):  # a Gaussian step, as DenoisingPolicy.step_kl
        return flow_kl(lp.mean, ref.mean, lp.std)


class _traj(types.SimpleNamespace):
    """A one-step trajectory stand-in: the rollout log-probs `old` [B]."""

    def __init__(self, old):
        super().__init__(log_probs=old[:, None], stochastic=torch.tensor([True]))

    def __len__(self):
        return len(self.log_probs)


@pytest.mark.parametrize("estimator", ["ppo", "sf"])
def test_ddpo_step_loss_estimators(estimator):
    theta = torch.tensor([0.1, 0.0], requires_grad=True)
    algo = load_algorithm("ddpo", {"estimator": estimator, "clip_range": 0.05})
    adv = torch.tensor([1.0, -1.0])
    loss, m = algo.step_loss(_Policy(theta, torch.zeros(2, 3)), _traj(torch.zeros(2)), adv, 0, None)
    if estimator == "sf":  # mean of -A log p = (-0.1 + 0) / 2
        assert loss.item() == pytest.approx(-0.05)
    else:  # sample 0: ratio e^0.1 > 1 + c with A > 0 -> clipped to -(1.05); sample 1: ratio 1 -> +1
        assert loss.item() == pytest.approx((-1.05 + 1.0) / 2)
        assert m["clip_frac"] == 0.5


def test_dpok_adds_the_kl_to_the_reference_and_needs_a_positive_beta():
    algo = load_algorithm("dpok", {"kl_beta": 0.5})
    assert algo.uses_reference
    theta = torch.zeros(2, requires_grad=True)
    mean = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    ref = lambda traj, step: StepLogProb(theta.detach(), torch.zeros(2, 2), torch.ones(2, 1))  # noqa: E731
    loss, m = algo.step_loss(_Policy(theta, mean), _traj(torch.zeros(2)), torch.zeros(2), 0, ref)
    # A = 0 -> no policy-gradient term; KL per sample = mean((m - m_ref)^2 / 2) = [0.5, 0]; 0.5 x mean = 0.125
    assert loss.item() == pytest.approx(0.125) and m["kl"] == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="kl_beta must be > 0 for dpok"):
        load_algorithm("dpok", {"kl_beta": 0.0})
    with pytest.raises(ConfigError, match="estimator 'reinforce' is not one of ppo, sf"):
        load_algorithm("ddpo", {"estimator": "reinforce"})


def test_ddpo_refuses_a_deterministic_sampler(tiny_ddpm_model):
    from visalign.testbed.models.builtin import ShapesDiffusionAdapter
    from visalign.policies import DiffusionSampling, make_policy

    policy = make_policy(ShapesDiffusionAdapter(tiny_ddpm_model))
    with pytest.raises(CapabilityError, match="use a stochastic kind: ddim"):
        load_algorithm("ddpo").check(policy, None, DiffusionSampling(kind="ode"))


def test_compressibility_is_minus_the_jpeg_size():
    from PIL import Image
    import io

    flat = torch.zeros(1, 3, 32, 32)
    noisy = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x = torch.cat([flat, noisy])
    c, inc = load_reward("compressibility")(x, ["", ""]), load_reward("incompressibility")(x, ["", ""])
    assert torch.equal(c.scores, -inc.scores) and c.scores[0] > c.scores[1]  # the plain image compresses better
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8) + 128).save(buf, format="JPEG", quality=95)
    assert c.details["jpeg_kb"][0].item() == pytest.approx(buf.tell() / 1000)
    with pytest.raises(ValueError, match="quality must be in"):
        load_reward("compressibility", quality=0)


def test_prompt_sets():
    g = load_prompt_set("geneval-s")
    assert g.verifier and len(g.categories) == 6
    a = load_prompt_set("animals")
    assert not a.verifier and set(a.train["animals"]).isdisjoint(a.eval["animals"]) and len(a.eval["animals"]) >= 10
    items = a.eval_items(3, 0)
    assert [i[2] for i in items] == [0, 1, 2] and items == a.eval_items(3, 0)
    with pytest.raises(ValueError, match="accepted: geneval-s, geneval-s:CAT,CAT, motion, motion:CAT,CAT, text, animals, file:PATH"):
        load_prompt_set("imagenet")


def test_prompt_file(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a cat\n\na dog\na bird\na fish\n")
    s = load_prompt_set(f"file:{f}")
    assert sorted(s.train["p"] + s.eval["p"]) == ["a bird", "a cat", "a dog", "a fish"] and len(s.eval["p"]) == 1
    with pytest.raises(ValueError, match="does not exist"):
        load_prompt_set(f"file:{tmp_path / 'none.txt'}")
