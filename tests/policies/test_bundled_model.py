"""The bundled builtin:shapes-flow weights: they load, sample deterministically, and draw the world."""

import numpy as np
import pytest

from visalign.testbed.models.registry import WEIGHTS_DIR
from visalign.models.registry import load_generator, load_model
from visalign.testbed.world import grammar, verify


@pytest.fixture(scope="module")
def generator():
    return load_generator("builtin:shapes-flow")


def test_weights_are_bundled_small_and_safetensors():
    files = {p.name: p.stat().st_size for p in (WEIGHTS_DIR / "shapes-flow").iterdir()}
    assert {"config.json", "model.safetensors"} <= files.keys()
    assert sum(files.values()) < 20 * 2**20
    adapter = load_model("builtin:shapes-flow")
    assert 1e6 < sum(p.numel() for p in adapter.module.parameters()) < 5e6


def test_seeded_sampling_is_deterministic(generator):
    prompts = ["a red circle", "three stars", "a circle left of a square"]
    a = generator.generate(prompts, [1, 2, 3])
    b = generator.generate(prompts, [1, 2, 3])
    c = generator.generate(prompts, [1, 2, 4])
    assert a.dtype == np.uint8 and a.shape == (3, 32, 32, 3)
    assert np.array_equal(a, b) and not np.array_equal(a[2], c[2])


def test_draws_recognisable_shapes(generator):
    # single objects of the train split: the base model gets most of them right
    prompts = [p for p in grammar.prompts("single_object", "train") for _ in range(4)]
    images = generator.generate(prompts, list(range(len(prompts))))
    ok = [verify.verify(img, grammar.parse_prompt(p)).correct for img, p in zip(images, prompts)]
    assert np.mean(ok) >= 0.5, ok


def test_bundled_diffusion_model_ratio_is_one_and_it_draws_shapes():
    """builtin:shapes-ddpm: the DDIM (eta 1) policy's recomputed log-probs equal the rollout's, and its
    deterministic sampler draws train-split single objects the verifier accepts."""
    import torch

    from visalign.policies import DiffusionSampling, make_policy

    files = {p.name: p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file()}
    assert sum(files.values()) < 24 * 2**20  # everything bundled (7 models; the package stays a small install)
    policy = make_policy(load_model("builtin:shapes-ddpm"))
    traj = policy.sample(["a red circle", "three stars", "a circle left of a square"], [1, 2, 3],
                         DiffusionSampling(steps=5, guidance_scale=3.0, eta=1.0))
    steps = [int(i) for i in torch.nonzero(traj.stochastic).flatten()]
    assert len(steps) == 4
    for i in steps:
        assert (policy.log_prob(traj, i).log_prob.detach() - traj.log_probs[:, i]).abs().max() < 1e-5
    assert (policy.log_prob(traj, steps).log_prob.detach() - traj.log_probs[:, steps]).abs().max() < 1e-5
    prompts = [p for p in grammar.prompts("single_object", "train") for _ in range(4)]
    images = load_generator("builtin:shapes-ddpm").generate(prompts, list(range(len(prompts))))
    ok = [verify.verify(img, grammar.parse_prompt(p)).correct for img, p in zip(images, prompts)]
    assert np.mean(ok) >= 0.3, np.mean(ok)
