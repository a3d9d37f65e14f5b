"""Supervised training of the learned GenEval-S reward (models/reward_net.py) on labels of the EXACT verifier.

Every (image, prompt) pair is labelled by `world.verify`, never by how it was made. Candidates come from:
  renders    a random TRAIN-split prompt shown with a render of its own spec (mostly positives), or with a
             render of a minimally edited spec (wrong colour, count, shape, relation, swapped objects or
             colours: mostly the hard negatives); sometimes with extra distractor objects in the scene, or
             with morphed shapes (rounded / pinched squares, square-ish circles, blunt triangles, fat stars:
             the verifier's shape boundaries, where the generators' shapes fall)
  generators samples of the bundled generators (builtin:shapes-flow, builtin:shapes-ddpm) for train prompts,
             drawn once at the start into an in-memory pool with the deterministic sampler, a stochastic one
             and other step counts / guidance scales; shown with their own prompt or with a related train prompt
Then mild augmentations (horizontal flip with left <-> right swapped in the prompt, small shifts, blur, noise)
and the verifier labels the final pair. Each batch holds as many accepted as rejected pairs from each source
(so that 'looks like a render' is no cue for the label). Besides the label, the verifier's detections give a
dense target for the network's detection map: shape class, colour, log-area and centre offset of the object
centred at each cell (much more signal per image than one bit).
Only train-split prompts are ever shown to the network; the agreement report uses the held-out ("eval")
prompts: the bundled generators' evaluation samples (visalign.evaluate's items) and renders.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from visalign.config import ConfigError, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, UnitFloat
from visalign.images import images_to_tensor
from visalign.math.schedules import lr_factor
from ..models.reward_net import RewardNet, RewardNetConfig
from ..world import grammar, render, verify
from ..world.grammar import ObjectSpec, PromptError, Spec
from ..world.vocab import CATEGORIES, COLOR_NAMES, MAX_OBJECTS, RELATIONS, SHAPES


@dataclass(frozen=True)
class RewardPretrainConfig:
    """Training of the learned GenEval-S reward (fp32, CPU, seeded)."""

    steps: PositiveInt = 1200  # optimizer steps
    batch_size: PositiveInt = 128  # pairs per step, half accepted and half rejected by the verifier
    lr: PositiveFloat = 2e-3  # peak AdamW learning rate (linear warmup, then cosine decay to 0)
    warmup_steps: NonNegativeInt = 100
    weight_decay: NonNegativeFloat = 0.01
    grad_clip: PositiveFloat = 1.0
    seed: NonNegativeInt = 0
    generators: tuple[str, ...] = ("builtin:shapes-flow", "builtin:shapes-ddpm")  # sampled into the pool
    pool_per_generator: NonNegativeInt = 1536  # samples per generator on average (samplers: see sampler_settings)
    pool_shares: tuple[float, ...] = ()  # relative pool share of each generator (empty: equal shares)
    pool_val_fraction: UnitFloat = 0.1  # part of the pool kept out of training, to watch overfitting in the log
    generator_fraction: UnitFloat = 0.5  # fraction of candidate pairs whose image comes from the pool
    own_prompt_prob: UnitFloat = 0.5  # a pool image is shown with its own prompt, else with a related train prompt
    render_positive_prob: UnitFloat = 0.4  # a render shows its own prompt's spec, else an edited spec
    distractor_prob: UnitFloat = 0.3  # a render gets one or two extra objects (where they fit)
    morph_prob: UnitFloat = 0.5  # a render draws its objects as morphed shapes (rounded squares, square-ish circles,
    #                          blunt triangles, fat stars...: the verifier's shape boundaries, where generators err)
    flip_prob: UnitFloat = 0.5  # horizontal flip, 'left of' <-> 'right of' in the prompt
    shift_prob: UnitFloat = 0.3  # translate by up to max_shift pixels (black fill)
    max_shift: NonNegativeInt = 3
    blur_prob: UnitFloat = 0.4
    max_blur: NonNegativeFloat = 0.8  # Gaussian sigma in pixels
    noise_prob: UnitFloat = 0.4
    max_noise: NonNegativeFloat = 0.04  # noise std as a fraction of 255
    aux_weight: NonNegativeFloat = 0.5  # weight of the dense auxiliary loss: the verifier's detections per position
    log_every: PositiveInt = 50
    checkpoint_every: PositiveInt = 400  # also written at the end
    max_minutes: NonNegativeFloat = 0.0  # time budget of the training loop: the schedule runs on max(step, time)
    # progress
    #                           and ends (the model written) when either is used up; 0 = steps only
    agreement_per_category: NonNegativeInt = 50  # held-out agreement at the end (per category and source); 0 = skip

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 2 or self.batch_size % 2:
            raise ConfigError(f"steps ({self.steps}) must be >= 1 and batch_size ({self.batch_size}) even and >= 2")
        for k in ("pool_val_fraction", "generator_fraction", "own_prompt_prob", "render_positive_prob",
                  "distractor_prob", "flip_prob", "blur_prob", "noise_prob"):
            if not 0 <= getattr(self, k) <= 1:
                raise ConfigError(f"{k} must be in [0, 1], got {getattr(self, k)}")
        if self.pool_shares and (len(self.pool_shares) != len(self.generators) or min(self.pool_shares) <= 0):
            raise ConfigError(f"pool_shares {list(self.pool_shares)} must hold one positive share per generator "
                              f"({len(self.generators)})")
        if self.generator_fraction > 0 and (not self.generators or self.pool_per_generator < 3):
            raise ConfigError(f"generator_fraction {self.generator_fraction} > 0 needs generators and "
                              f"pool_per_generator >= 3 (got {list(self.generators)}, {self.pool_per_generator})")


@dataclass(frozen=True)
class RewardPretrainRecipe:
    name: str
    description: str = ""
    model: dict = field(default_factory=dict)  # RewardNetConfig fields
    train: RewardPretrainConfig = field(default_factory=RewardPretrainConfig)


# ------------------------------------------------------------------------------------------ spec edits


class SpecEditor:
    """Minimal edits of specs, and related train-split prompts."""

    def __init__(self):
        self.train = {c: grammar.split_specs(c, "train") for c in CATEGORIES}
        self.train_keys = {s.canonical() for specs in self.train.values() for s in specs}
        every = [s for specs in self.train.values() for s in specs]
        self.by_shape = {sh: [s for s in every if any(o.shape == sh for o in s.objects)] for sh in SHAPES}

    def random_train(self, rng: np.random.Generator, category: str | None = None) -> Spec:
        specs = self.train[category or CATEGORIES[rng.integers(len(CATEGORIES))]]
        return specs[rng.integers(len(specs))]

    def train_prompt(self, spec: Spec) -> str | None:
        """The spec's prompt if it is a valid train-split prompt, else None."""
        try:
            parsed = grammar.parse_prompt(grammar.format_prompt(spec))
        except PromptError:
            return None
        return parsed.prompt if parsed.canonical() in self.train_keys else None

    @staticmethod
    def edit(spec: Spec, rng: np.random.Generator) -> Spec:
        """One minimal change (any split; the result may be outside the grammar, e.g. one object of a count)."""
        objs, rel, cat = list(spec.objects), spec.relation, spec.category

        def other(seq, *avoid):
            choices = [x for x in seq if x not in avoid]
            return choices[rng.integers(len(choices))]

        def reshape(i):
            objs[i] = ObjectSpec(other(SHAPES, *(o.shape for o in objs)), objs[i].color, objs[i].count)

        r = rng.random()
        if cat == "counting":
            o = objs[0]
            if r < 0.7:
                objs[0] = ObjectSpec(o.shape, o.color, int(other(range(1, MAX_OBJECTS + 1), o.count)))
            else:
                reshape(0)
        elif cat == "position":
            if r < 0.4:
                rel = other(RELATIONS, rel)
            elif r < 0.7:
                objs = objs[::-1]
            else:
                reshape(int(rng.integers(2)))
        elif cat == "color_attr":
            i = int(rng.integers(2))
            if r < 0.35:
                objs = [ObjectSpec(objs[0].shape, objs[1].color), ObjectSpec(objs[1].shape, objs[0].color)]
            elif r < 0.7:
                objs[i] = ObjectSpec(objs[i].shape, other(COLOR_NAMES, objs[0].color, objs[1].color))
            else:
                reshape(i)
        elif cat == "colors" and r < 0.6:
            objs[0] = ObjectSpec(objs[0].shape, other(COLOR_NAMES, objs[0].color))
        else:  # single_object, two_object, colors' shape
            reshape(int(rng.integers(len(objs))))
        return Spec(cat, tuple(objs), rel)

    def variant_prompt(self, spec: Spec, rng: np.random.Generator, tries: int = 20) -> str:
        """Another train prompt for an image made for `spec`: a minimal edit (60%), another prompt of the
        category (20%), or a prompt of any category sharing a shape (20%: often accepted, e.g. fewer objects)."""
        for _ in range(tries):
            r = rng.random()
            if r < 0.6:
                cand = self.edit(spec, rng)
            elif r < 0.8:
                cand = self.random_train(rng, spec.category)
            else:
                pool = self.by_shape[spec.objects[int(rng.integers(len(spec.objects)))].shape]
                cand = pool[rng.integers(len(pool))]
            p = self.train_prompt(cand)
            if p is not None and p != spec.prompt:
                return p
        return self.random_train(rng).prompt


