"""DiffusionNFT's loss, its optimality mapping, the EMA old model and the variance curriculum, on
hand-worked numbers."""

import pytest
import torch

from visalign.math.losses import nft_loss, nft_optimality, nft_reward_term
from visalign.trainer.ema import EMAWeights
from visalign.trainer.trainer import PromptSampler
from visalign.testbed.world.vocab import CATEGORIES


def test_nft_optimality_maps_advantages_to_unit_interval():
    r = nft_optimality(torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0]))
    assert r.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert nft_optimality(torch.tensor([1.0]), scale=2.0).item() == 0.75


def test_nft_loss_hand_worked():
    v, v_old, target = torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2), torch.ones(1, 2)
    r = torch.tensor([0.75])
    # beta 1: v+ = v = [1, 2] -> mean sq err 0.5; v- = 2 v_old - v = [-1, -2] -> 6.5; 0.75 * 0.5 + 0.25 * 6.5
    assert nft_loss(v, v_old, target, r, beta=1.0).item() == pytest.approx(2.0)
    # beta 0.5: v+ = [0.5, 1] -> 0.125; v- = [-0.5, -1] -> 3.125; 0.75 * 0.125 + 0.25 * 3.125
    assert nft_loss(v, v_old, target, r, beta=0.5).item() == pytest.approx(0.875)
    # the reward term: (r - 0.5)(pos - neg) = 0.25 * (0.125 - 3.125); the rest, 0.5 (pos + neg), is reward-free
    assert nft_reward_term(v, v_old, target, r, beta=0.5).item() == pytest.approx(-0.75)
    assert nft_reward_term(v, v_old, target, torch.tensor([0.5])).item() == 0.0


def test_nft_gradient_at_the_old_policy():
    """At v == v_old the gradient is 2 (2r - 1)(v - target) / D: good samples pull, bad ones push, and a
    sample only as good as its group (r = 0.5) gives none; away from v_old it pulls back towards v_old."""
    target, v_old = torch.tensor([[1.0, -1.0]]), torch.tensor([[0.5, 0.5]])
    for r in (1.0, 0.5, 0.0):
        v = v_old.clone().requires_grad_(True)
        nft_loss(v, v_old, target, torch.tensor([r])).sum().backward()
        assert torch.allclose(v.grad, (2 * r - 1) * (v_old - target), atol=1e-6)
    v = (v_old + torch.tensor([[0.2, -0.1]])).requires_grad_(True)
    nft_loss(v, v_old, target, torch.tensor([0.5])).sum().backward()
    assert torch.allclose(v.grad, torch.tensor([[0.2, -0.1]]), atol=1e-6)  # (2 v - 2 v_old) / D


@pytest.mark.parametrize("options,needle", [({"old_ema": 1.0}, "algorithm_options.old_ema must be in [0, 1)"),
                                            ({"beta": 0.0}, "algorithm_options.beta must be in (0, 1]"),
                                            ({"draws": 0}, "draws >= 1")])
def test_bad_nft_options_are_one_line(options, needle):
    from visalign.algorithms import load_algorithm
    from visalign.config import ConfigError

    with pytest.raises(ConfigError) as e:
        load_algorithm("nft", options)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_ema_weights_update_and_swap():
    p = torch.nn.Parameter(torch.tensor([2.0]))
    ema = EMAWeights([p], decay=0.9)
    with torch.no_grad():
        p.fill_(4.0)
    ema.update()
    assert ema.shadow[0].item() == pytest.approx(2.2)  # 0.9 * 2 + 0.1 * 4
    with ema.swapped():
        assert p.item() == pytest.approx(2.2)
    assert p.item() == 4.0 and ema.shadow[0].item() == pytest.approx(2.2)
    other = EMAWeights([torch.nn.Parameter(torch.zeros(1))], 0.9)
    other.load_state_dict(ema.state_dict())
    assert other.shadow[0].item() == pytest.approx(2.2)


def test_variance_curriculum_draws_where_groups_disagree():
    uniform = PromptSampler(0)
    assert uniform.weights().tolist() == pytest.approx([1 / 6] * 6)
    s = PromptSampler(0, "variance")
    assert s.weights().tolist() == pytest.approx([1 / 6] * 6)  # nothing seen yet
    pos = CATEGORIES.index("position")
    prompts, rewards = [], []
    for c in CATEGORIES:  # one group of 4 per category; only the position group disagrees (var 0.25)
        prompts += [s.prompts[c][0]] * 4
        rewards += [1.0, 0.0, 1.0, 0.0] if c == "position" else [1.0] * 4
    s.observe(prompts, torch.tensor(rewards), 4)
    w = s.weights()
    floor = 0.1 * 0.25 / 6
    assert w[pos] == pytest.approx((0.25 + floor) / (0.25 + 6 * floor))
    assert w[0] == pytest.approx(floor / (0.25 + 6 * floor))
    drawn, _, _ = s.draw(1, 40, 1)
    assert sum(p in s.prompts["position"] for p in drawn) > 30
    s.observe(prompts, torch.tensor([1.0] * 24), 4)  # running statistic: 0.7 * 0.25 + 0.3 * 0
    assert s.spread["position"] == pytest.approx(0.175)
    t = PromptSampler(0, "variance")
    t.load_state_dict(s.state_dict())
    assert t.weights().tolist() == pytest.approx(s.weights().tolist())


def test_nft_guidance_option_is_checked():
    from visalign.algorithms import load_algorithm
    from visalign.config import ConfigError

    assert load_algorithm("nft", {"guidance": 4.0}).config.guidance == 4.0
    with pytest.raises(ConfigError, match="algorithm_options.guidance must be >= 1"):
        load_algorithm("nft", {"guidance": 0.5})


def test_nft_trains_the_guided_velocity_when_asked(tiny_flow_model):
    """guidance = w: the loss sees p_u + w (p_c - p_u); at the old weights v == v_old exactly either way."""
    from contextlib import nullcontext

    from visalign.algorithms import load_algorithm
    from visalign.testbed.models.builtin import ShapesFlowAdapter
    from visalign.policies.flow import FlowPolicy, FlowSampling

    policy = FlowPolicy(ShapesFlowAdapter(tiny_flow_model))
    traj = policy.sample(["a red circle", "three stars"], [1, 2], FlowSampling(steps=3, kind="ode", guidance_scale=3.0))
    adv = torch.tensor([1.0, -1.0])
    losses = {}
    for w in (1.0, 3.0):
        loss, metrics = load_algorithm("nft", {"guidance": w}).step_loss(policy, traj, adv, 7, None, old=nullcontext)
        assert metrics["nft_v_drift"] < 1e-10 and torch.isfinite(loss)
        losses[w] = float(loss)
    assert losses[1.0] != pytest.approx(losses[3.0])
