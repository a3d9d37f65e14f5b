"""Pretraining of the autoregressive family on fresh train renders of its world task (GenEval-S scenes, the
same stream as shapes-flow, or the text task's signs, as text-flow):
kind `vq_pretrain` trains the VQ tokenizer (models/vq.py) on reconstruction, kind `ar_pretrain` trains the
token GPT (models/ar.py) by next-token cross-entropy on [prompt, plan, image tokens of the frozen VQ].

Prompt dropout (the prompt replaced by the empty one, a fraction cfg_dropout of the time) teaches the same
network the unconditional distribution that classifier-free guidance mixes in (Ho & Salimans, 2022).
The learning rate warms up then decays to 0 (cosine); the final weights are the model, stored in fp16.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

import numpy as np

from visalign.config import ConfigError, DecayFloat, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, UnitFloat
from visalign.images import images_to_tensor
from visalign.math.schedules import lr_factor
from ..world import plan as plan_lang
from ..world import render
from ..world.vocab import CATEGORIES
from .pretrain import SAVE_DTYPES, STREAMS, SceneStream, lr_at


@dataclass(frozen=True)
class TokenPretrainConfig:
    steps: PositiveInt = 3000  # optimizer steps
    batch_size: PositiveInt = 64  # fresh renders per step
    lr: PositiveFloat = 2e-3  # peak AdamW learning rate
    warmup_steps: NonNegativeInt = 100
    lr_schedule: str = "cosine"  # cosine (to 0 at the end) | constant
    weight_decay: NonNegativeFloat = 0.0
    grad_clip: PositiveFloat = 1.0
    cfg_dropout: DecayFloat = 0.1  # ar: fraction of prompts replaced by the empty prompt (CFG)
    plan_dropout: UnitFloat = 0.5  # ar: fraction of sequences with the empty plan (the model then draws with or
    # without)
    seed: NonNegativeInt = 0
    log_every: PositiveInt = 50
    checkpoint_every: PositiveInt = 500
    max_minutes: NonNegativeFloat = 0.0  # a wall-time budget: the schedule runs to max(step share, time share); 0 =
    # steps only
    device: str = "cpu"  # cpu | cuda
    workers: NonNegativeInt = 0  # processes rendering batches (0: render in the training process); each has its own
    # seed
    save_dtype: str = "float16"  # float16 (the bundle) | float32

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"train.steps ({self.steps}) and train.batch_size ({self.batch_size}) must be >= 1")
        if not (0 <= self.cfg_dropout < 1 and 0 <= self.plan_dropout <= 1):
            raise ConfigError(f"train.cfg_dropout must be in [0, 1) and plan_dropout in [0, 1], got "
                              f"{self.cfg_dropout}, {self.plan_dropout}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ConfigError(f"train.lr_schedule '{self.lr_schedule}' is not one of cosine, constant")
        if self.workers < 0:
            raise ConfigError(f"train.workers must be >= 0, got {self.workers}")
        if self.save_dtype not in SAVE_DTYPES:
            raise ConfigError(f"train.save_dtype '{self.save_dtype}' is not one of {', '.join(SAVE_DTYPES)}")


@dataclass(frozen=True)
class TokenPretrainRecipe:
    name: str
    description: str = ""
    tokenizer: str = "builtin:shapes-vq"  # ar_pretrain: the frozen VQ whose tokens the GPT learns (builtin:NAME or a dir)
    init: str = ""  # ar_pretrain: go on training this token model (e.g. builtin:shapes-ar) with its own tokenizer
    model: dict = field(default_factory=dict)  # VQConfig or ARConfig fields
    train: TokenPretrainConfig = field(default_factory=TokenPretrainConfig)


class _Batches(torch.utils.data.IterableDataset):
    """Endless batches from make(seed) in each DataLoader worker, seeded (cfg.seed, worker id)."""

    def __init__(self, make, cfg):
        self.make, self.cfg = make, cfg

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        stream = self.make([self.cfg.seed, info.id if info else 0])
        while True:
            yield stream.batch(self.cfg.batch_size)


def _batches(make, cfg: TokenPretrainConfig):
    """Fresh batches: rendered here (workers=0, seeded with cfg.seed) or by cfg.workers processes."""
    if cfg.workers == 0:
        stream = make(cfg.seed)
        while True:
            yield stream.batch(cfg.batch_size)
    loader = torch.utils.data.DataLoader(_Batches(make, cfg), batch_size=None, num_workers=cfg.workers,
                                         prefetch_factor=4, collate_fn=lambda b: b)
    yield from loader


def _lr(step: int, elapsed: float, cfg: TokenPretrainConfig) -> float:
    """Warmup, then cosine (or constant) over the run's progress: the larger of the share of steps done and,
    with a time budget, the share of max_minutes spent, so a budgeted run still anneals to 0 at its end."""
    if cfg.max_minutes <= 0:
        return lr_at(step, cfg)
    progress = max(step / cfg.steps, elapsed / (60 * cfg.max_minutes))
    return cfg.lr * lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.lr_schedule, progress)


def _loop(model, cfg: TokenPretrainConfig, out: Path, loss_fn, log, what: str, stream):
    """The shared optimisation loop: fresh batch of stream(seed) -> loss_fn(prompts, images uint8, ...) ->
    (loss, metrics)."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model.to(cfg.device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=(0.9, 0.99),
                            weight_decay=cfg.weight_decay)
    batches = _batches(stream, cfg)
    log(f"pretraining {what}, {sum(p.numel() for p in model.parameters()) / 1e6:.3f}M params, "
        f"{cfg.steps} steps x {cfg.batch_size} on {cfg.device}")
    start, history = time.time(), []
    save = lambda: model.save_pretrained(out, dtype=SAVE_DTYPES[cfg.save_dtype])  # noqa: E731
    from visalign.metrics import progress_bar

    bar = progress_bar(log, cfg.steps, "pretrain", "step")
    for step in range(cfg.steps):
        batch = next(batches)
        loss, metrics = loss_fn(*batch)
        lr = _lr(step, time.time() - start, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        bar.update(1)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            el = time.time() - start
            rec = {"step": step + 1, "loss": round(loss.item(), 5), **metrics, "lr": lr,
                   "images": (step + 1) * cfg.batch_size, "wall_s": round(el, 1)}
            history.append(rec)
            log(json.dumps(rec))
        out_of_time = cfg.max_minutes > 0 and time.time() - start >= 60 * cfg.max_minutes
        if out_of_time:
            log(f"stopped at step {step + 1} of {cfg.steps}: train.max_minutes={cfg.max_minutes} spent")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or out_of_time:
            save()
        if out_of_time:
            break
    bar.close()
    (out / "pretrain_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    return model.cpu().eval()


def vq_pretrain(model_cfg, cfg: TokenPretrainConfig, out: str | Path, log=print):
    """Train a VQ-VAE (models/vq.py) from scratch on reconstruction MSE + commitment."""
    from ..models.vq import VQVAE

    model = VQVAE(model_cfg)

    def loss_fn(prompts, images):
        x = images_to_tensor(images).to(cfg.device)  # [B, 3, H, W]
        recon, commit, ids = model(x)
        mse = F.mse_loss(recon, x)
        used = ids.unique().numel()
        return mse + commit, {"mse": round(mse.item(), 5), "codes_used": used}

    res, task = model.config.resolution, model.config.task
    return _loop(model, cfg, Path(out), loss_fn, log, "VQ tokenizer", stream=lambda seed: STREAMS[task](seed, res))


class PlanSceneStream(SceneStream):
    """SceneStream that also gives each render's plan, read off the scene the renderer drew."""

    def batch(self, n: int) -> tuple[list[str], np.ndarray, list[str]]:
        prompts, images, plans = [], [], []
        for _ in range(n):
            specs = self.specs[CATEGORIES[self.rng.integers(len(CATEGORIES))]]
            spec = specs[self.rng.integers(len(specs))]
            objects = render.sample_scene(spec, self.rng, self.resolution)
            prompts.append(spec.prompt)
            images.append(render.draw(objects, self.resolution))
            plans.append(plan_lang.plan_of(objects, self.resolution))
        return prompts, np.stack(images), plans


class PlanlessStream:
    """A world task without a plan (the text task): its stream's batches with empty plans."""

    def __init__(self, stream):
        self.stream = stream

    def batch(self, n: int) -> tuple[list[str], np.ndarray, list[str]]:
        prompts, images = self.stream.batch(n)
        return prompts, images, [""] * n


def ar_pretrain(model_cfg, cfg: TokenPretrainConfig, tokenizer: str, out: str | Path, log=print,
                init=None):
    """Train the token GPT (models/ar.py) by next-token cross-entropy under the sampling-time token masks
    (the plan grammar, image codes at image positions), on the frozen VQ's tokens of fresh renders; with
    `init` (a ShapesARAdapter) go on training its GPT on its tokenizer (supervised fine-tuning). The output
    folder holds the GPT and, in OUT/tokenizer, the VQ it draws with (`builtin:shapes-ar?path=OUT` loads it)."""
    from ..models.ar import TOKENIZER_DIR, ShapesARAdapter, TokenGPT
    from ..models.registry import WEIGHTS_DIR
    from ..models.vq import VQVAE
    from visalign.policies.autoregressive import ARSampling, AutoregressivePolicy

    if init is not None:
        gpt, vq = init.model, init.vq.to(cfg.device)
    else:
        vq_dir = WEIGHTS_DIR / tokenizer.removeprefix("builtin:") if tokenizer.startswith("builtin:") else Path(tokenizer)
        gpt, vq = TokenGPT(model_cfg), VQVAE.from_pretrained(vq_dir).to(cfg.device)
    adapter = ShapesARAdapter(gpt, vq)
    vq.save_pretrained(Path(out) / TOKENIZER_DIR, dtype=SAVE_DTYPES[cfg.save_dtype])
    policy = AutoregressivePolicy(adapter, ARSampling())
    with_plan, without = ARSampling(plan=True), ARSampling(plan=False)
    gen = torch.Generator().manual_seed(cfg.seed)

    def loss_fn(prompts, images, plans):
        b = len(prompts)
        drop = (torch.rand(b, generator=gen) < cfg.cfg_dropout).tolist()
        has_plan = torch.rand(b, generator=gen) >= cfg.plan_dropout  # [B]
        prompts = ["" if d else p for p, d in zip(prompts, drop)]
        with torch.no_grad():
            tokens = adapter.encode_images(images_to_tensor(images).to(cfg.device),
                                           [p if k else "" for p, k in zip(plans, has_plan.tolist())])  # [B, N]
        n, plan_len = tokens.shape[1], adapter.plan_length
        ids = adapter.encode(prompts)  # [B, L]
        logits = gpt(torch.cat([ids, tokens[:, :-1] + adapter.offset], 1))[0][:, adapter.prompt_length - 1 :]
        hp = has_plan.to(cfg.device)[:, None]
        allowed = torch.stack([torch.where(hp, policy.allowed(tokens, j, with_plan), policy.allowed(tokens, j, without))
                               for j in range(plan_len)] + [policy.allowed(tokens, plan_len, with_plan)] * (n - plan_len),
                              1)  # [B, N, V]: the masks sampling applies
        logp = torch.log_softmax(logits.float().masked_fill(~allowed, float("-inf")), -1)
        nll = -logp.gather(2, tokens[..., None])[..., 0]  # [B, N]
        img_nll = nll[:, plan_len:].mean()
        plan_nll = nll[has_plan.to(cfg.device), :plan_len].sum(1).mean() if bool(has_plan.any()) else nll.new_zeros(())
        return nll.mean(), {"image_nll": round(img_nll.item(), 4), "plan_nll_per_plan": round(plan_nll.item(), 4)}

    gpt.to(cfg.device)
    res, task = vq.config.resolution, gpt.config.task
    if gpt.config.plan_length:  # the shapes world: each render with the plan read off its scene
        stream = lambda seed: PlanSceneStream(seed, res)  # noqa: E731
    else:
        stream = lambda seed: PlanlessStream(STREAMS[task](seed, res))  # noqa: E731
    return _loop(gpt, cfg, Path(out), loss_fn, log, "token GPT", stream=stream)


KINDS = ("vq_pretrain", "ar_pretrain")


def run_recipe(data: dict, out: str | Path, log=print):
    """`visalign pretrain` of a recipe dict of kind vq_pretrain or ar_pretrain (kind already checked)."""
    from visalign.config import build

    kind = data.pop("kind")
    recipe = build(TokenPretrainRecipe, data)
    if kind == "vq_pretrain":
        from ..models.vq import VQConfig

        return vq_pretrain(_model_config(VQConfig, recipe.model), recipe.train, out, log)
    from ..models.ar import ARConfig, ShapesARAdapter

    if not recipe.init:
        return ar_pretrain(_model_config(ARConfig, recipe.model), recipe.train, recipe.tokenizer, out, log)
    from visalign.models.registry import load_model

    init = load_model(recipe.init)
    if not isinstance(init, ShapesARAdapter):
        raise ConfigError(f"init model '{recipe.init}' is not a token model; accepted: builtin:shapes-ar, "
                          f"builtin:text-ar, or either with ?path=DIR")
    if recipe.model:
        raise ConfigError(f"init '{recipe.init}' brings its own model config; remove model: {sorted(recipe.model)}")
    return ar_pretrain(init.config, recipe.train, recipe.tokenizer, out, log, init=init)


def _model_config(cls, d: dict):
    """The recipe's model: section as `cls`, every key and type checked as the recipe's own fields are."""
    from visalign.config import build

    return build(cls, d, "model")
