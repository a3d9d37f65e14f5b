"""The new algorithms' losses composed from math/ on stub policies with hand-set numbers: which samples pair
up, against which reference, with which sign; RWR's weighting; the reward-gradient loss and step choices."""

import math

import pytest
import torch

from visalign.algorithms import load_algorithm
from visalign.types import StepLogProb, Trajectory


def _traj(b, steps=3, group=4, seeds=None):
    return Trajectory(prompts=[f"p{i // group}" for i in range(b)], seeds=seeds or list(range(b)),
                      states=torch.zeros(b, steps + 1, 1, 2, 2), log_probs=torch.zeros(b, steps),
                      sigmas=torch.linspace(1, 0, steps + 1), stochastic=torch.ones(steps, dtype=torch.bool),
                      images=torch.zeros(b, 3, 2, 2), extras={"group_size": group})


class LogProbPolicy:
    """log_prob(traj, steps) -> the given [B, K] table (a leaf with gradients)."""

    def __init__(self, table):
        self.table = table

    def log_prob(self, traj, steps):
        return StepLogProb(self.table[:, : len(steps)], None, None)


def test_online_dpo_pairs_best_with_worst_against_the_rollout_policy():
    algo = load_algorithm("online_dpo", {"beta": 2.0})
    traj = _traj(4)
    traj.log_probs[:] = 0.1  # the rollout policy's log-probs
    lp = torch.tensor([[0.3], [0.1], [0.1], [0.0]], requires_grad=True)
    rewards = torch.tensor([1.0, 0.5, 0.2, 0.0])  # sample 0 best, 3 worst; then 1 vs 2
    loss, m = algo.step_loss(LogProbPolicy(lp), traj, algo.advantages(rewards, traj.prompts, 4), [0], None)
    # pair (0, 3): ratios 0.2 and -0.1 -> -log sigmoid(2 * 0.3); pair (1, 2): 0 and 0 -> log 2
    expected = (math.log1p(math.exp(-0.6)) + math.log(2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert m["dpo_accuracy"] == 0.5  # one pair already prefers the chosen one, the other is a tie
    loss.backward()
    assert lp.grad[0, 0] < 0 < lp.grad[3, 0]  # descent raises the chosen log-prob, lowers the rejected one
    # with the base as the reference, the reference's log-probs replace the rollout's
    base = load_algorithm("online_dpo", {"beta": 2.0, "reference": "base"})
    ref = lambda t, s: StepLogProb(torch.tensor([[0.0], [0.0], [0.0], [0.3]]), None, None)  # noqa: E731
    loss, _ = base.step_loss(LogProbPolicy(lp.detach()), traj, rewards, [0], ref)
    # ratios [0.3, 0.1, 0.1, -0.3]: pair (0, 3) margin 0.6 -> -log sigmoid(1.2); pair (1, 2): log 2
    assert loss.item() == pytest.approx((math.log1p(math.exp(-1.2)) + math.log(2)) / 2, rel=1e-5)


def test_online_dpo_without_a_preference_has_a_zero_loss_that_backpropagates():
    algo = load_algorithm("online_dpo", {})
    lp = torch.zeros(4, 1, requires_grad=True)
    loss, _ = algo.step_loss(LogProbPolicy(lp), _traj(4), torch.ones(4), [0], None)
    loss.backward()
    assert loss.item() == 0 and torch.equal(lp.grad, torch.zeros(4, 1))


class PredictPolicy:
    """noised_sample -> x_t = 0, target = 1 everywhere; predict -> the per-sample value table."""

    def __init__(self, values):
        self.values = values

    def noised_sample(self, traj, draw):
        b = len(traj)
        return torch.zeros(b, 1, 2, 2), torch.zeros(b), torch.ones(b, 1, 2, 2)

    def predict(self, x, t, prompts):
        return self.values.repeat(x.shape[0] // len(self.values)).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)


def test_diffusion_dpo_compares_pairs_against_the_reference():
    algo = load_algorithm("diffusion_dpo", {"beta": 10.0})
    traj = _traj(4, group=2, seeds=[5, 5, 6, 6])
    pred = torch.tensor([0.9, 0.5, 0.5, 0.5], requires_grad=True)  # the policy denoises image 0 better
    ref = PredictPolicy(torch.tensor([0.5, 0.5, 0.5, 0.5]))
    loss, m = algo.step_loss(PredictPolicy(pred), traj, torch.tensor([1.0, 0.0, 0.0, 1.0]), [0], ref)
    # errors (1 - pred)^2: policy [0.01, 0.25, 0.25, 0.25], reference 0.25 each
    # pair (0, 1): -beta/2 [(0.01 - 0.25) - 0] = 1.2 -> -log sigmoid(1.2); pair (3, 2): 0 -> log 2
    expected = (math.log1p(math.exp(-1.2)) + math.log(2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert m["dpo_accuracy"] == 0.5
    loss.backward()
    assert pred.grad[0] < 0  # lowering the chosen image's error further lowers the loss


def test_rwr_weights_the_denoising_error():
    algo = load_algorithm("rwr", {"temperature": 1.0, "max_weight": 10.0, "global_std": False})
    w = algo.advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), ["p"] * 4, 4)
    # group advantages [1.5, -0.5, -0.5, -0.5] / std (0.433) -> [sqrt 3, -1/sqrt 3, ...]; exp, normalised to mean 1
    e = torch.exp(torch.tensor([3**0.5, -(3**-0.5), -(3**-0.5), -(3**-0.5)]))
    assert torch.allclose(w, e / e.mean(), atol=1e-3)
    pred = torch.tensor([0.0, 0.5, 0.5, 0.5])
    loss, _ = algo.step_loss(PredictPolicy(pred), _traj(4), w, [0], None)
    err = torch.tensor([1.0, 0.25, 0.25, 0.25])
    assert loss.item() == pytest.approx(float((w * err).mean()), rel=1e-5)
    # the diagnostic's part leaves out the reward-free weight 1 on every sample
    assert algo.signal_loss(PredictPolicy(pred), _traj(4), w, [0]).item() == pytest.approx(float(((w - 1) * err).mean()), rel=1e-5)


class Differentiable:
    name, differentiable = "stub", True

    def __call__(self, images, prompts, metadata=None):
        from visalign.types import RewardOutput

        return RewardOutput(images.flatten(1).mean(1))


class DecodingPolicy:
    class adapter:
        decode = staticmethod(lambda x: 2 * x)

    def __init__(self):
        self.starts = []

    def denoise(self, traj, start, grad_checkpoint=True):
        self.starts.append(start)
        return traj.states[:, -1] + 1.0

    def predict_x0(self, traj, step, x=None):
        self.starts.append(("x0", step))
        return torch.full_like(traj.states[:, -1], 0.25)


class AnchoredPolicy(DecodingPolicy, PredictPolicy):
    """The chain of DecodingPolicy, the forward process and network of PredictPolicy."""

    def __init__(self, values):
        DecodingPolicy.__init__(self)
        PredictPolicy.__init__(self, values)


@pytest.mark.parametrize("name, options, first", [("draft", {"k": 2}, 8), ("alignprop", {"k": 3}, None),
                                                   ("refl", {"window": 4}, None)])
def test_reward_gradient_losses_and_steps(name, options, first):
    algo = load_algorithm(name, options)
    chain = dict.fromkeys(("denoise", "predict_x0", "renoise", "noised_sample", "predict"))  # the methods it needs
    algo.check(type("P", (), {"stochastic_mask": lambda self, s: torch.zeros(1, dtype=torch.bool), **chain})(),
               Differentiable(),
               type("S", (), {"kind": "ode"})())
    traj = _traj(2, steps=10)
    gen = torch.Generator().manual_seed(0)
    starts = {algo.train_steps(traj, gen)[0] for _ in range(50)}
    if name == "draft":
        assert starts == {first}  # the last k = 2 of 10 steps
    elif name == "alignprop":
        assert starts == {7, 8, 9}  # truncation drawn from the last 1..3 steps
    else:
        assert starts == {6, 7, 8, 9}  # ReFL: one of the last 4 steps
    policy = DecodingPolicy()
    loss, m = algo.step_loss(policy, traj, torch.zeros(2), [9], None)
    value = 0.5 if name == "refl" else 2.0  # decode(x0) = 2 x0; the stub reward is its mean
    assert loss.item() == pytest.approx(-value) and m["grad_reward"] == pytest.approx(value)

    # the reference anchor: kl_beta x ||v - v_ref||^2 on noised own samples; v = 0.5, v_ref = 0.2 -> 0.09
    anchored = load_algorithm(name, {**options, "kl_beta": 2.0})
    anchored.check(type("P", (), {"stochastic_mask": lambda self, s: torch.zeros(1, dtype=torch.bool), **chain})(),
                   Differentiable(), type("S", (), {"kind": "ode"})())
    assert anchored.uses_reference and not algo.uses_reference
    anchored_policy = AnchoredPolicy(torch.full((2,), 0.5, requires_grad=True))
    loss, m = anchored.step_loss(anchored_policy, traj, torch.zeros(2), [9], PredictPolicy(torch.full((2,), 0.2)))
    assert m["kl"] == pytest.approx(0.09) and loss.item() == pytest.approx(-value + 2.0 * 0.09)
    loss.backward()
    assert (anchored_policy.values.grad > 0).all()  # the anchor pulls v down towards v_ref


def test_reward_gradient_refuses_a_reward_without_gradients():
    from visalign.algorithms import CapabilityError

    algo = load_algorithm("draft", {})
    reward = type("R", (), {"name": "geneval_s", "differentiable": False})()
    with pytest.raises(CapabilityError, match="reward 'geneval_s' is not differentiable"):
        algo.check(type("P", (), dict.fromkeys(("denoise", "predict_x0", "renoise", "noised_sample", "predict")))(), reward,
                   type("S", (), {"kind": "ode"})())
