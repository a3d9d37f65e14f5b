"""Frozen, documented config dataclasses, recipes (YAML files in visalign/recipes/) and typed
`key=value` overrides. Invariants are checked in __post_init__ with the arithmetic in the message."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

RECIPES_DIR = Path(__file__).parent / "recipes"


class ConfigError(ValueError):
    """A recipe, override or value that is not accepted (message is one line)."""


@dataclass(frozen=True)
class PretrainConfig:
    """Supervised pretraining of a built-in shapes model on freshly rendered GenEval-S train scenes."""

    steps: int = 3000  # optimizer steps
    batch_size: int = 64  # images per step, each a fresh render of a random train-split prompt
    lr: float = 1e-3  # peak AdamW learning rate (linear warmup, then cosine decay to 0)
    warmup_steps: int = 100
    lr_schedule: str = "cosine"  # cosine (to 0 at the end) | constant (after warmup)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm
    cfg_dropout: float = 0.1  # fraction of prompts replaced by the empty prompt (classifier-free guidance)
    timestep_sampling: str = "logit_normal"  # "logit_normal" (SD3) or "uniform"
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500  # also writes the model at the end
    max_minutes: float = 0.0  # stop (and write the model) after this much wall time; 0 = run all steps

    def __post_init__(self):
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


# ------------------------------------------------------------------------------------- typed building


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, key: str):
    """Check / convert one value to the annotated type; raise ConfigError naming key and type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}={value!r} is not one of {' | '.join(_type_name(a) for a in args)}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list")
        (inner, *_) = typing.get_args(tp) or (typing.Any,)
        return tuple(_coerce(v, inner, key) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '1e-4' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r} must be a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}={value!r} must be a string")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    return value


