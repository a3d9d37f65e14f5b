"""Supervised pretraining of a built-in model on freshly rendered train scenes of its world task (GenEval-S
shapes, or the text task's signs).

Flow objective (rectified flow, as SD3): x_t = (1 - t) x0 + t x1, the network predicts v = x1 - x0.
DDPM objective on the cosine schedule: x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, the network predicts eps, or
v = sqrt(ab) eps - sqrt(1 - ab) x0 (v-prediction: it weighs x0 at high noise, where the layout is decided,
as the flow loss does; an eps model of ours trained as long drew blobs, 0.05 on GenEval-S).
Every batch is newly rendered, so the model never sees an image twice. The learning rate decays to 0 at
the end (cosine) so that the final weights are the model: no EMA copy that fine-tuning would not have.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from visalign.config import ConfigError, DecayFloat, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from visalign.images import images_to_tensor
from visalign.math import schedules
from visalign.math.schedules import lr_factor

from ..models.builtin import ShapesModel, ShapesModelConfig
from ..world import grammar, render, text
from ..world.vocab import CATEGORIES


class SceneStream:
    """Random train-split prompts (uniform over the six categories) and a fresh render of each."""

    def __init__(self, seed: int, resolution: int):
        self.rng = np.random.default_rng(seed)
        self.resolution = resolution
        self.specs = {c: grammar.split_specs(c, "train") for c in CATEGORIES}

    def batch(self, n: int) -> tuple[list[str], np.ndarray]:
        prompts, images = [], []
        for _ in range(n):
            specs = self.specs[CATEGORIES[self.rng.integers(len(CATEGORIES))]]
            spec = specs[self.rng.integers(len(specs))]
            prompts.append(spec.prompt)
            images.append(render.render(spec, self.rng, self.resolution))
        return prompts, np.stack(images)


class TextStream:
    """Random train-split words (world/text.py; held-out words never appear) and a fresh render of each."""

    def __init__(self, seed: int, resolution: int):
        self.rng = np.random.default_rng(seed)
        self.words = text.split_words("train")

    def batch(self, n: int) -> tuple[list[str], np.ndarray]:
        words = [self.words[i] for i in self.rng.integers(len(self.words), size=n)]
        return [text.TextSpec(w).prompt for w in words], np.stack([text.render(w, self.rng) for w in words])


STREAMS = {"shapes": SceneStream, "text": TextStream}  # the model config's task -> its training data



SAVE_DTYPES = {"float16": torch.float16, "float32": None}  # train.save_dtype -> save_pretrained's dtype


@dataclass(frozen=True)
class PretrainConfig:
    """Supervised pretraining of a built-in shapes model on freshly rendered GenEval-S train scenes."""

    steps: PositiveInt = 3000  # optimizer steps
    batch_size: PositiveInt = 64  # images per step, each a fresh render of a random train-split prompt
    lr: PositiveFloat = 1e-3  # peak AdamW learning rate (linear warmup, then cosine decay to 0)
    warmup_steps: NonNegativeInt = 100
    lr_schedule: str = "cosine"  # cosine (to 0 at the end) | constant (after warmup)
    weight_decay: NonNegativeFloat = 0.0
    grad_clip: PositiveFloat = 1.0  # max global gradient norm
    cfg_dropout: DecayFloat = 0.1  # fraction of prompts replaced by the empty prompt (classifier-free guidance)
    timestep_sampling: str = "logit_normal"  # "logit_normal" (SD3) or "uniform"
    seed: NonNegativeInt = 0
    log_every: PositiveInt = 50
    checkpoint_every: PositiveInt = 500  # also writes the model at the end
    max_minutes: NonNegativeFloat = 0.0  # stop (and write the model) after this much wall time; 0 = run all steps
    save_dtype: str = "float16"  # the weights' storage precision: float16 (the bundle) | float32; they load in fp32

    def __post_init__(self):
        if self.save_dtype not in SAVE_DTYPES:
            raise ConfigError(f"train.save_dtype '{self.save_dtype}' is not one of {', '.join(SAVE_DTYPES)}")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"steps ({self.steps}) and batch_size ({self.batch_size}) must be >= 1")
        if not 0 <= self.cfg_dropout < 1:
            raise ConfigError(f"cfg_dropout must be in [0, 1), got {self.cfg_dropout}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ConfigError(f"lr_schedule '{self.lr_schedule}' is not one of cosine, constant")
        if self.timestep_sampling not in ("logit_normal", "uniform"):
            raise ConfigError(f"timestep_sampling '{self.timestep_sampling}' is not one of logit_normal, uniform")


@dataclass(frozen=True)
class PretrainRecipe:
    name: str
    description: str = ""
    init: str = ""  # start from this registered model (e.g. builtin:shapes-flow: supervised fine-tuning); "" = random
    model: dict = field(default_factory=dict)  # ShapesModelConfig fields (ignored with init: the model's own)
    train: PretrainConfig = field(default_factory=PretrainConfig)


def sample_t(n: int, how: str, gen: torch.Generator) -> torch.Tensor:
    if how == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=gen))
    return torch.rand(n, generator=gen)


def denoising_loss(model: ShapesModel, x0: torch.Tensor, prompts: list[str], t: torch.Tensor,
                   noise: torch.Tensor) -> torch.Tensor:
    """The supervised objective of the model's prediction type. x0, noise [B, 3, H, W]; t [B] in (0, 1)."""
    cond = model.encode_prompts(prompts)
    tt = t[:, None, None, None]
    if model.config.prediction == "velocity":
        xt = (1 - tt) * x0 + tt * noise
        target = noise - x0
    else:
        ab = schedules.alpha_bar(t)[:, None, None, None]  # [B, 1, 1, 1]
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        target = noise if model.config.prediction == "epsilon" else ab.sqrt() * noise - (1 - ab).sqrt() * x0
    return ((model(xt, t, cond) - target) ** 2).mean()


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """The learning rate of 0-based step `step` (math/schedules.py: lr_factor)."""
    return cfg.lr * lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.lr_schedule)


