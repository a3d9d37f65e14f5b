"""The interfaces the trainer, policies and algorithms call, written down as `typing.Protocol`s: what a model
adapter, a policy, a reward and an algorithm must have (docs/architecture.md#policies, docs/extending.md).

Nothing has to inherit from these: an object satisfies a protocol by having its members, and the
`runtime_checkable` ones can be checked with `isinstance` (which looks at names only, not signatures). Members
an adapter MAY have are not in the protocols but in OPTIONAL_ADAPTER_MEMBERS, with the default that stands in
when one is absent; `optional(adapter, name)` reads them."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from .types import RewardOutput, StepLogProb, Trajectory

# ------------------------------------------------------------------------------------------ model adapters


@runtime_checkable
class ModelAdapter(Protocol):
    """What every trainable model adapter has: its family picks the policy (policies/__init__.py), `module` is the
    nn.Module that LoRA or full fine-tuning trains, and encode / predict / decode are what the policy calls."""

    family: str  # "flow" | "diffusion" | "autoregressive"
    default_guidance: float

    @property
    def module(self) -> torch.nn.Module: ...

    def encode(self, prompts: list[str]) -> Any: ...

    def predict(self, *args, **kwargs) -> Any: ...

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """-> images [B, 3, H, W] in [-1, 1] (a video adapter: videos [B, F, 3, H, W])."""
        ...


@runtime_checkable
class DenoisingAdapter(ModelAdapter, Protocol):
    """A flow or diffusion adapter (policies/denoising.py). flow: predict returns the velocity v = x1 - x0."""

    latent_shape: tuple[int, ...]
    default_steps: int

    def encode(self, prompts: list[str]) -> Any:
        """-> cond: cond[idx] slices it, type(cond).cat([...]) joins."""
        ...

    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """x [B, ...], t [B] -> the network output [B, ...]."""
        ...

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] (videos [B, F, 3, H, W]) in [-1, 1] -> latents [B, ...] (an offline dataset's images)."""
        ...


