"""Stateless, batched step functions of the samplers that RL trains, in fp32: the flow SDE kinds below and
the DDIM step with eta > 0 of the diffusion family (`ddim_step`, DDPO, Black et al., 2023, arXiv 2305.13301).

A flow model predicts a velocity v for x_sigma = (1 - sigma) x0 + sigma x1 (x1 noise), v = x1 - x0, and
is integrated from sigma = 1 to 0. Every step is a Gaussian x_next ~ N(mean, std^2) (std = 0 for the ODE),
so one function samples a step AND scores a given one: pass `prev_sample` to score it instead of sampling.
Log-probs are means over the non-batch dimensions (as Flow-GRPO), in fp32.

kinds:
  flow  Flow-GRPO (Liu et al., 2025, arXiv 2505.05470), the SDE with the flow's marginals, eq. (9)
  dance DanceGRPO (Xue et al., 2025, arXiv 2505.07818), x + dsigma v - eta^2/2 score dsigma
  cps   coefficient-preserving sampling (Wang et al., 2025, "Coefficients-Preserving Sampling")
  ode   the deterministic Euler step; log_prob is 0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FLOW_KINDS = ("flow", "dance", "cps", "ode")
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class StepOutput:
    prev_sample: torch.Tensor  # [B, ...] the next (less noisy) state, fp32
    log_prob: torch.Tensor  # [B] mean over non-batch dims of log N(prev_sample; mean, std^2)
    mean: torch.Tensor  # [B, ...]
    std: torch.Tensor  # [B, 1, ...] the step's Gaussian std (0 for ode)


def _col(v, x: torch.Tensor) -> torch.Tensor:
    """A scalar or [B] tensor -> [B, 1, 1, ...] broadcastable against x, fp32."""
    v = torch.as_tensor(v, dtype=torch.float32, device=x.device)
    if v.dim() == 0:
        v = v.expand(x.shape[0])
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Mean over non-batch dims of log N(x; mean, std^2). x, mean [B, ...]; std broadcastable. -> [B]"""
    lp = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI  # [B, ...]
    return lp.flatten(1).mean(1)


def _finish(mean, std, noise, prev_sample) -> StepOutput:
    if prev_sample is None:
        if bool((std == 0).all()):
            noise = torch.zeros_like(mean) if noise is None else noise
        if noise is None:
            raise ValueError("pass noise (a tensor like x) to sample a step, or prev_sample to score one")
        prev_sample = mean + std * noise.float()
    prev_sample = prev_sample.float()
    if bool((std == 0).all()):
        log_prob = torch.zeros(mean.shape[0], device=mean.device)
    else:
        log_prob = gaussian_log_prob(prev_sample, mean, std)
    return StepOutput(prev_sample, log_prob, mean, std)


