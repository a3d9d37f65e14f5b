"""What reward-gradient and offline algorithms ask of a denoising policy, on the bundled models: re-running the
end of a chain with gradients reproduces the rollout (same noise), the x0 shortcut of the last step is the
last step, gradients reach every part of the network, and a dataset's images become a trajectory whose pairs
share their forward-process noise."""

import pytest
import torch

from visalign.models.registry import load_model
from visalign.policies import make_policy, policy_class

CASES = [("builtin:shapes-flow", {"kind": "flow", "steps": 6, "guidance_scale": 2.0}),
         ("builtin:shapes-ddpm", {"kind": "ddim", "eta": 1.0, "steps": 6, "guidance_scale": 2.0})]


@pytest.fixture(scope="module", params=CASES, ids=["flow-sde", "ddim"])
def setup(request):
    name, opts = request.param
    adapter = load_model(name)
    policy = make_policy(adapter, policy_class(adapter).Sampling(**opts))
    traj = policy.sample(["a red circle", "two squares"], [3, 4])
    return policy, traj


@pytest.mark.parametrize("start", [0, 3, 5])
def test_denoise_reproduces_the_rollout(setup, start):
    policy, traj = setup
    assert bool(traj.stochastic.any())  # the noise must be reused for this to hold
    with torch.no_grad():
        x = policy.denoise(traj, start)
    assert (x - traj.states[:, -1]).abs().max().item() < 1e-5


def test_denoise_with_checkpointing_gives_the_same_gradient(setup):
    policy, traj = setup
    params = [p for p in policy.adapter.module.parameters() if p.requires_grad]
    grads = []
    for ckpt in (True, False):
        policy.adapter.module.zero_grad(set_to_none=True)
        policy.denoise(traj, 3, grad_checkpoint=ckpt).mean().backward()
        grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]))
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    policy.adapter.module.zero_grad(set_to_none=True)


def test_x0_shortcut_of_the_last_step_is_the_last_step(setup):
    """On the deterministic sampler (the flow SDE's last step adds noise; DDIM's step onto alpha_bar = 1 does not)."""
    policy, _ = setup
    traj = policy.sample(["a red circle", "two squares"], [3, 4], policy.eval_sampling(steps=6, guidance=2.0))
    last = traj.states.shape[1] - 2
    with torch.no_grad():
        x0 = policy.predict_x0(traj, last)
    assert (x0 - traj.states[:, -1]).abs().max().item() < 1e-5
    with torch.no_grad():  # from a noisier state the shortcut is a guess, not the sample
        assert (policy.predict_x0(traj, 1) - traj.states[:, -1]).abs().max().item() > 1e-3


def test_renoise_is_seeded_and_at_the_steps_noise_level(setup):
    policy, traj = setup
    a, b, c = policy.renoise(traj, 4, draw=0), policy.renoise(traj, 4, draw=0), policy.renoise(traj, 4, draw=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a - traj.states[:, -1]).std() > 0.01


def test_pairs_of_a_dataset_share_forward_noise(setup):
    policy, _ = setup
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    traj = policy.from_images(images, ["a red circle"] * 2 + ["two squares"] * 2, [7, 7, 9, 9])
    assert traj.states.shape == (4, 1, 3, 32, 32)
    x_t, t, target = policy.noised_sample(traj, draw=5)
    assert t[0] == t[1] and t[2] == t[3] and t[0] != t[2]
    # same t and eps: the difference of the noised pair is the scaled difference of the images
    noise_part = x_t[0] - x_t[1]
    assert torch.corrcoef(torch.stack([noise_part.flatten(), (images[0] - images[1]).flatten()]))[0, 1] > 0.999
