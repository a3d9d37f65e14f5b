"""Frozen, documented config dataclasses, recipes (YAML files in visalign/recipes/) and typed
`key=value` overrides. Invariants are checked in __post_init__ with the arithmetic in the message."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import yaml

RECIPES_DIR = Path(__file__).parent / "recipes"


class ConfigError(ValueError):
    """A recipe, override or value that is not accepted (message is one line)."""


# ------------------------------------------------------------------------------------ accepted ranges


@dataclass(frozen=True)
class Range:
    """The interval a number setting accepts, declared where the setting is typed: `Annotated[int, Range(ge=1)]`
    on a config field or a factory's keyword argument; _coerce checks it and names it in the message. Floats are
    finite unless `finite=False` (a NaN passes every comparison check and a NaN setting silently wrecks a run)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    finite: bool = True

    def __contains__(self, v) -> bool:
        return not ((self.ge is not None and v < self.ge) or (self.gt is not None and v <= self.gt)
                    or (self.le is not None and v > self.le) or (self.lt is not None and v >= self.lt))

    def __str__(self) -> str:
        lo = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None
        hi = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return f"{'>=' if lo[0] == '[' else '>'} {lo[1:]}"
        return f"{'<=' if hi[-1] == ']' else '<'} {hi[:-1]}" if hi else "any"


# the ranges most settings take (a count of things, an interval, a rate)
PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]  # 0 usually means off / all / none
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
UnitFloat = Annotated[float, Range(ge=0, le=1)]  # a fraction or probability
DecayFloat = Annotated[float, Range(ge=0, lt=1)]  # an EMA decay, a dropout rate, Adam's betas


# ------------------------------------------------------------------------------------- typed building


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _ranged(value, tp, key: str):
    """An Annotated[base, Range(...)] value: the base type's check (finite unless the range says otherwise),
    then the range; either message names the range."""
    base, *meta = typing.get_args(tp)
    rng = next((m for m in meta if isinstance(m, Range)), None)
    if rng is None:
        return _coerce(value, base, key)
    try:
        v = _coerce(value, base, key, finite=rng.finite)
    except ConfigError as e:
        raise ConfigError(f"{e} {rng}") from None
    if v is not None and v not in rng:
        raise ConfigError(f"{key}={value!r} is out of range; accepted: {rng}")
    return v


