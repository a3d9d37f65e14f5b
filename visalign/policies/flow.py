"""FlowPolicy: a velocity-model adapter + the flow step math = a policy over denoising chains.

`sample()` and `log_prob()` call the same `_step()` (model forward + CFG + `flow_sde_step`), so a
log-prob recomputed right after sampling equals the rollout's (the PPO ratio is exactly 1 on-policy).
Noise is drawn per sample from its own seed, so a sample does not depend on what else is in the batch
(or on which process drew it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..math.sde import FLOW_KINDS, StepOutput, flow_sde_step, sigma_schedule
from ..types import StepLogProb, Trajectory


@dataclass(frozen=True)
class FlowSampling:
    steps: int = 20
    guidance_scale: float = 1.0  # 1 = no classifier-free guidance
    kind: str = "ode"  # flow | dance | cps | ode
    noise_level: float = 0.7
    shift: float = 1.0  # SD3 time shift of the sigma schedule
    sde_window: tuple[int, int] | None = None  # steps [start, end) that are stochastic; None = all

    def __post_init__(self):
        if self.kind not in FLOW_KINDS:
            raise ValueError(f"unknown step kind '{self.kind}'; accepted: {', '.join(FLOW_KINDS)}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.sde_window is not None:
            a, b = self.sde_window
            if not 0 <= a < b <= self.steps:
                raise ValueError(f"sde_window {self.sde_window} must satisfy 0 <= start < end <= steps ({self.steps})")


def per_sample_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """[B, *shape] standard normal noise, row b drawn from its own generator seeded with seeds[b]."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