@runtime_checkable
class DiffusionAdapter(DenoisingAdapter, Protocol):
    """A diffusion adapter adds its noise schedule (policies/diffusion.py)."""

    prediction_type: str  # epsilon | v_prediction | sample

    def schedule(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (timesteps [T], alpha_bars [T+1]) of a `steps`-step sampler."""
        ...

    def forward_noise(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u [B] in (0, 1) -> (the network's time input [B], alpha_bar [B]) of the forward process."""
        ...


@runtime_checkable
class TokenAdapter(ModelAdapter, Protocol):
    """An autoregressive adapter (policies/autoregressive.py, models/ar.py): prompt tokens, then an optional
    layout plan, then image tokens; `config` holds the sampling defaults (temperature, top_k, plan)."""

    config: Any
    prompt_length: int
    plan_length: int
    gen_length: int
    n_plan: int
    offset: int

    def new_cache(self) -> list: ...


# members an adapter may have, and what stands in when it has not
OPTIONAL_ADAPTER_MEMBERS: dict[str, Any] = {
    "default_shift": 1.0,  # flow: SD3's time shift of the sigma schedule
    "clip_sample": None,  # diffusion: clamp x0_hat to [-c, c] (None: no clamp)
    "network_methods": (),  # module methods besides forward that encode() calls (FSDP wraps them)
    "enable_gradient_checkpointing": None,  # train.gradient_checkpointing needs it
    "to": None,  # to(device): move frozen parts (text encoders, VAE) with the network
}


def optional(adapter, name: str):
    """An optional adapter member (OPTIONAL_ADAPTER_MEMBERS), or its stand-in when the adapter has none."""
    return getattr(adapter, name, OPTIONAL_ADAPTER_MEMBERS[name])


ADAPTER_PROTOCOLS = {"flow": DenoisingAdapter, "diffusion": DiffusionAdapter, "autoregressive": TokenAdapter}


def adapter_problem(adapter) -> str | None:
    """What a model adapter lacks of its family's protocol, in words (None: nothing)."""
    family = getattr(adapter, "family", None)
    proto = ADAPTER_PROTOCOLS.get(family)
    if proto is None:
        return f"has no known family (family={family!r}; accepted: {', '.join(ADAPTER_PROTOCOLS)})"
    missing = [m for m in sorted(_members(proto)) if not hasattr(adapter, m)]
    return f"lacks {', '.join(missing)} of a {family} adapter (visalign.protocols.{proto.__name__})" if missing else None


def _members(proto) -> set[str]:
    """The member names of a Protocol (__protocol_attrs__ from Python 3.12, typing's helper before)."""
    attrs = getattr(proto, "__protocol_attrs__", None)
    if attrs is None:
        from typing import _get_protocol_attrs  # type: ignore[attr-defined]

        attrs = _get_protocol_attrs(proto)
    return set(attrs)


# ---------------------------------------------------------------------------------------------- policies


@runtime_checkable
class Policy(Protocol):
    """What the trainer and every algorithm call on a policy (all three families)."""

    Sampling: ClassVar[type]  # the family's frozen sampling config
    STOCHASTIC_KINDS: ClassVar[tuple[str, ...]]
    adapter: Any
    sampling: Any

    def sample(self, prompts: list[str], seeds: list[int], sampling=None, init_seeds: list[int] | None = None,
               latents: torch.Tensor | None = None) -> Trajectory: ...

    def log_prob(self, traj: Trajectory, steps: int | list[int], sampling=None) -> StepLogProb: ...

    def step_kl(self, lp: StepLogProb, ref: StepLogProb) -> torch.Tensor: ...

    def stochastic_mask(self, sampling=None) -> torch.Tensor: ...

    def eval_sampling(self, steps: int | None = None, guidance: float | None = None) -> Any: ...


@runtime_checkable
class DenoisingPolicyProtocol(Policy, Protocol):
    """The network, forward-process and chain methods of the flow and diffusion policies, which likelihood-free
    (nft, rwr, diffusion_dpo) and reward-gradient (refl, draft, alignprop) algorithms call
    (Algorithm.policy_methods names the ones each needs)."""

    def predict(self, x: torch.Tensor, t: torch.Tensor, prompts: list[str]) -> torch.Tensor: ...

    def predict_guided(self, x: torch.Tensor, t: torch.Tensor, prompts: list[str],
                       guidance_scale: float) -> torch.Tensor: ...

    def noised_sample(self, traj: Trajectory, draw: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def denoise(self, traj: Trajectory, start: int, sampling=None, grad_checkpoint: bool = True) -> torch.Tensor: ...

    def predict_x0(self, traj: Trajectory, step: int, sampling=None, x: torch.Tensor | None = None) -> torch.Tensor: ...

    def renoise(self, traj: Trajectory, step: int, draw: int, sampling=None) -> torch.Tensor: ...

    def from_images(self, images: torch.Tensor, prompts: list[str], seeds: list[int]) -> Trajectory: ...


# ----------------------------------------------------------------------------------------------- rewards


@runtime_checkable
class RewardProtocol(Protocol):
    """What the trainer, evaluation and algorithms use of a reward (visalign.rewards.Reward implements it and
    checks every input on its way in: subclass it rather than implement this bare)."""

    name: str
    differentiable: bool  # scores carry gradients to the images (refl, draft, alignprop need it)
    needs_text: bool
    value_range: tuple[float, float]

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: dict | None = None) -> RewardOutput: ...

    def to(self, device: str | torch.device) -> RewardProtocol: ...


# -------------------------------------------------------------------------------------------- algorithms


@runtime_checkable
class AlgorithmProtocol(Protocol):
    """What the trainer calls on an algorithm (visalign.algorithms.Algorithm gives defaults for all but advantages,
    step_loss and signal_loss)."""

    name: str
    config: Any
    needs_log_prob: bool
    offline: bool
    keeps_groups: bool
    policy_methods: tuple[str, ...]

    def check(self, policy, reward, sampling) -> None: ...

    def rollout_sampling(self, sampling, iteration: int, gen: torch.Generator) -> Any: ...

    def advantages(self, rewards: torch.Tensor, prompts: list[str], group_size: int) -> torch.Tensor: ...

    def train_steps(self, traj: Trajectory, gen: torch.Generator) -> list[int]: ...

    def diagnostic_windows(self, traj: Trajectory) -> list[list[int]]: ...

    def step_loss(self, policy, traj: Trajectory, advantages: torch.Tensor, steps: list[int], reference,
                  old=None) -> tuple[torch.Tensor, dict]: ...

    def signal_loss(self, policy, traj: Trajectory, advantages: torch.Tensor, steps: list[int],
                    old=None) -> torch.Tensor: ...

    @property
    def old_ema(self) -> float | None: ...

    @property
    def uses_reference(self) -> bool: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...