def flip_prompt(prompt: str) -> str:
    """The prompt of the horizontally mirrored scene: 'left of' <-> 'right of'."""
    if " left of " in prompt:
        return prompt.replace(" left of ", " right of ")
    return prompt.replace(" right of ", " left of ")


def _chaikin(poly: np.ndarray, iterations: int, r: float) -> np.ndarray:
    """Corner cutting: each round replaces every corner by two points r and 1 - r along its edges."""
    for _ in range(iterations):
        nxt = np.roll(poly, -1, 0)
        poly = np.stack([(1 - r) * poly + r * nxt, r * poly + (1 - r) * nxt], 1).reshape(-1, 2)
    return poly


def _pinch(poly: np.ndarray, depth: float, per_edge: int = 12) -> np.ndarray:
    """Pull the middle of every edge towards the centre by `depth` (concave sides, as generators draw squares)."""
    t = np.arange(per_edge) / per_edge
    nxt = np.roll(poly, -1, 0)
    pts = poly[:, None] + (nxt - poly)[:, None] * t[None, :, None]  # [V, per_edge, 2]
    pts = pts * (1 - depth * np.sin(np.pi * t))[None, :, None]
    return pts.reshape(-1, 2)


def morph_polygon(shape: str, rng: np.random.Generator) -> np.ndarray:
    """A random variant of a shape as a polygon filling [-1, 1]^2: circles and squares as superellipses
    |x|^p + |y|^p = 1 (p = 2 a circle, large p a square; the ranges overlap at the verifier's boundary),
    squares and triangles also with concave (pinched) sides, triangles with rounded corners, stars with a
    random inner radius and rounding; a random aspect ratio and a small rotation. Whatever the verifier makes
    of it is the label."""
    if shape in ("square", "triangle") and rng.random() < 0.4:
        poly = _pinch(render.POLYGONS[shape], rng.uniform(0.03, 0.3))
    elif shape in ("circle", "square"):
        p = float(np.exp(rng.uniform(np.log(1.6), np.log(3.5)) if shape == "circle" else
                         rng.uniform(np.log(2.5), np.log(14.0))))
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        c, s = np.cos(t), np.sin(t)
        poly = np.stack([np.sign(c) * np.abs(c) ** (2 / p), np.sign(s) * np.abs(s) ** (2 / p)], 1)
    elif shape == "triangle":
        poly = _chaikin(render.POLYGONS["triangle"].copy(), int(rng.integers(0, 4)), rng.uniform(0.08, 0.25))
    else:
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.3, 0.8))
        poly = _chaikin(np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1), int(rng.integers(0, 3)),
                        rng.uniform(0.05, 0.2))
    a = rng.uniform(-0.2, 0.2)  # radians
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    poly = poly @ rot.T * np.exp(rng.uniform(-0.15, 0.15, 2))
    lo, hi = poly.min(0), poly.max(0)
    return (poly - lo) / (hi - lo) * 2 - 1