def _coerce(value, tp, key: str, finite: bool = True):
    """Check / convert one value to the annotated type; raise ConfigError naming key and type (and range)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _ranged(value, tp, key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        if len(others) == 1:  # `X | None`: X's own message (its range, its type)
            return _coerce(value, others[0], key, finite)
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
        args = typing.get_args(tp) or (typing.Any,)
        if origin is tuple and len(args) > 1 and args[-1] is not Ellipsis:  # tuple[X, Y]: exactly that many
            if len(value) != len(args):
                raise ConfigError(f"{key}={value!r} must be a list of {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        return tuple(_coerce(v, args[0], key) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be an integer")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads '1e-4' (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}={value!r} must be a number")
        if finite and not math.isfinite(number):  # NaN passes no comparison: it would slip through every range
            raise ConfigError(f"{key}={value!r} must be a finite number")
        return number
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
    hints = typing.get_type_hints(cls, include_extras=True)  # extras: the fields' declared Ranges
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in names:
            raise ConfigError(f"unknown key '{key}'; accepted: {', '.join(names)}")
        if hints[k] is dict:  # options checked by their owner (a reward's, a sampler's); a mapping ({} when empty)
            if v is not None and not isinstance(v, dict):
                raise ConfigError(f"{key} must be a mapping of options (key: value), got {v!r}")
            kwargs[k] = v or {}
        else:
            kwargs[k] = _coerce(v, hints[k], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError, ArithmeticError) as e:
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


def _keyword_hints(fn) -> dict:
    """The annotations of a function's (or a class's __init__'s) parameters, Ranges kept; {} when they cannot be
    resolved (an annotation naming a type only imported for type checkers): those options are then not typed."""
    target = fn.__init__ if inspect.isclass(fn) and not dataclasses.is_dataclass(fn) else fn
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # noqa: BLE001 - best effort: an unresolvable annotation must not stop loading
        return {}


def check_options(fn, options: dict, what: str) -> dict:
    """Keyword options for `fn` (a factory, a class or a dataclass) as its annotations type them: each value
    checked / converted as a recipe field is (type, Range, finite floats, true/false booleans) and an unknown
    name refused with the accepted ones, unless `fn` takes **kwargs (then it checks those itself).
    -> the converted options. `what` names the owner in the one-line ConfigError ("reward 'geneval_s'")."""
    params = inspect.signature(fn).parameters
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
    hints = _keyword_hints(fn)
    out = {}
    for k, v in options.items():
        if k not in named and not open_ended:
            raise ConfigError(f"{what} does not take option '{k}'; accepted: {', '.join(named) or 'none'}")
        tp = hints.get(k) if k in named else None
        try:
            out[k] = v if tp is None or tp is dict else _coerce(v, tp, k)
        except ConfigError as e:
            raise ConfigError(f"{what}: {e}") from None
    return out


def arg_type(tp):
    """An argparse `type=` for a command-line flag typed as a setting is (`type=arg_type(PositiveInt)`): the number
    read and held to the annotation's Range (floats finite unless the Range says otherwise), so `--n 0`,
    `--seed -1` or `--budget-minutes nan` are refused while the command line is parsed, in one line naming the
    flag and what it accepts."""
    import argparse

    base, *meta = typing.get_args(tp) if typing.get_origin(tp) is Annotated else (tp,)
    rng = next((m for m in meta if isinstance(m, Range)), Range(finite=True))
    kind = "an integer" if base is int else "a finite number" if rng.finite else "a number"
    accepted = f"{kind} {rng}" if str(rng) != "any" else kind

    def parse(text: str):
        try:
            value = base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {kind}; accepted: {accepted}") from None
        if (base is float and rng.finite and not math.isfinite(value)) or value not in rng:
            raise argparse.ArgumentTypeError(f"{text} is out of range; accepted: {accepted}")
        return value

    parse.__name__ = base.__name__  # argparse names the type in its own messages
    return parse


def parse_override(text: str) -> tuple[list[str], object]:
    """'train.lr=3e-4' -> (['train', 'lr'], 3e-4). Values are read as YAML scalars."""
    if not isinstance(text, str):
        raise ConfigError(f"override {text!r} must be a string key=value, e.g. train.iterations=10")
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


def _recipe_text(path: Path) -> str:
    """A recipe file's text; a file that is not UTF-8 text (an image, a binary) is refused naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"recipe {path} is not a text file (byte {e.start} is not UTF-8); accepted: a YAML "
                          f"recipe or a run's recipe.json") from None


def load_recipe_dict(name_or_path: str) -> dict:
    """A recipe by name (visalign/recipes/NAME.yaml), a YAML file, or a run's resolved recipe: RUN/recipe.json
    (what `visalign train` wrote; it builds the same recipe again) or the run folder RUN itself."""
    path = Path(name_or_path)
    if path.is_dir() and (path / "recipe.json").is_file():
        path = path / "recipe.json"
    if path.suffix == ".json" and path.is_file():
        try:
            data = json.loads(_recipe_text(path))
        except json.JSONDecodeError as e:
            raise ConfigError(f"recipe {path} is not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"recipe {path} holds a {type(data).__name__} at the top level; accepted: a run's "
                              f"recipe.json (a mapping of keys)")
        data.setdefault("name", path.parent.name if path.name == "recipe.json" else path.stem)
        return data
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown recipe '{name_or_path}'; available: {', '.join(recipe_names())} (or a YAML file, "
                          f"a run's recipe.json or its run folder)")
    try:
        data = yaml.safe_load(_recipe_text(path))
    except yaml.YAMLError as e:  # the line and what YAML expected there, on one line
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"recipe {path} is not valid YAML{where}: {what}") from None
    if data is None:  # an empty file (or only comments) would silently run every default
        raise ConfigError(f"recipe {path} is empty; accepted: a mapping of keys (kind: train, model: ..., "
                          f"train: {{...}})")
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} holds a {type(data).__name__} at the top level; accepted: a mapping of "
                          f"keys (kind: train, model: ..., train: {{...}})")
    data.setdefault("name", path.stem)
    return data


OPTIMIZERS = ("adamw", "adamw8bit")  # train.optimizer (trainer/memory.py)


