"""The bundled builtin:shapes-flow weights: they load, sample deterministically, and draw the world."""

import numpy as np
import pytest

from visalign.models.registry import WEIGHTS_DIR, load_generator, load_model
from visalign.world import grammar, verify


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
