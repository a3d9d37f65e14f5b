"""Named generators: `load_generator("builtin:shapes-flow")`, `load_generator("oracle?blur=0.6&noise=0.04")`.

A generator turns prompts and per-sample seeds into uint8 images [B, H, W, 3]; options after '?' are
passed to its factory as typed keyword arguments."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import torch
import yaml

from ..registry import Registry
from ..world import grammar, render
from .builtin import ShapesFlowAdapter, ShapesModel

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"

MODELS = Registry("model")


class OracleGenerator:
    """Renders each prompt exactly (a random scene satisfying it), optionally blurred and noised: it
    measures the verifier, not a model."""

    def __init__(self, resolution: int = 32, blur: float = 0.0, noise: float = 0.0):
        self.resolution, self.blur, self.noise = resolution, blur, noise

    def generate(self, prompts: list[str], seeds: list[int]) -> np.ndarray:
        out = []
        for p, s in zip(prompts, seeds):
            rng = np.random.default_rng(int(s))
            img = render.render(grammar.parse_prompt(p), rng, self.resolution)
            if self.blur or self.noise:
                img = render.perturb(img, rng, self.blur, self.noise)
            out.append(img)
        return np.stack(out)


class FlowGenerator:
    """A flow model sampled with the deterministic (ODE) sampler and classifier-free guidance."""

    def __init__(self, model: ShapesModel, steps: int | None = None, guidance: float | None = None,
                 batch_size: int = 128):
        from ..policies.flow import FlowPolicy, FlowSampling

        cfg = model.config
        self.model = model
        self.policy = FlowPolicy(ShapesFlowAdapter(model))
        self.sampling = FlowSampling(steps=steps or cfg.sample_steps,
                                     guidance_scale=cfg.guidance_scale if guidance is None else guidance, kind="ode")
        self.batch_size = batch_size

    def generate(self, prompts: list[str], seeds: list[int]) -> np.ndarray:
        from ..trainer.pretrain import tensor_to_images

        for p in prompts:
            grammar.parse_prompt(p) if p else None
        out = []
        for i in range(0, len(prompts), self.batch_size):
            traj = self.policy.sample(prompts[i : i + self.batch_size], seeds[i : i + self.batch_size], self.sampling)
            out.append(tensor_to_images(traj.images))
        return np.concatenate(out)


@MODELS.register("oracle", "renders the prompt exactly (options: blur, noise, resolution)")
def _oracle(**opts):
    return OracleGenerator(**opts)


@MODELS.register("builtin:shapes-flow", "bundled 2.7M-param rectified-flow UNet (options: steps, guidance, path)")
def _shapes_flow(path: str | None = None, **opts):
    model = ShapesModel.from_pretrained(path or WEIGHTS_DIR / "shapes-flow")
    return FlowGenerator(model, **opts)


def _typed(value: str):
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def load_generator(spec: str):
    """'name' or 'name?key=value&key=value' -> a generator. A directory path loads a ShapesModel."""
    name, _, query = spec.partition("?")
    opts = {k: _typed(v) for k, v in parse_qsl(query, keep_blank_values=True)}
    if name not in MODELS and Path(name).is_dir():
        return FlowGenerator(ShapesModel.from_pretrained(name), **opts)
    factory = MODELS.get(name)
    try:
        return factory(**opts)
    except TypeError as e:
        raise ValueError(f"model '{name}' does not take options {sorted(opts)}: {e}") from None