class FlowPolicy:
    """adapter: encode(prompts) -> cond; velocity(x, sigma [B], cond) -> v; decode(x) -> images in [-1, 1];
    latent_shape; and cond slicing / concatenation (cond[idx], type(cond).cat([...]))."""

    def __init__(self, adapter, sampling: FlowSampling = FlowSampling()):
        self.adapter = adapter
        self.sampling = sampling

    def eval_sampling(self, steps: int | None = None, guidance: float | None = None) -> FlowSampling:
        """The deterministic sampler evaluation uses, with the model's own defaults."""
        return FlowSampling(steps=steps or self.adapter.default_steps, kind="ode",
                            guidance_scale=self.adapter.default_guidance if guidance is None else guidance)

    def stochastic_mask(self, sampling: FlowSampling | None = None) -> torch.Tensor:
        """[T] bool: which steps are drawn from the SDE (and carry a log-prob)."""
        s = sampling or self.sampling
        mask = torch.full((s.steps,), s.kind != "ode")
        if s.sde_window is not None:
            mask[:] = False
            mask[s.sde_window[0] : s.sde_window[1]] = s.kind != "ode"
        if s.kind == "cps":
            mask[-1] = False  # CPS's std is sigma_next sin(.), 0 on the step to sigma = 0
        return mask

    def guided_velocity(self, x, sigma, cond, uncond, guidance_scale: float) -> torch.Tensor:
        """v = v_u + w (v_c - v_u). x [B, ...]; sigma [B]. The unconditional branch never carries
        gradients (Flow-GRPO detaches it), and sampling and scoring run the very same two forwards, so
        their numbers agree to the bit."""
        v_c = self.adapter.velocity(x, sigma, cond).float()
        if guidance_scale == 1.0 or uncond is None:
            return v_c
        with torch.no_grad():
            v_u = self.adapter.velocity(x, sigma, uncond).float()
        return v_u + guidance_scale * (v_c - v_u)

    def _step(self, x, i, sigmas, cond, uncond, sampling: FlowSampling, stochastic: bool,
              noise=None, prev_sample=None) -> StepOutput:
        """The one step function: forward + CFG + the step math, for step i (sigmas[i] -> sigmas[i+1])."""
        b = x.shape[0]
        sig = sigmas[i].expand(b)
        v = self.guided_velocity(x, sig, cond, uncond, sampling.guidance_scale)
        first_below_1 = float(sigmas[sigmas < 1].max()) if bool((sigmas < 1).any()) else 0.999
        return flow_sde_step(
            x, v, sigmas[i], sigmas[i + 1],
            noise_level=sampling.noise_level, kind=sampling.kind if stochastic else "ode",
            noise=noise, prev_sample=prev_sample, sigma_max=first_below_1,
        )

    def conditions(self, prompts: list[str], guidance_scale: float):
        cond = self.adapter.encode(prompts)
        if guidance_scale == 1.0:
            return cond, None
        with torch.no_grad():
            return cond, self.adapter.encode([""] * len(prompts))

    @torch.no_grad()
    def sample(self, prompts: list[str], seeds: list[int], sampling: FlowSampling | None = None,
               init_seeds: list[int] | None = None) -> Trajectory:
        """Sample chains. Sample b's noise comes from seeds[b]; with `init_seeds`, its starting noise x_1
        comes from init_seeds[b] instead (a group can share its start and differ only in the SDE noise)."""
        s = sampling or self.sampling
        sigmas = sigma_schedule(s.steps, s.shift)
        mask = self.stochastic_mask(s)
        noise = per_sample_noise(seeds, (s.steps + 1, *self.adapter.latent_shape))  # [B, T+1, C, H, W]
        if init_seeds is not None:
            noise[:, 0] = per_sample_noise(init_seeds, tuple(self.adapter.latent_shape))
        cond, uncond = self.conditions(prompts, s.guidance_scale)
        x = noise[:, 0]
        states, log_probs = [x], []
        for i in range(s.steps):
            out = self._step(x, i, sigmas, cond, uncond, s, bool(mask[i]), noise=noise[:, i + 1])
            x = out.prev_sample
            states.append(x)
            log_probs.append(out.log_prob)
        return Trajectory(
            prompts=list(prompts), seeds=list(seeds), states=torch.stack(states, 1), log_probs=torch.stack(log_probs, 1),
            sigmas=sigmas, stochastic=mask, images=self.adapter.decode(x), extras={"sampling": s},
        )

    def noised_sample(self, traj: Trajectory, draw: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward-noise each final sample for a flow-matching loss (likelihood-free algorithms):
        x_t = (1 - t) x0 + t eps, target = eps - x0, with t ~ U(0, 1) and eps drawn from the sample's own
        seed and `draw`, so the draw does not depend on the batch or the process.
        -> x_t [B, C, H, W], t [B], target [B, C, H, W]."""
        x0 = traj.states[:, -1]  # [B, C, H, W]
        gens = [torch.Generator().manual_seed(int(np.random.default_rng([int(s), int(draw)]).integers(2**62)))
                for s in traj.seeds]
        t = torch.stack([torch.rand((), generator=g) for g in gens]).clamp(1e-3, 1 - 1e-3)  # [B]
        eps = torch.stack([torch.randn(tuple(x0.shape[1:]), generator=g) for g in gens]).to(x0)  # [B, C, H, W]
        tt = t.to(x0)[:, None, None, None]
        return (1 - tt) * x0 + tt * eps, t.to(x0), eps - x0

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """The conditional velocity (no guidance), fp32: what likelihood-free algorithms train."""
        return self.adapter.velocity(x, sigma, self.adapter.encode(prompts)).float()

    def log_prob(self, traj: Trajectory, step: int, sampling: FlowSampling | None = None) -> StepLogProb:
        """Recompute step `step` of traj under the current parameters (gradients flow)."""
        s = sampling or traj.extras.get("sampling", self.sampling)
        cond, uncond = self.conditions(traj.prompts, s.guidance_scale)
        out = self._step(traj.states[:, step], step, traj.sigmas, cond, uncond, s, bool(traj.stochastic[step]),
                         prev_sample=traj.states[:, step + 1])
        return StepLogProb(out.log_prob, out.mean, out.std)