def draw_morphed(objects, resolution: int, rng: np.random.Generator, prob: float = 0.7) -> np.ndarray:
    """render.draw, with each object drawn as morph_polygon(...) with probability `prob`."""
    import cv2

    from ..world.vocab import BACKGROUND, COLORS

    ss = render.SUPERSAMPLE
    canvas = np.empty((resolution * ss, resolution * ss, 3), np.uint8)
    canvas[:] = BACKGROUND
    for o in objects:
        if rng.random() < prob:
            unit = morph_polygon(o.shape, rng)
        elif o.shape == "circle":
            t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
            unit = np.stack([np.cos(t), np.sin(t)], 1)
        else:
            unit = render.POLYGONS[o.shape]
        pts = np.round((unit * (o.size / 2) + (o.cx, o.cy)) * ss * 16).astype(np.int32)
        cv2.fillPoly(canvas, [pts], COLORS[o.color][0], cv2.LINE_8, shift=4)
    return cv2.resize(canvas, (resolution, resolution), interpolation=cv2.INTER_AREA)


def render_spec(spec: Spec, rng: np.random.Generator, resolution: int, distractors: int = 0,
                morph: bool = False) -> np.ndarray:
    """A render of spec, with up to `distractors` extra random objects where they fit (at most MAX_OBJECTS);
    with `morph`, objects drawn as morphed shapes (draw_morphed)."""
    scene = render.with_distractors(spec, rng, resolution, distractors)
    return draw_morphed(scene, resolution, rng) if morph else render.draw(scene, resolution)


