import pytest
import torch

from visalign.testbed.models.builtin import CheckpointError, ShapesFlowAdapter, ShapesModel
from visalign.policies.flow import FlowPolicy, FlowSampling

PROMPTS = ["a red circle", "three stars", "a circle left of a square"]


@pytest.mark.parametrize("kind", ["flow", "dance", "cps"])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_ratio_is_one_right_after_sampling(tiny_flow_model, kind, guidance):
    policy = FlowPolicy(ShapesFlowAdapter(tiny_flow_model))
    sampling = FlowSampling(steps=4, guidance_scale=guidance, kind=kind, noise_level=0.7)
    traj = policy.sample(PROMPTS, [1, 2, 3], sampling)
    assert traj.log_probs.shape == (3, 4) and traj.states.shape == (3, 5, 3, 16, 16)
    # every step is stochastic but CPS's last one, whose std sigma_next sin(.) is 0 at sigma_next = 0
    assert traj.stochastic.tolist() == [True, True, True, kind != "cps"]
    for i in range(4):
        lp = policy.log_prob(traj, i)
        assert (lp.log_prob.detach() - traj.log_probs[:, i]).abs().max() < 1e-5
        assert torch.isfinite(lp.log_prob).all()
        if traj.stochastic[i]:
            assert lp.log_prob.requires_grad and (traj.log_probs[:, i] != 0).all()


def test_sde_window_makes_other_steps_deterministic(tiny_flow_model):
    policy = FlowPolicy(ShapesFlowAdapter(tiny_flow_model))
    traj = policy.sample(PROMPTS, [1, 2, 3], FlowSampling(steps=5, kind="flow", sde_window=(1, 3)))
    assert traj.stochastic.tolist() == [False, True, True, False, False]
    assert (traj.log_probs[:, [0, 3, 4]] == 0).all() and (traj.log_probs[:, 1:3] != 0).all()
    for i in (1, 2):
        assert (policy.log_prob(traj, i).log_prob.detach() - traj.log_probs[:, i]).abs().max() < 1e-5


def test_sampling_is_seeded_and_independent_of_the_batch(tiny_flow_model):
    policy = FlowPolicy(ShapesFlowAdapter(tiny_flow_model))
    s = FlowSampling(steps=3, kind="flow", guidance_scale=2.0)
    a = policy.sample(PROMPTS, [1, 2, 3], s)
    b = policy.sample(PROMPTS, [1, 2, 3], s)
    assert torch.equal(a.states, b.states)
    alone = policy.sample(PROMPTS[1:2], [2], s)
    assert torch.allclose(alone.states[0], a.states[1], atol=1e-5)
    other = policy.sample(PROMPTS, [1, 2, 4], s)
    assert not torch.allclose(other.states[2], a.states[2])


def test_bad_sampling_options_are_one_line_errors():
    with pytest.raises(ValueError, match="sde_window"):
        FlowSampling(steps=4, sde_window=(2, 6))
    with pytest.raises(ValueError, match="accepted: flow, dance, cps, ode"):
        FlowSampling(kind="ddim")


