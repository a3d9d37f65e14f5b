"""FlowPolicy: a velocity-model adapter + the flow step math (`flow_sde_step`, docs/architecture.md#flow-sde,
#dance-and-cps) = a policy over denoising chains (the shared sampling/scoring loop is in denoising.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import NonNegativeFloat, PositiveFloat
from ..math.sde import FLOW_KINDS, StepOutput, flow_sde_step, sigma_schedule
from ..protocols import optional
from .denoising import DenoisingPolicy, check_sampling, draw_generators


@dataclass(frozen=True)
class FlowSampling:
    steps: int = 20
    guidance_scale: float = 1.0  # 1 = no classifier-free guidance
    kind: str = "ode"  # flow | dance | cps | ode
    noise_level: NonNegativeFloat = 0.7  # ranges: checked where recipes and model specs are parsed (config.build)
    shift: PositiveFloat | None = None  # SD3 time shift of the sigma schedule; None: the model's own (ours 1, SD3 3)
    sde_window: tuple[int, int] | None = None  # steps [start, end) that are stochastic; None = all

    def __post_init__(self):
        check_sampling(self, FLOW_KINDS)


def stretch_to_terminal(sigmas: torch.Tensor, terminal: float | None) -> torch.Tensor:
    """A schedule [T+1] (the last sigma 0) whose sigmas before the last are stretched so that the last of them is
    `terminal`, as diffusers' FlowMatchEulerDiscreteScheduler does with `shift_terminal` (LTX-Video's schedulers):
    1 - sigma is scaled by (1 - terminal) / (1 - sigma_{T-1}). None (or a one-step schedule): unchanged."""
    if not terminal or len(sigmas) < 3:
        return sigmas
    one_minus = 1 - sigmas[:-1]
    return torch.cat([1 - one_minus / (one_minus[-1] / (1 - terminal)), sigmas[-1:]])


class FlowPolicy(DenoisingPolicy):
    """adapter.predict(x, sigma [B], cond) is the velocity v = x1 - x0 of x_sigma = (1 - sigma) x0 + sigma x1."""

    Sampling = FlowSampling
    STOCHASTIC_KINDS = ("flow", "dance", "cps")

    def stochastic_mask(self, sampling=None) -> torch.Tensor:
        s = sampling or self.sampling
        mask = super().stochastic_mask(s)
        if s.kind == "cps":
            mask[-1] = False  # CPS's std is sigma_next sin(.), 0 on the step to sigma = 0
        return mask

    def schedule(self, s) -> dict:
        shift = s.shift if s.shift is not None else optional(self.adapter, "default_shift")
        sigmas = stretch_to_terminal(sigma_schedule(s.steps, shift), getattr(self.adapter, "shift_terminal", None))
        first_below_1 = float(sigmas[sigmas < 1].max()) if bool((sigmas < 1).any()) else 0.999
        return {"sigmas": sigmas, "sigma_max": first_below_1}

    def model_time(self, sched, i):
        return sched["sigmas"][i]

    def _step_math(self, x, i, pred, sched, s, stochastic, noise, prev_sample) -> StepOutput:
        sigmas = sched["sigmas"]  # i [R]: sigmas[i] -> sigmas[i + 1] per row
        return flow_sde_step(
            x, pred, sigmas[i], sigmas[i + 1],
            noise_level=s.noise_level, kind=s.kind if stochastic else "ode",
            noise=noise, prev_sample=prev_sample, sigma_max=sched["sigma_max"],
        )

    def _x0_math(self, x, i, pred, sched):
        sigma = sched["sigmas"][i].to(x).view(-1, *([1] * (x.dim() - 1)))  # [R, 1, ...]
        return x - sigma * pred  # x_sigma = (1 - sigma) x0 + sigma x1 and v = x1 - x0

    def _noise_to(self, x0, i, sched, eps):
        s = float(sched["sigmas"][i])
        return (1 - s) * x0 + s * eps

    def noised_sample(self, traj, draw: int):
        """x_t = (1 - t) x0 + t eps, target = eps - x0, with t ~ U(0, 1) and eps drawn from the sample's own
        seed and `draw`. -> x_t [B, ...], t [B], target [B, ...] (latents of any shape: [C, H, W], a video's
        [C, F, H, W])."""
        x0 = traj.states[:, -1]  # [B, ...]
        gens = draw_generators(traj.seeds, draw)
        t = torch.stack([torch.rand((), generator=g) for g in gens]).clamp(1e-3, 1 - 1e-3)  # [B]
        eps = torch.stack([torch.randn(tuple(x0.shape[1:]), generator=g) for g in gens]).to(x0)  # [B, ...]
        tt = t.to(x0).view(-1, *([1] * (x0.dim() - 1)))  # [B, 1, ...]
        return (1 - tt) * x0 + tt * eps, t.to(x0), eps - x0
