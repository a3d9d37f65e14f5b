"""DiffusionPolicy (DDIM with eta > 0) on the built-in epsilon model: ratio == 1, seeding, schedules."""

import dataclasses

import pytest
import torch

from visalign.math.schedules import alpha_bar
from visalign.math.sde import ddim_step
from visalign.testbed.models.builtin import ShapesDiffusionAdapter
from visalign.policies import DiffusionPolicy, DiffusionSampling, make_policy

PROMPTS = ["a red circle", "three stars", "a circle left of a square"]


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("eta", [1.0, 0.5])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ratio_is_one_right_after_sampling(tiny_ddpm_model, tiny_vpred_model, guidance, eta, prediction):
    model = tiny_ddpm_model if prediction == "epsilon" else tiny_vpred_model
    policy = make_policy(ShapesDiffusionAdapter(model))
    assert policy.adapter.prediction_type == prediction
    assert isinstance(policy, DiffusionPolicy)
    traj = policy.sample(PROMPTS, [1, 2, 3], DiffusionSampling(steps=4, guidance_scale=guidance, eta=eta))
    assert traj.log_probs.shape == (3, 4) and traj.states.shape == (3, 5, 3, 16, 16)
    # the last step lands on alpha_bar = 1: its posterior variance is 0, so it is deterministic
    assert traj.stochastic.tolist() == [True, True, True, False]
    for i in range(4):
        lp = policy.log_prob(traj, i)
        assert (lp.log_prob.detach() - traj.log_probs[:, i]).abs().max() < 1e-5
        if traj.stochastic[i]:
            assert lp.log_prob.requires_grad and (traj.log_probs[:, i] != 0).all()
    if guidance != 1.0:  # the same with the unconditional branch recomputed, not taken from the rollout
        plain = dataclasses.replace(traj, extras={"sampling": traj.extras["sampling"]})
        assert (policy.log_prob(plain, [0, 1, 2]).log_prob.detach() - traj.log_probs[:, :3]).abs().max() < 1e-5


def test_a_step_is_ddim_on_the_cosine_schedule(tiny_ddpm_model):
    """Step 1 of a 4-step chain, recomputed by hand from the network's epsilon and ddim_step."""
    adapter = ShapesDiffusionAdapter(tiny_ddpm_model)
    policy = DiffusionPolicy(adapter)
    traj = policy.sample(PROMPTS, [1, 2, 3], DiffusionSampling(steps=4, eta=1.0))
    t = torch.tensor([0.75, 0.5])
    ab = alpha_bar(t)
    with torch.no_grad():
        eps = tiny_ddpm_model(traj.states[:, 1], t[0].expand(3), tiny_ddpm_model.encode_prompts(PROMPTS))
    out = ddim_step(traj.states[:, 1], eps, ab[0], ab[1], eta=1.0, prev_sample=traj.states[:, 2], clip_sample=1.0)
    assert torch.allclose(out.log_prob, traj.log_probs[:, 1], atol=1e-6)
    assert torch.allclose(traj.sigmas, (1 - alpha_bar(torch.linspace(1, 0, 5))).sqrt())


def test_sampling_is_seeded_and_independent_of_the_batch(tiny_ddpm_model):
    policy = DiffusionPolicy(ShapesDiffusionAdapter(tiny_ddpm_model))
    s = DiffusionSampling(steps=3, guidance_scale=2.0)
    a, b = policy.sample(PROMPTS, [1, 2, 3], s), policy.sample(PROMPTS, [1, 2, 3], s)
    assert torch.equal(a.states, b.states)
    alone = policy.sample(PROMPTS[1:2], [2], s)
    # eps -> x0 divides by sqrt(alpha_bar) = 0.003 on the first step, so float rounding of a batch of 1 vs 3
    # grows to ~1e-4 there; seeds not batch composition decide the sample
    assert torch.allclose(alone.states[0], a.states[1], atol=5e-4)


def test_ode_kind_is_deterministic_ddim_and_window_limits_the_stochastic_steps(tiny_ddpm_model):
    policy = DiffusionPolicy(ShapesDiffusionAdapter(tiny_ddpm_model))
    ode = policy.sample(PROMPTS, [1, 2, 3], DiffusionSampling(steps=4, kind="ode"))
    assert not ode.stochastic.any() and (ode.log_probs == 0).all()
    other = policy.sample(PROMPTS, [1, 2, 3], DiffusionSampling(steps=4, kind="ode"), latents=ode.states[:, 0])
    assert torch.equal(other.images, ode.images)
    win = policy.sample(PROMPTS, [1, 2, 3], DiffusionSampling(steps=4, sde_window=(1, 3)))
    assert win.stochastic.tolist() == [False, True, True, False]


def test_noised_sample_targets_epsilon(tiny_ddpm_model):
    policy = DiffusionPolicy(ShapesDiffusionAdapter(tiny_ddpm_model))
    traj = policy.sample(PROMPTS, [1, 2, 3], DiffusionSampling(steps=2, kind="ode"))
    x_t, t, target = policy.noised_sample(traj, draw=0)
    a = alpha_bar(t)[:, None, None, None]
    assert torch.allclose(x_t, a.sqrt() * traj.states[:, -1] + (1 - a).sqrt() * target, atol=1e-5)
    x_t2, t2, _ = policy.noised_sample(traj.select(torch.tensor([2])), draw=0)
    assert torch.equal(t2, t[2:]) and torch.equal(x_t2, x_t[2:])