def test_save_and_load_round_trip(tiny_flow_model, tmp_path):
    tiny_flow_model.save_pretrained(tmp_path)
    loaded = ShapesModel.from_pretrained(tmp_path)
    for (k, v), (k2, v2) in zip(tiny_flow_model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_missing_and_corrupt_checkpoints_are_one_line_errors(tiny_flow_model, tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        ShapesModel.from_pretrained(tmp_path / "nope")
    tiny_flow_model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 20)
    with pytest.raises(CheckpointError, match="corrupt or not safetensors"):
        ShapesModel.from_pretrained(tmp_path)
    tiny_flow_model.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config .* is corrupt"):
        ShapesModel.from_pretrained(tmp_path)
    base = '"attention": [false, true], "resolution": 16, "text_dim": 32, "text_layers": 1, "heads": 2'
    (tmp_path / "config.json").write_text('{"channels": [16, 32, 64], "attention": [false, true, true], '
                                          '"resolution": 16, "text_dim": 32, "text_layers": 1, "heads": 2}')
    with pytest.raises(CheckpointError, match="first missing keys .* first unexpected keys"):
        ShapesModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"channels": [16, 32], "max_prompt_words": 6, ' + base + "}")
    with pytest.raises(CheckpointError, match=r"wrong shapes: text_encoder.pos \(8, 32\) != \(6, 32\)"):
        ShapesModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("kind", ["flow", "dance"])
def test_ratio_is_one_with_lora(tiny_flow_model, kind):
    from visalign.lora import add_lora

    params = add_lora(tiny_flow_model, 4, 4.0, ("to_q", "to_k", "to_v", "to_out"))
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.1)  # LoRA's B starts at 0; make the adapter matter
    policy = FlowPolicy(ShapesFlowAdapter(tiny_flow_model))
    traj = policy.sample(PROMPTS, [5, 6, 7], FlowSampling(steps=3, guidance_scale=2.5, kind=kind))
    for i in range(3):
        lp = policy.log_prob(traj, i)
        assert (lp.log_prob.detach() - traj.log_probs[:, i]).abs().max() < 1e-5
    lp.log_prob.sum().backward()
    assert all(p.grad is not None for p in params if "lora_B" in str(p.shape) or True)


def test_shared_initial_noise_within_a_group(tiny_flow_model):
    policy = FlowPolicy(ShapesFlowAdapter(tiny_flow_model))
    s = FlowSampling(steps=3, kind="flow")
    traj = policy.sample(["a red circle"] * 3, [1, 2, 3], s, init_seeds=[9, 9, 8])
    assert torch.equal(traj.states[0, 0], traj.states[1, 0]) and not torch.equal(traj.states[0, 0], traj.states[2, 0])
    assert not torch.allclose(traj.states[0, -1], traj.states[1, -1])  # the SDE noise still differs
    ode = policy.sample(["a red circle"] * 2, [1, 2], FlowSampling(steps=3, kind="ode"), init_seeds=[9, 9])
    assert torch.equal(ode.states[0], ode.states[1])  # no SDE noise: the same start gives the same chain


def test_guided_velocity_is_the_one_the_ode_sampler_follows(tiny_flow_model):
    """predict_guided (what nft trains with algorithm_options.guidance = w) is the velocity of a CFG rollout's
    step, x_1 = x_0 + (sigma_1 - sigma_0) v, and carries gradients through the conditional branch only."""
    policy = FlowPolicy(ShapesFlowAdapter(tiny_flow_model))
    s = FlowSampling(steps=4, kind="ode", guidance_scale=3.0)
    traj = policy.sample(PROMPTS, [1, 2, 3], s)
    sigmas = policy.schedule(s)["sigmas"]  # [5]
    x0 = traj.states[:, 0]  # [3, C, H, W]
    with torch.no_grad():
        v = policy.predict_guided(x0, sigmas[0].repeat(3), PROMPTS, 3.0)  # [3, C, H, W]
        v_cond = policy.predict(x0, sigmas[0].repeat(3), PROMPTS)
    assert torch.allclose(x0 + (sigmas[1] - sigmas[0]) * v, traj.states[:, 1], atol=1e-5)
    assert not torch.allclose(v, v_cond, atol=1e-3)  # guidance changes it
    v = policy.predict_guided(x0, sigmas[0].repeat(3), PROMPTS, 3.0)
    v.sum().backward()
    grads = [p.grad for p in tiny_flow_model.parameters() if p.grad is not None]
    assert grads
    tiny_flow_model.zero_grad()
    v_cond = policy.predict(x0, sigmas[0].repeat(3), PROMPTS)
    (3.0 * v_cond).sum().backward()  # only the conditional branch, scaled by w, carries the gradient
    assert all(torch.allclose(g, p.grad, atol=1e-4) for g, p in zip(grads, [p for p in tiny_flow_model.parameters()
                                                                          if p.grad is not None]))
