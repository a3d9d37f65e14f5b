"""The Reward interface and its registry. Every reward's input is checked once, here, on its way in (see
`check_input`): a subclass's __call__ is wrapped when the class is made, so combine, remote, the learned rewards
and a user's own all refuse the same malformed batches with the same one-line message."""

from __future__ import annotations

import functools

import torch

from ..config import check_options
from ..registry import Registry, is_module_spec, split_spec
from ..types import RewardOutput


def _reward_factory(obj) -> str | None:
    """What REWARDS holds: a Reward subclass or a function that builds one (a Reward instance is not a factory)."""
    if isinstance(obj, Reward):
        return f"is a {type(obj).__name__} instance; name its class or a function that returns one"
    if isinstance(obj, type):
        return None if issubclass(obj, Reward) else f"is the class {obj.__name__}, not a visalign.rewards.Reward subclass"
    return None if callable(obj) else f"is a {type(obj).__name__}, not a Reward subclass or a function returning a Reward"


REWARDS = Registry("reward", check=_reward_factory)
ACCEPTED = "[B, 3, H, W] float in [-1, 1]"
VIDEO_ACCEPTED = "[B, F, 3, H, W] float in [-1, 1]"  # what a reward with `video = True` reads: B videos of F frames
# Decoders clamp to [-1, 1]; a resize or a finite-difference step may overshoot by a hair. 1e-2 is ~1.3 grey
# levels: far below [0, 255] images or an unclamped decoder, which would be silently clamped by most rewards.
RANGE_TOLERANCE = 1e-2


class RewardInputError(ValueError):
    """Images or prompts a reward does not accept (one line: what was given, what is accepted)."""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _shape(x: torch.Tensor) -> str:
    return "[" + ", ".join(str(d) for d in x.shape) + "]"


def check_input(name: str, images, prompts, video: bool = False) -> torch.Tensor | None:
    """Refuse a batch a reward would silently misread: not [B, 3, H, W] (channels last dies in OpenCV, a missing
    batch dim scores one image), not float (uint8 would be clamped to black and white), values outside [-1, 1]
    ([0, 255] would be clamped), a prompt count that is not B (zip() would score fewer images). A video reward
    (`video=True`) reads [B, F, 3, H, W] instead; an image reward given videos is refused with the way to lift it
    (per_frame), a video reward given images with the way to make one-frame videos. -> the [B] bool mask of
    images (videos) holding NaN or inf, None when every one is finite. Reads only a detached copy: the images of a
    differentiable reward keep their graph."""
    accepted, item = (VIDEO_ACCEPTED, "video") if video else (ACCEPTED, "image")
    if not isinstance(images, torch.Tensor):
        raise RewardInputError(f"reward {name}: got {item}s of type {type(images).__name__}; accepted: a torch "
                               f"tensor {accepted}")
    shape = _shape(images)
    if not video and images.ndim == 5:
        raise RewardInputError(f"reward {name}: got videos of shape {shape}; it judges images, accepted: {ACCEPTED}; "
                               f"lift it to videos with per_frame (reward: per_frame, reward_options: "
                               f"{{reward: {name}}})")
    if video and images.ndim == 4 and images.shape[1] == 3:
        raise RewardInputError(f"reward {name}: got images of shape {shape}; it judges videos, accepted: "
                               f"{VIDEO_ACCEPTED} (one-frame videos: images[:, None])")
    ndim, channel_dim = (5, 2) if video else (4, 1)
    if images.ndim != ndim or images.shape[channel_dim] != 3:
        hint = " (channels last?)" if images.ndim == ndim and images.shape[-1] == 3 else ""
        raise RewardInputError(f"reward {name}: got {item}s of shape {shape}{hint}; accepted: {accepted}")
    if not images.shape[-2] or not images.shape[-1] or (video and not images.shape[1]):
        what = "no frames" if video and not images.shape[1] else "no pixels"
        raise RewardInputError(f"reward {name}: got {item}s of shape {shape} ({what}); accepted: {accepted}")
    if not images.is_floating_point():
        raise RewardInputError(f"reward {name}: got {str(images.dtype).removeprefix('torch.')} {item}s; accepted: "
                               f"float in [-1, 1] (uint8 {item}s / 127.5 - 1)")
    n = images.shape[0]
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or len(prompts) != n:
        got = f"{_plural(len(prompts), 'prompt')}" if isinstance(prompts, (list, tuple)) else \
            f"prompts of type {type(prompts).__name__}"
        raise RewardInputError(f"reward {name}: got {_plural(n, item)} and {got}; accepted: a list of one "
                               f"prompt per {item}")
    odd = next((p for p in prompts if not isinstance(p, str)), None)
    if odd is not None or any(not isinstance(p, str) for p in prompts):
        raise RewardInputError(f"reward {name}: got a prompt of type {type(odd).__name__} ({odd!r:.40}); accepted: "
                               f"a list of one prompt string per {item}")
    with torch.no_grad():
        x = images.detach()
        finite = torch.isfinite(x).flatten(1).all(1)  # [B]
        if x.numel() and bool(finite.any()):
            lo, hi = (float(v) for v in torch.aminmax(x if bool(finite.all()) else x[finite]))  # no copy when finite
            if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
                hint = f" ([0, 255]? {item}s / 127.5 - 1)" if lo > -RANGE_TOLERANCE and hi > 2 else ""
                raise RewardInputError(f"reward {name}: got values in [{lo:.4g}, {hi:.4g}]{hint}; accepted: "
                                       f"{accepted} (within {RANGE_TOLERANCE:g})")
    return None if bool(finite.all()) else ~finite