# ------------------------------------------------------------------------------------- generator pool


@dataclass
class Pool:
    images: np.ndarray  # uint8 [N, H, W, 3]
    specs: list[Spec]
    sources: list[str]  # "generator|sampler" per image


def sampler_settings(policy) -> list[tuple[str, object, float]]:
    """(name, sampling, share of the pool) for variety: the deterministic default sampler (1/4), a stochastic
    sampler at the default steps and guidance (1/4), the deterministic sampler at 10 steps with other guidance
    scales (3/8) and the stochastic one at 10 steps (1/8)."""
    default = policy.eval_sampling()
    kind = policy.STOCHASTIC_KINDS[0]
    stoch = policy.Sampling(steps=default.steps, guidance_scale=default.guidance_scale, kind=kind)
    stoch10 = policy.Sampling(steps=10, guidance_scale=default.guidance_scale, kind=kind)
    return [("ode", default, 0.25), (kind, stoch, 0.25)] + [
        (f"ode10-cfg{g:g}", policy.eval_sampling(10, g), 0.375 / 3) for g in (1.5, 2.0, 5.0)] + [
        (f"{kind}10", stoch10, 0.125)]


def build_pool(generators, per_generator: int, editor: SpecEditor, rng: np.random.Generator, log=print,
               chunk: int = 64, shares: tuple[float, ...] = ()) -> Pool:
    """Sample each generator on random train prompts with the samplers of sampler_settings, per_generator
    samples each on average (split by `shares` when given). Seeds come from rng."""
    shares = shares or (1.0,) * len(generators)
    sizes = [int(round(per_generator * len(generators) * sh / sum(shares))) for sh in shares]
    from visalign.images import tensor_to_images
    from visalign.models.registry import load_model
    from visalign.policies import make_policy

    images, specs, sources = [], [], []
    for name, size in zip(generators, sizes):
        start = time.time()
        policy = make_policy(load_model(name))
        settings = sampler_settings(policy)
        counts = [int(size * share) for _, _, share in settings]
        counts[0] += size - sum(counts)
        jobs = [((tag, sampling), n) for (tag, sampling, _), n in zip(settings, counts)]
        for (tag, sampling), n in jobs:
            for i in range(0, n, chunk):
                m = min(chunk, n - i)
                batch = [editor.random_train(rng) for _ in range(m)]
                seeds = [int(s) for s in rng.integers(0, 2**31, m)]
                with torch.no_grad():
                    traj = policy.sample([s.prompt for s in batch], seeds, sampling)
                images.append(tensor_to_images(traj.images))
                specs += batch
                sources += [f"{name}|{tag}"] * m
        log(f"pool: {size} samples of {name} in {time.time() - start:.0f}s")
    return Pool(np.concatenate(images), specs, sources)


# ----------------------------------------------------------------------------------------- the stream


def aux_targets(detections, resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The verifier's detections -> per-cell targets on the (resolution/4)^2 grid of the network's detection
    map: shape class index into AUX_CLASSES at the cell of each object's box centre (0 = background elsewhere;
    the largest object wins a shared cell), its colour index (-100 = no object: ignored), and [3, G, G]
    log(area / image area) and the centre's offset from the cell centre in cells (x, y) (0 where no object)."""
    from ..models.reward_net import AUX_CLASSES

    g = resolution // 4
    cls = np.zeros((g, g), np.int64)
    col = np.full((g, g), -100, np.int64)
    geom = np.zeros((3, g, g), np.float32)
    for d in reversed(detections):  # largest last, so it wins
        cx, cy = (d.box[0] + d.box[2]) / 2 * g / resolution, (d.box[1] + d.box[3]) / 2 * g / resolution
        i, j = min(int(cy), g - 1), min(int(cx), g - 1)
        cls[i, j] = AUX_CLASSES.index(d.shape)
        col[i, j] = COLOR_NAMES.index(d.color)
        geom[:, i, j] = (np.log(d.area / resolution**2), cx - j - 0.5, cy - i - 0.5)
    return cls, col, geom