def pretrain(model_cfg: ShapesModelConfig, cfg: PretrainConfig, out: str | Path, log=print,
             init: ShapesModel | None = None) -> ShapesModel:
    """Train a new model from `model_cfg`, or go on training `init` (supervised fine-tuning) when given."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = (init if init is not None else ShapesModel(model_cfg)).train()
    model_cfg = model.config
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    stream = STREAMS[model_cfg.task](cfg.seed, model_cfg.resolution)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"pretraining {model_cfg.prediction} model, {n_params / 1e6:.2f}M params, {cfg.steps} steps x {cfg.batch_size}")
    start, seen = time.time(), 0
    history = []
    from visalign.metrics import progress_bar

    bar = progress_bar(log, cfg.steps, "pretrain", "step")
    for step in range(cfg.steps):
        prompts, images = stream.batch(cfg.batch_size)
        drop = torch.rand(len(prompts), generator=gen) < cfg.cfg_dropout
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        x0 = images_to_tensor(images)
        t = sample_t(len(prompts), cfg.timestep_sampling, gen).clamp(1e-4, 1 - 1e-4)
        noise = torch.randn(x0.shape, generator=gen)
        loss = denoising_loss(model, x0, prompts, t, noise)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        seen += len(prompts)
        bar.update(1)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            el = time.time() - start
            rec = {"step": step + 1, "loss": round(loss.item(), 5), "lr": lr_at(step, cfg), "images": seen,
                   "wall_s": round(el, 1), "img_per_s": round(seen / el, 1)}
            history.append(rec)
            log(json.dumps(rec), flush=True) if log is print else log(json.dumps(rec))
        out_of_time = cfg.max_minutes > 0 and time.time() - start >= 60 * cfg.max_minutes
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or out_of_time:
            model.save_pretrained(out, dtype=SAVE_DTYPES[cfg.save_dtype])
        if out_of_time:
            log(f"stopped at step {step + 1} after train.max_minutes={cfg.max_minutes}")
            break
    bar.close()
    (out / "pretrain_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    return model.eval()