def test_bad_sampling_options_are_one_line_errors(tiny_flow_model):
    with pytest.raises(ValueError, match="accepted: ddim, ode"):
        DiffusionSampling(kind="flow")
    with pytest.raises(ValueError, match="use kind ode for eta = 0"):
        DiffusionSampling(eta=0.0)
    with pytest.raises(ValueError, match="needs a epsilon or v_prediction model, this one predicts velocity"):
        ShapesDiffusionAdapter(tiny_flow_model)


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_several_steps_in_one_forward_equal_one_at_a_time(tiny_flow_model, tiny_vpred_model, family):
    """log_prob(traj, [steps]) batches B x K rows through the network (train.step_chunk) and must equal
    scoring each step alone, values and gradients."""
    from visalign.testbed.models.builtin import ShapesFlowAdapter
    from visalign.policies import FlowSampling

    if family == "flow":
        policy, s = make_policy(ShapesFlowAdapter(tiny_flow_model)), FlowSampling(steps=3, kind="flow", guidance_scale=2.0)
    else:
        policy, s = make_policy(ShapesDiffusionAdapter(tiny_vpred_model)), DiffusionSampling(steps=4, guidance_scale=2.0)
    model = policy.adapter.module
    traj = policy.sample(PROMPTS, [1, 2, 3], s)
    steps = [0, 1, 2]
    joint = policy.log_prob(traj, steps)
    assert joint.log_prob.shape == (3, 3) and joint.mean.shape == (3, 3, 3, 16, 16) and joint.std.shape == (3, 3, 1, 1, 1)
    torch.testing.assert_close(joint.log_prob.detach(), traj.log_probs[:, steps], atol=1e-5, rtol=0)
    joint.log_prob.sum().backward()
    g_joint = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    sum(policy.log_prob(traj, i).log_prob.sum() for i in steps).backward()
    for a, p in zip(g_joint, model.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-4, rtol=1e-4)
    if family == "diffusion":  # its last step lands on alpha_bar = 1 and is deterministic
        with pytest.raises(ValueError, match="mix stochastic and deterministic steps"):
            policy.log_prob(traj, [2, 3])


class _CountingAdapter:
    """An adapter that counts the rows it runs through the network."""

    def __init__(self, adapter):
        self._adapter, self.rows = adapter, 0

    def predict(self, x, *a, **k):
        self.rows += x.shape[0]
        return self._adapter.predict(x, *a, **k)

    def __getattr__(self, name):
        return getattr(self._adapter, name)


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_on_policy_log_prob_reuses_the_rollouts_unconditional_outputs(tiny_flow_model, tiny_vpred_model, family):
    """While the weights are the rollout's, log_prob takes the CFG's unconditional branch from the rollout (one
    network pass per row instead of two) and gives what recomputing it gives; after an optimizer step, or with
    LoRA switched off (the reference), it recomputes."""
    from visalign import lora
    from visalign.testbed.models.builtin import ShapesFlowAdapter
    from visalign.policies import FlowSampling

    if family == "flow":
        adapter, s = _CountingAdapter(ShapesFlowAdapter(tiny_flow_model)), FlowSampling(steps=3, kind="flow", guidance_scale=3.0)
    else:
        adapter, s = _CountingAdapter(ShapesDiffusionAdapter(tiny_vpred_model)), DiffusionSampling(steps=4, guidance_scale=3.0)
    params = lora.add_lora(adapter.module, 4, 8.0, ("to_q", "to_k", "to_v", "to_out"))
    policy = make_policy(adapter, s)
    traj = policy.sample(PROMPTS, [1, 2, 3])
    assert traj.extras["uncond"].pred.shape == (3, s.steps, 3, 16, 16)
    plain = dataclasses.replace(traj, extras={k: v for k, v in traj.extras.items() if k != "uncond"})
    steps, rows = [0, 1, 2], 3 * 3

    def scored(t):
        before = adapter.rows
        lp = policy.log_prob(t, steps)
        return lp.log_prob, adapter.rows - before

    cached, n = scored(traj)
    assert n == rows  # the conditional branch only
    fresh, n = scored(plain)
    assert n == 2 * rows
    torch.testing.assert_close(cached, fresh, atol=1e-5, rtol=0)
    torch.testing.assert_close(cached.detach(), traj.log_probs[:, steps], atol=1e-5, rtol=0)
    sub, n = scored(traj.select(torch.tensor([2, 0])))  # a minibatch carries its rows of the cache
    assert n == 2 * 3 and torch.allclose(sub, cached[[2, 0]], atol=1e-6)
    with lora.adapters_disabled(adapter.module):
        assert scored(traj)[1] == 2 * rows
    cached.sum().backward()
    torch.optim.SGD(params, lr=10.0).step()
    after, n = scored(traj)
    assert n == 2 * rows  # the weights moved: the rollout's unconditional outputs are stale
    torch.testing.assert_close(after, scored(plain)[0], atol=1e-5, rtol=0)
    assert (after - cached).abs().max() > 1e-3  # the step did change the policy
    assert "uncond" not in policy.sample(PROMPTS, [1, 2, 3], dataclasses.replace(s, guidance_scale=1.0)).extras