@dataclass(frozen=True)
class TrainConfig:
    """The RL loop. One iteration = sample `batch_size` images (batch_size / group_size prompts, each
    `group_size` times), score them, compute advantages over the whole (all-process) batch, then
    `epochs` passes of `minibatches` optimizer steps each."""

    iterations: PositiveInt = 20
    batch_size: PositiveInt = 64  # images per iteration, over all processes
    group_size: PositiveInt = 8  # images per prompt (GRPO's group)
    epochs: PositiveInt = 1  # passes over one rollout batch
    minibatches: PositiveInt = 1  # optimizer steps per pass; the batch is split into this many parts
    lr: PositiveFloat = 1e-4
    lr_schedule: str = "constant"  # constant | cosine (over `iterations`, after warmup; math/schedules.py: lr_factor)
    warmup_iterations: NonNegativeInt = 0
    weight_decay: NonNegativeFloat = 0.0
    adam_betas: tuple[DecayFloat, DecayFloat] = (0.9, 0.999)
    grad_clip: PositiveFloat = 1.0  # max global gradient norm (clip_grad_norm_: 0 would zero every update)
    ema_decay: float = 0.0  # > 0: an EMA of the trained weights (this decay per optimizer step), which evaluation,
    # the report and export use; the rollouts keep the raw weights. 0 = off
    step_chunk: NonNegativeInt = 0  # trained steps per network forward (0: all of a minibatch's at once; 1-4 for big
    # models)
    micro_batch: NonNegativeInt = 0  # samples per network forward in updates (0: the whole minibatch; gradients
    # accumulate)
    compile: bool = False  # torch.compile the trained network (static shapes, one graph per batch shape; the first
    # iteration pays the compilation). For fixed-shape denoisers (UNet, DiT); token models' growing caches recompile
    compile_backend: str = "inductor"  # torch.compile's backend (aot_eager: trace only, to debug a graph)
    finetune: str = "lora"  # lora | full
    lora_rank: PositiveInt = 8
    lora_alpha: PositiveFloat = 8.0
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out")
    eval_every: PositiveInt = 5  # iterations between held-out evaluations (also before the first and after the last)
    eval_per_category: PositiveInt = 50
    eval_seed: NonNegativeInt = 0
    checkpoint_every: PositiveInt = 5
    seed: NonNegativeInt = 0
    curriculum: str = "uniform"  # uniform | variance: draw categories where groups disagree (trainer.PromptSampler)
    shared_initial_noise: bool = False  # a group starts from one noise; its samples differ only by SDE noise
    keep_best_worst: NonNegativeInt = 0  # k > 0: update on each group's k best and k worst samples only, after
    # advantages over the whole group (DanceGRPO's best-of-N: a larger group for the baseline, 2k samples' update cost)
    diagnose_every: NonNegativeInt = 10  # iterations between gradient-signal diagnostics (0: never); see
    # trainer/diagnostics.py
    min_signal_share: UnitFloat = 0.5  # warn when the run's accumulated update is estimated to be less signal than this
    max_bad_updates: PositiveInt = 3  # consecutive updates skipped for a NaN/inf loss or reward before the run stops
    budget_nfe: NonNegativeInt = 0  # stop (evaluate, checkpoint) once training has used this many network
    # evaluations; 0 = off
    budget_minutes: NonNegativeFloat = 0.0  # stop once training wall time (evaluation excluded) passes this; 0 = off
    eval_every_nfe: NonNegativeInt = 0  # also evaluate each time training's network evaluations pass a multiple of this
    # the distributed engine (visalign/distributed.py: accelerate)
    mixed_precision: str | bool = ""  # no | bf16 | fp16: the network's forwards under autocast (fp32 master weights, fp32
    # step math and log-probs); "" = as launched (accelerate launch --mixed_precision). Set in both, they must agree
    # (the recipe's wins over the launcher's default no). fp16 (with a grad scaler) needs a GPU
    fsdp: bool = False  # shard the trained network with FSDP2 per block over the processes (also accelerate launch
    # --use_fsdp); full fine-tuning or LoRA; a no-op in one process (visalign/distributed.py)
    # where metrics also go, beside RUN/metrics.jsonl (always written): accelerate's experiment trackers, one name, a
    # comma-separated string or a list: tensorboard (RUN/tb: scalars, each evaluation's sample grid, the recipe as
    # hparams + text) | wandb (files in RUN/wandb; WANDB_MODE=offline works without an account) | comet_ml | aim |
    # mlflow | clearml | dvclive | swanlab | trackio | all (every installed one) | none. The package must be installed
    report_to: str | tuple[str, ...] = "tensorboard"
    # memory and checkpoints
    gradient_checkpointing: bool = False  # recompute the trained network's activations in the backward instead of
    # keeping them (the backbone's own: diffusers' enable_gradient_checkpointing, the built-ins' blocks): less memory
    # per update for one more forward of the network; results unchanged. May be switched on or off when resuming
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes' AdamW8bit: ~1/4 of AdamW's state memory; install
    # bitsandbytes yourself, it is not a dependency). Same lr, adam_betas and weight_decay
    keep_checkpoints: int = 1  # how many of the newest RUN/checkpoints/iter-N folders to keep (older ones are removed)

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
        if self.finetune == "lora" and not self.lora_targets:
            raise ConfigError("train.lora_targets is empty; accepted: the names of the layers LoRA adapts, e.g. "
                              "[to_q, to_k, to_v, to_out] (or train.finetune=full)")
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
        if self.mixed_precision is False:  # YAML reads an unquoted `no` as false
            object.__setattr__(self, "mixed_precision", "no")
        if self.mixed_precision not in ("", "no", "bf16", "fp16"):
            raise ConfigError(f"train.mixed_precision '{self.mixed_precision}' is not one of no, bf16, fp16")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"train.optimizer '{self.optimizer}' is not one of {', '.join(OPTIMIZERS)}")
        if self.keep_best_worst and not 2 * self.keep_best_worst < self.group_size:
            raise ConfigError(f"train.keep_best_worst={self.keep_best_worst} keeps 2 x {self.keep_best_worst} of a group of "
                              f"{self.group_size}; accepted: 0 (all) or k with 2k < train.group_size")
        if self.keep_best_worst and (self.batch_size // self.group_size * 2 * self.keep_best_worst) % self.minibatches:
            raise ConfigError(f"train.keep_best_worst={self.keep_best_worst} keeps {self.batch_size // self.group_size * 2 * self.keep_best_worst} "
                              f"samples per iteration, which train.minibatches={self.minibatches} does not divide")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"train.keep_checkpoints must be >= 1 (the newest checkpoint is always kept), got "
                              f"{self.keep_checkpoints}")