def shift(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Translate by (dx, dy) pixels, filling with black."""
    out = np.zeros_like(image)
    h, w = image.shape[:2]
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[max(-dy, 0) : h + min(-dy, 0),
                                                                          max(-dx, 0) : w + min(-dx, 0)]
    return out


class PairStream:
    """Verifier-labelled (image, prompt) pairs. batch(n): `generator_fraction` of the pairs from the generator
    pool and the rest from renders, each half accepted and half rejected by the verifier (balanced per source,
    so that 'looks like a render' is no cue for the label)."""

    def __init__(self, cfg: RewardPretrainConfig, editor: SpecEditor, pool: Pool | None, pool_index: np.ndarray,
                 rng: np.random.Generator, resolution: int):
        self.cfg, self.editor, self.pool, self.pool_index = cfg, editor, pool, pool_index
        self.rng, self.resolution = rng, resolution
        cap = 2 * cfg.batch_size
        self.sources = ("generator", "render") if pool is not None and len(pool_index) else ("render",)
        self.buffers = {(src, ok): deque(maxlen=cap) for src in self.sources for ok in (True, False)}
        self.made = {"candidates": 0, "accepted": 0}

    def quotas(self, n: int) -> dict[tuple[str, bool], int]:
        n_gen = int(round(n * self.cfg.generator_fraction / 2)) * 2 if "generator" in self.sources else 0
        q = {("render", True): (n - n_gen) // 2, ("render", False): (n - n_gen) - (n - n_gen) // 2}
        if n_gen:
            q.update({("generator", True): n_gen // 2, ("generator", False): n_gen // 2})
        return q

    def candidate(self, source: str) -> tuple[np.ndarray, str]:
        """-> (image, prompt) of the source, before augmentation."""
        cfg, rng, ed = self.cfg, self.rng, self.editor
        if source == "generator":
            i = int(self.pool_index[rng.integers(len(self.pool_index))])
            spec = self.pool.specs[i]
            prompt = spec.prompt if rng.random() < cfg.own_prompt_prob else ed.variant_prompt(spec, rng)
            return self.pool.images[i], prompt
        spec = ed.random_train(rng)
        shown = spec if rng.random() < cfg.render_positive_prob else ed.edit(spec, rng)
        distractors = int(rng.integers(1, 3)) if rng.random() < cfg.distractor_prob else 0
        return render_spec(shown, rng, self.resolution, distractors, morph=rng.random() < cfg.morph_prob), spec.prompt

    def augment(self, image: np.ndarray, prompt: str) -> tuple[np.ndarray, str]:
        cfg, rng = self.cfg, self.rng
        if rng.random() < cfg.flip_prob:
            flipped = flip_prompt(prompt)
            if flipped == prompt or self.editor.train_prompt(grammar.parse_prompt(flipped)) is not None:
                image, prompt = image[:, ::-1], flipped
        if cfg.max_shift > 0 and rng.random() < cfg.shift_prob:
            dx, dy = (int(v) for v in rng.integers(-cfg.max_shift, cfg.max_shift + 1, 2))
            image = shift(image, dx, dy)
        blur = rng.uniform(0.2, cfg.max_blur) if rng.random() < cfg.blur_prob else 0.0
        noise = rng.uniform(0.005, cfg.max_noise) if rng.random() < cfg.noise_prob else 0.0
        if blur or noise:
            image = render.perturb(image, rng, blur, noise)
        return np.ascontiguousarray(image), prompt

    def fill(self, quotas: dict) -> None:
        while True:
            short = [src for src in self.sources
                     if any(len(self.buffers[(src, ok)]) < quotas[(src, ok)] for ok in (True, False))]
            if not short:
                return
            src = short[int(self.rng.integers(len(short)))]
            image, prompt = self.augment(*self.candidate(src))
            dets = verify.detect(image)
            ok = verify.check(grammar.parse_prompt(prompt), dets).correct
            self.made["candidates"] += 1
            self.made["accepted"] += ok
            self.buffers[(src, ok)].append((image, prompt, src, aux_targets(dets, self.resolution)))

    def batch(self, n: int) -> dict:
        """-> {"images": uint8 [n, H, W, 3], "prompts", "labels": float32 [n] (1 = the verifier accepts),
        "sources", "aux_shape" / "aux_color": int64 [n, H/4, W/4], "aux_geom": float32 [n, 3, H/4, W/4]}."""
        quotas = self.quotas(n)
        self.fill(quotas)
        items = [(self.buffers[key].popleft(), float(key[1])) for key, k in quotas.items() for _ in range(k)]
        items = [items[i] for i in self.rng.permutation(len(items))]
        return {"images": np.stack([it[0][0] for it in items]), "prompts": [it[0][1] for it in items],
                "labels": np.array([it[1] for it in items], np.float32), "sources": [it[0][2] for it in items],
                **{k: np.stack([it[0][3][j] for it in items])
                   for j, k in enumerate(("aux_shape", "aux_color", "aux_geom"))}}


# -------------------------------------------------------------------------------------------- metrics


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), 1-based."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Mann-Whitney ROC AUC (ties count half); None when one class is absent."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    r = _ranks(np.asarray(scores, np.float64))
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    return pearson(_ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64))) if len(a) >= 3 else None


def _r(x):
    return None if x is None else round(float(x), 4)


def agreement_metrics(labels, scores, categories, groups) -> dict:
    """labels (verifier 0/1), scores (learned, in [0, 1]), category and group (e.g. prompt) per image ->
    accuracy at 0.5, per-category accuracy, ROC AUC, and Pearson / Spearman of per-group means."""
    labels, scores = np.asarray(labels, np.float64), np.asarray(scores, np.float64)
    pred = scores >= 0.5
    correct = pred == labels.astype(bool)
    cats = {}
    for c in CATEGORIES:
        idx = [i for i, k in enumerate(categories) if k == c]
        if idx:
            cats[c] = {"accuracy": _r(correct[idx].mean()), "auc": _r(roc_auc(labels[idx], scores[idx])),
                       "verifier_rate": _r(labels[idx].mean()), "n": len(idx)}
    keys = sorted(set(groups), key=str)
    gl = np.array([labels[[i for i, g in enumerate(groups) if g == k]].mean() for k in keys])
    gs = np.array([scores[[i for i, g in enumerate(groups) if g == k]].mean() for k in keys])
    tp = int((pred & (labels == 1)).sum())
    return {"n": len(labels), "verifier_rate": _r(labels.mean()), "learned_rate": _r(pred.mean()),
            "accuracy": _r(correct.mean()), "auc": _r(roc_auc(labels, scores)),
            "precision": _r(tp / max(int(pred.sum()), 1)), "recall": _r(tp / max(int(labels.sum()), 1)),
            "mean_score": _r(scores.mean()), "groups": len(keys), "group_pearson": _r(pearson(gl, gs)),
            "group_spearman": _r(spearman(gl, gs)), "categories": cats}


@torch.no_grad()
def score_pairs(net: RewardNet, images: np.ndarray, prompts: list[str], batch: int = 256) -> np.ndarray:
    """uint8 [N, H, W, 3] + prompts -> sigmoid(logit) [N] (float64 numpy)."""
    out = []
    for i in range(0, len(prompts), batch):
        out.append(torch.sigmoid(net(images_to_tensor(images[i : i + batch]), prompts[i : i + batch])).double())
    return torch.cat(out).numpy() if out else np.zeros(0)


def heldout_renders(per_category: int, seed: int, resolution: int = 32) -> tuple[np.ndarray, list, list]:
    """For each held-out evaluation item (visalign.evaluate's prompts and seeds): a render of the prompt and a
    render of a minimally edited spec shown with the prompt; every other pair mildly blurred and noised
    (blur 0.6, noise 0.04, as the oracle-perturbed evaluation). -> images, prompts, categories."""
    from ..evaluate import eval_items

    images, prompts, cats = [], [], []
    for j, (cat, prompt, s) in enumerate(eval_items(per_category, seed)):
        rng = np.random.default_rng([int(s), 7])
        spec = grammar.parse_prompt(prompt)
        for k, shown in enumerate((spec, SpecEditor.edit(spec, rng))):
            img = render_spec(shown, rng, resolution)
            if (j + k) % 2:
                img = render.perturb(img, rng, 0.6, 0.04)
            images.append(img)
            prompts.append(prompt)
            cats.append(cat)
    return np.stack(images), prompts, cats


def measure_agreement(net: RewardNet, generators=("builtin:shapes-flow", "builtin:shapes-ddpm"),
                      per_category: int = 50, seed: int = 0, log=print) -> dict:
    """Agreement of the learned reward with the verifier on HELD-OUT prompts:
    - generator samples: each bundled generator's evaluation samples (`visalign eval`'s prompts, seeds and
      deterministic sampler, `per_category` per category)
    - renders: for the same items, a render of the prompt and a render of an edited spec (see heldout_renders)
    Per-group correlations use per-prompt means (per generator and prompt for generator samples)."""
    from ..evaluate import eval_items
    from visalign.models.registry import load_generator

    items = eval_items(per_category, seed)
    cats, prompts, seeds = (list(x) for x in zip(*items))
    result = {"per_category": per_category, "seed": seed, "sets": {}}
    all_l, all_s, all_c, all_g = [], [], [], []
    for name in generators:
        start = time.time()
        images = load_generator(name).generate(prompts, seeds)
        labels = np.array([verify.verify(im, grammar.parse_prompt(p)).score for im, p in zip(images, prompts)])
        scores = score_pairs(net, images, prompts)
        result["sets"][name] = agreement_metrics(labels, scores, cats, prompts)
        all_l.append(labels), all_s.append(scores), all_c.extend(cats), all_g.extend((name, p) for p in prompts)
        log(f"agreement: {len(prompts)} held-out samples of {name} in {time.time() - start:.0f}s")
    if generators:
        result["sets"]["generators (all)"] = agreement_metrics(np.concatenate(all_l), np.concatenate(all_s),
                                                               all_c, all_g)
    images, rprompts, rcats = heldout_renders(per_category, seed, net.config.resolution)
    labels = np.array([verify.verify(im, grammar.parse_prompt(p)).score for im, p in zip(images, rprompts)])
    result["sets"]["renders"] = agreement_metrics(labels, score_pairs(net, images, rprompts), rcats, rprompts)
    return result


def format_agreement(result: dict) -> str:
    sets = result["sets"]
    names = list(sets)
    w = max(14, *(len(n) for n in names))
    rows = [f"{'set':<{w}} {'n':>5} {'verif':>6} {'acc':>6} {'auc':>6} {'prec':>6} {'recall':>6} "
            f"{'pearson':>8} {'spearman':>8}   (per-prompt means)"]
    f = lambda v, k=6: f"{'-':>{k}}" if v is None else f"{v:>{k}.3f}"  # noqa: E731
    for n in names:
        m = sets[n]
        rows.append(f"{n:<{w}} {m['n']:>5} {f(m['verifier_rate'])} {f(m['accuracy'])} {f(m['auc'])} "
                    f"{f(m['precision'])} {f(m['recall'])} {f(m['group_pearson'], 8)} {f(m['group_spearman'], 8)}")
    rows.append("")
    rows.append(f"{'accuracy':<14} " + " ".join(f"{n.replace('builtin:', ''):>18}" for n in names))
    for c in CATEGORIES:
        rows.append(f"{c:<14} " + " ".join(f(sets[n]["categories"].get(c, {}).get("accuracy"), 18) for n in names))
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------- training


def detection_loss(det: torch.Tensor, shape: np.ndarray, color: np.ndarray, geom: np.ndarray) -> torch.Tensor:
    """Cross-entropy of the detection map's shape classes (every cell) and colours (object cells), plus the
    smooth L1 of log-area and centre offsets at object cells. det [B, AUX_CHANNELS, G, G]."""
    from ..models.reward_net import AUX_CLASSES

    ns, nc = len(AUX_CLASSES), len(COLOR_NAMES)
    tc = torch.from_numpy(color)
    loss = F.cross_entropy(det[:, :ns], torch.from_numpy(shape))
    obj = tc >= 0  # [B, G, G]
    if obj.any():
        loss = loss + F.cross_entropy(det[:, ns : ns + nc], tc, ignore_index=-100)
        pred = torch.cat([det[:, ns + nc : ns + nc + 1], 0.5 * torch.tanh(det[:, ns + nc + 1 :])], 1)  # [B, 3, G, G]
        tg = torch.from_numpy(geom)
        loss = loss + F.smooth_l1_loss(pred.permute(0, 2, 3, 1)[obj], tg.permute(0, 2, 3, 1)[obj], beta=0.1)
    return loss


def progress(step: int, elapsed_s: float, cfg: RewardPretrainConfig) -> float:
    """Fraction of the run done: of the steps, or of the time budget (max_minutes) if that is further along."""
    p = step / cfg.steps
    return max(p, elapsed_s / (60 * cfg.max_minutes)) if cfg.max_minutes > 0 else p


def lr_at(step: int, cfg: RewardPretrainConfig, p: float | None = None) -> float:
    """Linear warmup over warmup_steps, then cosine decay to 0 at progress p = 1 (default: step / steps)."""
    return cfg.lr * lr_factor(step, cfg.steps, cfg.warmup_steps, "cosine", p)


def reward_pretrain(model_cfg: RewardNetConfig, cfg: RewardPretrainConfig, out: str | Path, log=print) -> RewardNet:
    """Train a reward model from scratch; writes model.safetensors (fp16) + config.json + pretrain_log.jsonl to
    `out`, and agreement.json with the held-out agreement (unless agreement_per_category is 0)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = RewardNet(model_cfg).train()
    n_params = sum(p.numel() for p in net.parameters())
    log(f"reward model: {n_params / 1e3:.0f}k params; {cfg.steps} steps x {cfg.batch_size} verifier-labelled pairs")
    editor = SpecEditor()
    pool, train_idx, val = None, np.zeros(0, int), None
    if cfg.generator_fraction > 0:
        pool = build_pool(cfg.generators, cfg.pool_per_generator, editor, rng, log, shares=cfg.pool_shares)
        perm = rng.permutation(len(pool.specs))
        n_val = int(round(cfg.pool_val_fraction * len(perm)))
        val_idx, train_idx = np.sort(perm[:n_val]), perm[n_val:]
        if n_val:
            vp = [pool.specs[i].prompt for i in val_idx]
            val = (pool.images[val_idx], vp,
                   np.array([verify.verify(pool.images[i], pool.specs[i]).score for i in val_idx]))
            log(f"pool: {len(pool.specs)} samples, {n_val} kept for validation (verifier accepts "
                f"{val[2].mean():.2f} of them on their own prompts)")
    pool_s = time.time() - t0
    stream = PairStream(cfg, editor, pool, train_idx, rng, model_cfg.resolution)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    history, start, data_s = [], time.time(), 0.0
    acc_sum, acc_n, gen_acc = 0.0, 0, [0.0, 0]
    from visalign.metrics import progress_bar

    bar = progress_bar(log, cfg.steps, "pretrain", "step")
    for step in range(cfg.steps):
        d0 = time.time()
        b = stream.batch(cfg.batch_size)
        data_s += time.time() - d0
        prompts, sources = b["prompts"], b["sources"]
        x, y = images_to_tensor(b["images"]), torch.from_numpy(b["labels"])
        logits, det = net(x, prompts, return_aux=True)
        bce = F.binary_cross_entropy_with_logits(logits, y)
        aux = detection_loss(det, b["aux_shape"], b["aux_color"], b["aux_geom"])
        loss = bce + cfg.aux_weight * aux
        prog = progress(step, time.time() - start, cfg)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg, prog)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        right = ((logits.detach() > 0).float() == y).numpy()
        acc_sum, acc_n = acc_sum + right.sum(), acc_n + len(right)
        gsel = np.array([s == "generator" for s in sources])
        gen_acc = [gen_acc[0] + right[gsel].sum(), gen_acc[1] + gsel.sum()]
        bar.update(1)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            el = time.time() - start
            rec = {"step": step + 1, "loss": round(bce.item(), 5), "aux_loss": round(aux.item(), 5),
                   "lr": lr_at(step, cfg, prog),
                   "train_acc": round(acc_sum / acc_n, 4),
                   "train_acc_generator": round(gen_acc[0] / max(gen_acc[1], 1), 4),
                   "accept_rate": round(stream.made["accepted"] / max(stream.made["candidates"], 1), 3),
                   "pairs": (step + 1) * cfg.batch_size, "wall_s": round(el, 1), "data_s": round(data_s, 1)}
            if val is not None:
                net.eval()
                s = score_pairs(net, *val[:2])
                net.train()
                rec["val_acc_generator"] = round(float(((s >= 0.5) == (val[2] == 1)).mean()), 4)
                rec["val_auc_generator"] = _r(roc_auc(val[2], s))
            history.append(rec)
            acc_sum, acc_n, gen_acc = 0.0, 0, [0.0, 0]
            log(json.dumps(rec))
        out_of_time = progress(step + 1, time.time() - start, cfg) >= 1 and step + 1 < cfg.steps
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or out_of_time:
            net.save_pretrained(out)
        if out_of_time:
            log(f"the time budget train.max_minutes={cfg.max_minutes} ended the schedule at step {step + 1}")
            break
    bar.close()
    train_s = time.time() - start
    summary = {"summary": True, "params": n_params, "pool_s": round(pool_s, 1), "train_s": round(train_s, 1),
               "steps_done": history[-1]["step"] if history else 0}
    net.eval()
    if cfg.agreement_per_category > 0:
        a0 = time.time()
        result = measure_agreement(net, cfg.generators, cfg.agreement_per_category, seed=0, log=log)
        summary["agreement_s"] = round(time.time() - a0, 1)
        (out / "agreement.json").write_text(json.dumps(result, indent=2) + "\n")
        log(format_agreement(result))
    summary["total_s"] = round(time.time() - t0, 1)
    history.append(summary)
    (out / "pretrain_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    return net