def build(cls, data: dict | None, prefix: str = ""):
    """Build dataclass `cls` from a (nested) dict, checking every key and type."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or cls.__name__} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in names:
            raise ConfigError(f"unknown key '{key}'; accepted: {', '.join(names)}")
        kwargs[k] = v if hints[k] is dict else _coerce(v, hints[k], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


def parse_override(text: str) -> tuple[list[str], object]:
    """'train.lr=3e-4' -> (['train', 'lr'], 3e-4). Values are read as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value, e.g. train.iterations=10")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each dotted key in a nested dict (copying); the dataclass build then checks names and types."""
    import copy

    data = copy.deepcopy(data)
    for o in overrides:
        path, value = parse_override(o)
        d = data
        for p in path[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise ConfigError(f"override '{o}': '{p}' is not a section")
        d[path[-1]] = value
    return data


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe_dict(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.suffix == ".yaml" or not path.is_file():
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown recipe '{name_or_path}'; available: {', '.join(recipe_names())}")
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("name", path.stem)
    return data


@dataclass(frozen=True)
class TrainConfig:
    """The RL loop. One iteration = sample `batch_size` images (batch_size / group_size prompts, each
    `group_size` times), score them, compute advantages over the whole (all-process) batch, then
    `epochs` passes of `minibatches` optimizer steps each."""

    iterations: int = 20
    batch_size: int = 64  # images per iteration, over all processes
    group_size: int = 8  # images per prompt (GRPO's group)
    epochs: int = 1  # passes over one rollout batch
    minibatches: int = 1  # optimizer steps per pass; the batch is split into this many parts
    lr: float = 1e-4
    lr_schedule: str = "constant"  # constant | cosine (over `iterations`, after warmup)
    warmup_iterations: int = 0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # max global gradient norm
    ema_decay: float = 0.0  # > 0: an EMA of the trained weights (this decay per optimizer step), which evaluation,
    # the report and export use; the rollouts keep the raw weights. 0 = off
    step_chunk: int = 0  # trained steps per network forward (0: all of a minibatch's at once; 1-4 for big models)
    micro_batch: int = 0  # samples per network forward in updates (0: the whole minibatch; gradients accumulate)
    compile: bool = False  # torch.compile the trained network (static shapes, one graph per batch shape; the first
    # iteration pays the compilation). For fixed-shape denoisers (UNet, DiT); token models' growing caches recompile
    compile_backend: str = "inductor"  # torch.compile's backend (aot_eager: trace only, to debug a graph)
    finetune: str = "lora"  # lora | full
    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out")
    eval_every: int = 5  # iterations between held-out evaluations (also before the first and after the last)
    eval_per_category: int = 50
    eval_seed: int = 0
    checkpoint_every: int = 5
    seed: int = 0
    curriculum: str = "uniform"  # uniform | variance: draw categories where groups disagree (trainer.PromptSampler)
    shared_initial_noise: bool = False  # a group starts from one noise; its samples differ only by SDE noise
    diagnose_every: int = 10  # iterations between gradient-signal diagnostics (0: never); see trainer/diagnostics.py
    min_signal_share: float = 0.5  # warn when the run's accumulated update is estimated to be less signal than this
    max_bad_updates: int = 3  # consecutive updates skipped for a NaN/inf loss or reward before the run stops
    budget_nfe: int = 0  # stop (evaluate, checkpoint) once training has used this many network evaluations; 0 = off
    budget_minutes: float = 0.0  # stop once training wall time (evaluation excluded) passes this; 0 = off
    eval_every_nfe: int = 0  # also evaluate each time training's network evaluations pass a multiple of this

    def __post_init__(self):
        if self.iterations < 1:
            raise ConfigError(f"train.iterations must be >= 1, got {self.iterations}")
        if self.group_size < 1 or self.batch_size % self.group_size != 0:
            raise ConfigError(
                f"train.group_size={self.group_size} does not divide train.batch_size={self.batch_size} "
                f"({self.batch_size} / {self.group_size} = {self.batch_size / max(self.group_size, 1):.2f}); "
                f"accepted: a batch_size that is a multiple of group_size"
            )
        if self.batch_size % self.minibatches != 0:
            raise ConfigError(
                f"train.minibatches={self.minibatches} does not divide train.batch_size={self.batch_size}"
            )
        if self.finetune not in ("lora", "full"):
            raise ConfigError(f"train.finetune '{self.finetune}' is not one of lora, full")
        if self.curriculum not in ("uniform", "variance"):
            raise ConfigError(f"train.curriculum '{self.curriculum}' is not one of uniform, variance")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"train.lr_schedule '{self.lr_schedule}' is not one of constant, cosine")
        if self.step_chunk < 0 or self.micro_batch < 0:
            raise ConfigError(f"train.step_chunk and train.micro_batch must be >= 0 (0 = all in one forward), got "
                              f"{self.step_chunk}, {self.micro_batch}")
        if self.diagnose_every < 0 or not 0 <= self.min_signal_share <= 1:
            raise ConfigError(f"train.diagnose_every must be >= 0 and train.min_signal_share in [0, 1], got "
                              f"{self.diagnose_every}, {self.min_signal_share}")
        if self.budget_nfe < 0 or self.budget_minutes < 0 or self.eval_every_nfe < 0:
            raise ConfigError(f"train.budget_nfe, budget_minutes and eval_every_nfe must be >= 0 (0 = off), got "
                              f"{self.budget_nfe}, {self.budget_minutes}, {self.eval_every_nfe}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        for k in ("eval_every", "checkpoint_every", "epochs", "eval_per_category", "lora_rank"):
            if getattr(self, k) < 1:
                raise ConfigError(f"train.{k} must be >= 1, got {getattr(self, k)}")


@dataclass(frozen=True)
class EvalConfig:
    """The held-out evaluation's sampler and its judges (visalign/monitor.py)."""

    steps: int | None = None  # None: the model's default
    guidance: float | None = None
    # rewards the run does not train on that score the held-out samples beside the training reward, as reward
    # specs ('geneval_s_learned', 'ocr?psm=8&preprocess=otsu-crop'); None: the prompt set's defaults; []: none
    judges: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TrainRecipe:
    name: str
    description: str = ""
    model: str = "builtin:shapes-flow"
    prompts: str = "geneval-s"  # prompt set: geneval-s | animals | file:PATH (visalign/prompts.py)
    reward: str = "geneval_s"
    reward_options: dict = field(default_factory=dict)
    algorithm: str = "grpo"
    algorithm_options: dict = field(default_factory=dict)
    sampling: dict = field(default_factory=dict)  # the policy's rollout sampler (FlowSampling / DiffusionSampling fields)
    data: str = ""  # offline algorithms (diffusion_dpo): a pairs dataset directory made by `visalign make-pairs`
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_train_recipe(name_or_path: str, overrides: list[str] | None = None) -> tuple[TrainRecipe, dict]:
    """-> (the checked recipe, the resolved dict it was built from)."""
    data = apply_overrides(load_recipe_dict(name_or_path), overrides or [])
    kind = data.pop("kind", "train")
    if kind != "train":
        raise ConfigError(f"recipe '{name_or_path}' is a {kind} recipe; `visalign train` takes train recipes")
    recipe = build(TrainRecipe, data)
    return recipe, dataclasses.asdict(recipe)