def _nan_where(out: RewardOutput, bad: torch.Tensor) -> RewardOutput:
    """The output with NaN for the images marked bad ([B] bool), in the scores and in every [B] float detail:
    a NaN image never gets a finite score, so the trainer's non-finite-reward guard skips the update."""
    def mask(v):
        if not isinstance(v, torch.Tensor) or v.shape != bad.shape:
            return v
        v = v if v.is_floating_point() else v.float()
        return torch.where(bad.to(v.device), torch.full_like(v, float("nan")), v)  # out of place: keeps autograd

    return RewardOutput(mask(out.scores), {k: mask(v) for k, v in out.details.items()})


def _checked(call):
    """Wrap a reward's __call__: check the input (images, or videos for a reward with `video = True`), score NaN/inf
    images as NaN (the reward itself sees a grey image or video in their place, so no reward has to survive NaN
    pixels), and check one score per image comes back."""
    @functools.wraps(call)
    def wrapper(self, images, prompts, *args, **kwargs):
        bad = check_input(self.name, images, prompts, bool(getattr(self, "video", False)))
        if bad is not None:
            mask = bad.to(images.device).view(-1, *[1] * (images.ndim - 1))
            images = torch.where(mask, torch.zeros_like(images), images)
        out = call(self, images, prompts, *args, **kwargs)
        scores = getattr(out, "scores", None)
        if not isinstance(scores, torch.Tensor) or scores.shape != (images.shape[0],):
            got = f"scores of shape {list(scores.shape)}" if isinstance(scores, torch.Tensor) else type(out).__name__
            raise ValueError(f"reward {self.name}: returned {got} for {_plural(images.shape[0], 'image')}; "
                             f"expected a RewardOutput with scores [B]")
        return out if bad is None else _nan_where(out, bad)

    wrapper.checks_input = True
    return wrapper


class Reward:
    """Scores a batch of images: `reward(images [B, 3, H, W] in [-1, 1], prompts [B], metadata) -> RewardOutput`.

    Subclasses declare what they can do, so algorithms can refuse early: `differentiable` (gradients flow from
    scores to images), `needs_text`, `value_range`. Learned rewards hold their networks as nn.Module
    attributes; `to(device)` moves every one of them and sets `device`, where they move the images to.
    `metadata` may carry the trainer's grouping: "group_size" and "group_ids" [B] (samples of one prompt).
    A subclass's __call__ only ever sees finite [B, 3, H, W] float images in [-1, 1] with B prompts: the class is
    wrapped when it is made (check_input); it returns one score per image. A reward that judges videos sets
    `video = True` and then only ever sees [B, F, 3, H, W] (F frames in order), one score per video; an image
    reward given videos is refused, and `per_frame` lifts it to videos (rewards/video.py)."""

    name: str = "reward"
    video: bool = False
    differentiable: bool = False
    needs_text: bool = True
    value_range: tuple[float, float] = (0.0, 1.0)
    device: torch.device = torch.device("cpu")

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: dict | None = None) -> RewardOutput:
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs):
        """Every reward class's own __call__ goes through the one input check (_checked)."""
        super().__init_subclass__(**kwargs)
        call = cls.__dict__.get("__call__")
        if call is not None and not getattr(call, "checks_input", False):
            cls.__call__ = _checked(call)

    def to(self, device: str | torch.device) -> "Reward":
        self.device = torch.device(device)
        for v in vars(self).values():
            if isinstance(v, (torch.nn.Module, Reward)):
                v.to(self.device)
        return self


def load_reward(name: str, **options) -> Reward:
    """The registered reward `name` built with `options`, each typed from the factory's signature (dense=maybe,
    quality=abc, a NaN number, an unknown name: one ConfigError line naming what is accepted)."""
    factory = REWARDS.get(name)
    options = check_options(factory, options, f"reward '{name}'")
    try:
        reward = factory(**options)
    except TypeError as e:
        raise ValueError(f"reward '{name}' does not take options {sorted(options)}: {e}") from None
    if is_module_spec(name) and not isinstance(reward, Reward):  # a `module:function` is known by what it returns
        raise ValueError(  # noqa: TRY004 - a recipe's mistake: the CLI prints ValueErrors as one line
            f"reward '{name}' returned a {type(reward).__name__}, not a visalign.rewards.Reward")
    return reward


def load_reward_spec(spec: str) -> Reward:
    """'name' or 'name?key=value&...' (the option syntax of model specs) -> the reward: how judges and
    `visalign eval --reward` name a reward with its options, e.g. 'geneval_s?exact=true'."""
    name, options = split_spec(spec)
    return load_reward(name, **options)
