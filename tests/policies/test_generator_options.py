"""Sampler options on a model spec (models/registry.py load_generator): `kind`, `eta`, `noise_level`, `shift`
pick another of the family's samplers for `visalign eval` / `sample`, e.g. the stochastic DDIM a DDPO run
trains on builtin:shapes-ddpm, and an option the family's sampler lacks is refused in one line."""

import numpy as np
import pytest

from visalign.models.registry import load_generator

PROMPTS, SEEDS = ["a red circle", "two squares"], [5, 6]


def test_ddim_eta_sampler_is_the_ddpo_rollout_sampler_and_repeats():
    gen = load_generator("builtin:shapes-ddpm?kind=ddim&eta=1&steps=3")
    s = gen.sampling
    assert (s.kind, s.eta, s.steps) == ("ddim", 1.0, 3)
    a, b = gen.generate(PROMPTS, SEEDS), gen.generate(PROMPTS, SEEDS)
    np.testing.assert_array_equal(a, b)  # the noise comes from each sample's seed
    plain = load_generator("builtin:shapes-ddpm?steps=3")
    assert plain.sampling.kind == "ode"
    assert np.abs(plain.generate(PROMPTS, SEEDS).astype(int) - a.astype(int)).max() > 0  # a different sampler


def test_flow_sampler_options():
    s = load_generator("builtin:shapes-flow?kind=flow&noise_level=0.5&steps=4").sampling
    assert (s.kind, s.noise_level, s.steps) == ("flow", 0.5, 4)


def test_an_option_the_family_lacks_is_named_with_what_it_takes():
    with pytest.raises(ValueError) as e:
        load_generator("builtin:shapes-flow?eta=1")
    msg = str(e.value)
    assert "['eta']" in msg and "FlowPolicy" in msg and "noise_level" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="eta must be in"):
        load_generator("builtin:shapes-ddpm?kind=ddim&eta=0")
    with pytest.raises(ValueError, match="unknown step kind"):
        load_generator("builtin:text-ar?kind=ddim")
    assert load_generator("builtin:text-ar?kind=greedy").sampling.kind == "greedy"