@dataclass(frozen=True)
class EvalConfig:
    """The held-out evaluation's sampler and its judges (visalign/monitor.py)."""

    steps: PositiveInt | None = None  # None: the model's default
    guidance: float | None = None
    # rewards the run does not train on that score the held-out samples beside the training reward, as reward
    # specs ('geneval_s_learned', 'ocr?psm=8&preprocess=otsu-crop'); None: the prompt set's defaults; []: none
    judges: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CompareConfig:
    """How `visalign compare` uses this recipe (visalign/compare.py): as the starting point (sampler, learning rate,
    batch) of the algorithms listed, on the recipe's own model, and with `any_model` also on a model that no recipe
    of the algorithm is written for. A bundled recipe with this block joins compare; nothing else lists them."""

    algorithms: tuple[str, ...] = ()  # the algorithms compare may start from this recipe (its own, and others that
    # share its sampler and learning rate, e.g. [ddpo, dpok]); [] = compare does not use this recipe
    any_model: bool = False  # also on models no recipe of these algorithms is written for (at most one such recipe
    # per algorithm; its sampler is carried over to the model's family)

    def __post_init__(self):
        if self.any_model and not self.algorithms:
            raise ConfigError("compare.any_model needs compare.algorithms: the algorithms compare starts from here")


@dataclass(frozen=True)
class TrainRecipe:
    name: str
    description: str = ""
    model: str = "builtin:shapes-flow"
    # options of the model spec, as after its '?' (e.g. {local_files_only: false}: let diffusers download a hub id)
    model_options: dict = field(default_factory=dict)
    prompts: str = "geneval-s"  # prompt set: geneval-s | animals | file:PATH (visalign/prompts.py)
    reward: str = "geneval_s"
    reward_options: dict = field(default_factory=dict)
    algorithm: str = "grpo"
    algorithm_options: dict = field(default_factory=dict)
    sampling: dict = field(default_factory=dict)  # the policy's rollout sampler (FlowSampling / DiffusionSampling fields)
    data: str = ""  # offline algorithms (diffusion_dpo): a pairs dataset directory made by `visalign make-pairs`
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)  # what `visalign compare` starts from this recipe