def flow_sde_step(
    x: torch.Tensor,
    velocity: torch.Tensor,
    sigma,
    sigma_next,
    *,
    noise_level: float = 0.7,
    kind: str = "flow",
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
    sigma_max: float | None = None,
) -> StepOutput:
    """One step from sigma to sigma_next < sigma. x, velocity, noise, prev_sample: [B, ...]; sigma,
    sigma_next: float or [B]. `sigma_max` is the first sigma below 1 of the schedule, used in place of
    sigma in the flow kind's 1/(1 - sigma) when sigma == 1 (Flow-GRPO does the same)."""
    if kind not in FLOW_KINDS:
        raise ValueError(f"unknown step kind '{kind}'; accepted: {', '.join(FLOW_KINDS)}")
    x, v = x.float(), velocity.float()
    s, sn = _col(sigma, x), _col(sigma_next, x)  # [B, 1, ...]
    dt = sn - s  # < 0
    a = noise_level
    if kind == "ode" or a == 0:
        return _finish(x + v * dt, torch.zeros_like(s), noise, prev_sample)
    if kind == "flow":
        s_safe = torch.where(s >= 1, _col(sigma_max if sigma_max is not None else 0.999, x), s)
        std_t = a * torch.sqrt(s_safe / (1 - s_safe))  # [B, 1, ...]
        mean = x * (1 + std_t**2 / (2 * s) * dt) + v * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
        std = std_t * torch.sqrt(-dt)
    elif kind == "dance":
        x0_hat = x - s * v
        score = -(x - x0_hat * (1 - s)) / s**2
        mean = x + dt * v - 0.5 * a**2 * score * dt
        std = a * torch.sqrt(-dt)
    else:  # cps
        std = sn * math.sin(a * math.pi / 2)
        x0_hat, x1_hat = x - s * v, x + (1 - s) * v
        mean = x0_hat * (1 - sn) + x1_hat * torch.sqrt((sn**2 - std**2).clamp_min(0))
    return _finish(mean, std, noise, prev_sample)


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def predicted_x0_eps(x: torch.Tensor, model_output: torch.Tensor, alpha_bar, prediction_type: str = "epsilon"):
    """(x0_hat, eps_hat) from a diffusion model's output at x_t = sqrt(ab) x0 + sqrt(1 - ab) eps.
    epsilon: eps directly; v_prediction: v = sqrt(ab) eps - sqrt(1 - ab) x0 (Salimans & Ho, 2022);
    sample: x0 directly. x, model_output [B, ...]; alpha_bar float or [B]."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type '{prediction_type}'; accepted: {', '.join(PREDICTION_TYPES)}")
    x, out = x.float(), model_output.float()
    a = _col(alpha_bar, x)
    sa, s1a = a.sqrt(), (1 - a).sqrt()  # [B, 1, ...]
    if prediction_type == "epsilon":
        return (x - s1a * out) / sa, out
    if prediction_type == "v_prediction":
        return sa * x - s1a * out, sa * out + s1a * x
    return out, (x - sa * out) / s1a


def ddim_step(
    x: torch.Tensor,
    model_output: torch.Tensor,
    alpha_bar,
    alpha_bar_prev,
    *,
    eta: float,
    prediction_type: str = "epsilon",
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
    clip_sample: float | None = None,
) -> StepOutput:
    """One DDIM step (Song et al., 2021, eq. 12) from x_t at alpha_bar to x_prev at alpha_bar_prev > alpha_bar,
    with eta in [0, 1] scaling the DDPM posterior std (docs/architecture.md#ddim-with-eta; eta = 1 is DDPM's
    ancestral step, eta = 0 the deterministic DDIM step, whose log_prob is 0):
        var = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev);  std = eta sqrt(var)
        mean = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - std^2) eps_hat;  x_prev = mean + std noise
    x, model_output, noise, prev_sample: [B, ...]; alpha_bar, alpha_bar_prev: float or [B]. `clip_sample`
    clamps x0_hat to [-c, c] (pixel-space models; eps_hat is then recomputed from it, as diffusers does)."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    x = x.float()
    a, a_prev = _col(alpha_bar, x), _col(alpha_bar_prev, x)  # [B, 1, ...]
    x0_hat, eps_hat = predicted_x0_eps(x, model_output, a, prediction_type)
    if clip_sample is not None:
        x0_hat = x0_hat.clamp(-clip_sample, clip_sample)
        eps_hat = (x - a.sqrt() * x0_hat) / (1 - a).sqrt()
    var = (1 - a_prev) / (1 - a) * (1 - a / a_prev)  # [B, 1, ...]
    std = eta * var.clamp_min(0).sqrt()
    mean = a_prev.sqrt() * x0_hat + (1 - a_prev - std**2).clamp_min(0).sqrt() * eps_hat
    return _finish(mean, std, noise, prev_sample)


def flow_kl(mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL between two step Gaussians of equal std, in mean space: mean over dims of (m - m_ref)^2 / (2 std^2).
    (docs/architecture.md#flow-sde; Flow-GRPO divides by the step's full std.) The same closed form holds for
    DDIM steps, so DPOK's KL uses it too. -> [B]"""
    return ((mean - mean_ref) ** 2 / (2 * std**2)).flatten(1).mean(1)


def sigma_schedule(steps: int, shift: float = 1.0) -> torch.Tensor:
    """steps + 1 sigmas from 1 to 0, linear in t and then shifted (SD3: sigma = s t / (1 + (s - 1) t))."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t = torch.linspace(1.0, 0.0, steps + 1)
    return shift * t / (1 + (shift - 1) * t)
