"""DiffusionPolicy: an epsilon / v / sample-prediction adapter + the DDIM step with eta > 0 (`ddim_step`,
docs/architecture.md#ddim-with-eta) = a policy over denoising chains, as DDPO (Black et al., 2023,
arXiv 2305.13301) and DPOK (Fan et al., 2023, arXiv 2305.16381) train it. The shared sampling/scoring loop is in denoising.py.

Beyond the common adapter interface, a diffusion adapter gives:
  prediction_type                    epsilon | v_prediction | sample
  schedule(steps) -> (timesteps [T], alpha_bars [T+1])   the network time of each step and the
                                     alpha_bar of every state (noisiest first; the last is where it ends)
  forward_noise(u [B]) -> (timesteps [B], alpha_bars [B])  a training-time draw, u in (0, 1), 1 = noise
  clip_sample                        None, or c: x0_hat is clamped to [-c, c] (pixel-space models)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..math.sde import StepOutput, ddim_step, predicted_x0_eps
from ..protocols import optional
from .denoising import DenoisingPolicy, check_sampling, draw_generators

DIFFUSION_KINDS = ("ddim", "ode")


@dataclass(frozen=True)
class DiffusionSampling:
    steps: int = 20
    guidance_scale: float = 1.0  # 1 = no classifier-free guidance
    kind: str = "ddim"  # ddim (stochastic, eta > 0) | ode (deterministic DDIM, eta = 0)
    eta: float = 1.0  # DDIM's eta: 1 = DDPM's posterior std (DDPO's default)
    sde_window: tuple[int, int] | None = None  # steps [start, end) that are stochastic; None = all

    def __post_init__(self):
        check_sampling(self, DIFFUSION_KINDS)
        if self.kind == "ddim" and not 0 < self.eta <= 1:
            raise ValueError(f"eta must be in (0, 1] for kind ddim, got {self.eta}; use kind ode for eta = 0")


class DiffusionPolicy(DenoisingPolicy):
    Sampling = DiffusionSampling
    STOCHASTIC_KINDS = ("ddim",)

    def schedule(self, s) -> dict:
        timesteps, alpha_bars = self.adapter.schedule(s.steps)  # [T], [T+1]
        # the noise std of each state, ~1 -> 0, the flow family's sigma
        return {"sigmas": (1 - alpha_bars).clamp_min(0).sqrt(), "timesteps": timesteps, "alpha_bars": alpha_bars}

    def stochastic_mask(self, sampling=None) -> torch.Tensor:
        """Stochastic steps of the kind and window, less those whose posterior variance is 0 (a step onto
        alpha_bar = 1 is deterministic whatever eta, and has no log-prob)."""
        s = sampling or self.sampling
        ab = self.adapter.schedule(s.steps)[1]
        var = (1 - ab[1:]) / (1 - ab[:-1]) * (1 - ab[:-1] / ab[1:])  # [T]
        return super().stochastic_mask(s) & (var > 1e-12)

    def model_time(self, sched, i):
        return sched["timesteps"][i]

    def _step_math(self, x, i, pred, sched, s, stochastic, noise, prev_sample) -> StepOutput:
        ab = sched["alpha_bars"]
        return ddim_step(x, pred, ab[i], ab[i + 1], eta=s.eta if stochastic else 0.0,
                         prediction_type=self.adapter.prediction_type, noise=noise, prev_sample=prev_sample,
                         clip_sample=optional(self.adapter, "clip_sample"))

    def _x0_math(self, x, i, pred, sched):
        x0, _ = predicted_x0_eps(x, pred, sched["alpha_bars"][i], self.adapter.prediction_type)
        c = optional(self.adapter, "clip_sample")
        return x0.clamp(-c, c) if c else x0

    def _noise_to(self, x0, i, sched, eps):
        ab = float(sched["alpha_bars"][i])
        return ab**0.5 * x0 + (1 - ab) ** 0.5 * eps

    def noised_sample(self, traj, draw: int):
        """x_t = sqrt(ab) x0 + sqrt(1 - ab) eps at a per-sample u ~ U(0, 1) drawn from the sample's seed and
        `draw`; the target is what the adapter predicts there (eps, v = sqrt(ab) eps - sqrt(1 - ab) x0, or x0).
        -> x_t [B, ...], t [B] (network time), target [B, ...]."""
        x0 = traj.states[:, -1]  # [B, C, H, W]
        gens = draw_generators(traj.seeds, draw)
        u = torch.stack([torch.rand((), generator=g) for g in gens]).clamp(1e-3, 1 - 1e-3)  # [B]
        eps = torch.stack([torch.randn(tuple(x0.shape[1:]), generator=g) for g in gens]).to(x0)
        t, ab = self.adapter.forward_noise(u)
        a = ab.to(x0).reshape(-1, *([1] * (x0.dim() - 1)))  # [B, 1, 1, 1]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        target = {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0,
                  "sample": x0}[self.adapter.prediction_type]
        return x_t, t.to(x0), target
