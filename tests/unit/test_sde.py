"""flow_sde_step against independent computations (docs/architecture.md#flow-sde, #dance-and-cps)."""

import math

import pytest
import torch
from torch.distributions import Normal

from visalign.math.sde import ddim_step, flow_kl, flow_sde_step, sigma_schedule

torch.manual_seed(0)
X = torch.randn(3, 2, 4, 4)
V = torch.randn(3, 2, 4, 4)
EPS = torch.randn(3, 2, 4, 4)


def _reference_flow(x, v, s, sn, a):
    """Flow-GRPO's SDE step written out independently, in float64."""
    x, v = x.double(), v.double()
    dt = sn - s
    std_t = a * math.sqrt(s / (1 - s))
    mean = x * (1 + std_t**2 / (2 * s) * dt) + v * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
    return mean, std_t * math.sqrt(-dt)


@pytest.mark.parametrize("s, sn", [(0.9, 0.8), (0.5, 0.45), (0.1, 0.0)])
def test_flow_step_mean_std_and_log_prob_match_normal(s, sn):
    out = flow_sde_step(X, V, s, sn, noise_level=0.7, kind="flow", noise=EPS)
    mean, std = _reference_flow(X, V, s, sn, 0.7)
    assert torch.allclose(out.mean.double(), mean, atol=1e-5)
    assert torch.allclose(out.std.double().expand_as(mean), torch.full_like(mean, std), atol=1e-6)
    assert torch.allclose(out.prev_sample.double(), mean + std * EPS.double(), atol=1e-5)
    ref_lp = Normal(mean, std).log_prob(out.prev_sample.double()).flatten(1).mean(1)
    assert torch.allclose(out.log_prob.double(), ref_lp, atol=1e-4)
    assert out.log_prob.shape == (3,) and out.log_prob.dtype == torch.float32


def test_scoring_a_given_sample_equals_sampling_it():
    a = flow_sde_step(X, V, 0.6, 0.5, noise=EPS)
    b = flow_sde_step(X, V, 0.6, 0.5, prev_sample=a.prev_sample)
    assert torch.equal(a.log_prob, b.log_prob)


def test_sigma_one_uses_first_sigma_below_one():
    out = flow_sde_step(X, V, 1.0, 0.9, noise=EPS, sigma_max=0.9)
    std_t = 0.7 * math.sqrt(0.9 / 0.1)
    assert torch.allclose(out.std.flatten(), torch.full((3,), std_t * math.sqrt(0.1)), atol=1e-6)
    assert torch.isfinite(out.log_prob).all()


@pytest.mark.parametrize("kind", ["flow", "dance", "cps"])
def test_zero_noise_limit_is_the_euler_ode_step(kind):
    ode = flow_sde_step(X, V, 0.6, 0.5, kind="ode")
    assert torch.equal(ode.log_prob, torch.zeros(3))
    assert torch.allclose(ode.prev_sample, X + V * (0.5 - 0.6))
    small = flow_sde_step(X, V, 0.6, 0.5, kind=kind, noise_level=1e-6, noise=EPS)
    assert torch.allclose(small.prev_sample, ode.prev_sample, atol=1e-4)


def test_dance_step_formula():
    s, sn, eta = 0.7, 0.6, 0.3
    out = flow_sde_step(X, V, s, sn, kind="dance", noise_level=eta, noise=EPS)
    x0 = X - s * V
    score = -(X - x0 * (1 - s)) / s**2
    mean = X + (sn - s) * V - 0.5 * eta**2 * score * (sn - s)
    std = eta * math.sqrt(s - sn)
    assert torch.allclose(out.mean, mean, atol=1e-6)
    assert torch.allclose(out.log_prob.double(), Normal(mean.double(), std).log_prob(out.prev_sample.double()).flatten(1).mean(1), atol=1e-4)


def test_cps_step_formula():
    s, sn, a = 0.7, 0.6, 0.5
    out = flow_sde_step(X, V, s, sn, kind="cps", noise_level=a, noise=EPS)
    std = sn * math.sin(a * math.pi / 2)
    mean = (X - s * V) * (1 - sn) + (X + (1 - s) * V) * math.sqrt(sn**2 - std**2)
    assert torch.allclose(out.mean, mean, atol=1e-6)
    assert torch.allclose(out.prev_sample, mean + std * EPS, atol=1e-6)


def test_per_sample_sigmas_broadcast():
    s = torch.tensor([0.9, 0.5, 0.3])
    out = flow_sde_step(X, V, s, s - 0.1, noise=EPS)
    for b in range(3):
        one = flow_sde_step(X[b : b + 1], V[b : b + 1], float(s[b]), float(s[b]) - 0.1, noise=EPS[b : b + 1])
        assert torch.allclose(out.log_prob[b], one.log_prob[0], atol=1e-5)


def test_kl_in_mean_space_hand_worked():
    mean, ref = torch.zeros(1, 4), torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    assert torch.allclose(flow_kl(mean, ref, torch.tensor([[2.0]])), torch.tensor([(1 / 8 + 1 / 8) / 4]))


def test_bad_kind_and_missing_noise_are_one_line_errors():
    with pytest.raises(ValueError, match="accepted: flow, dance, cps, ode"):
        flow_sde_step(X, V, 0.5, 0.4, kind="euler")
    with pytest.raises(ValueError, match="pass noise"):
        flow_sde_step(X, V, 0.5, 0.4)


def test_sigma_schedule_shift():
    s = sigma_schedule(4, shift=3.0)
    assert s[0] == 1 and s[-1] == 0 and len(s) == 5
    assert torch.allclose(s[2], torch.tensor(3 * 0.5 / (1 + 2 * 0.5)))


# ------------------------------------------------------------------------------------------ DDIM (3.2)


def _reference_ddim(x, eps, ab, ab_prev, eta):
    """DDIM's step (Song et al., 2021, eq. 12) written out independently in float64 for eps prediction."""
    x, eps = x.double(), eps.double()
    x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
    mean = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - sigma**2) * eps
    return mean, sigma


@pytest.mark.parametrize("ab, ab_prev, eta", [(0.3, 0.5, 1.0), (0.05, 0.2, 0.5), (0.9, 0.99, 1.0)])
def test_ddim_step_matches_normal(ab, ab_prev, eta):
    out = ddim_step(X, V, ab, ab_prev, eta=eta, noise=EPS)
    mean, std = _reference_ddim(X, V, ab, ab_prev, eta)
    assert torch.allclose(out.mean.double(), mean, atol=1e-5)
    assert torch.allclose(out.prev_sample.double(), mean + std * EPS.double(), atol=1e-5)
    ref_lp = Normal(mean, std).log_prob(out.prev_sample.double()).flatten(1).mean(1)
    assert torch.allclose(out.log_prob.double(), ref_lp, atol=1e-4)
    assert out.log_prob.shape == (3,) and out.log_prob.dtype == torch.float32


def test_ddim_eta_one_is_the_ddpm_posterior():
    """eta = 1 gives DDPM's posterior q(x_prev | x_t, x0) (Ho et al., 2020, eq. 7) with x0 = x0_hat."""
    ab, ab_prev = 0.4, 0.6
    out = ddim_step(X, V, ab, ab_prev, eta=1.0, noise=EPS)
    alpha = ab / ab_prev  # the single-step alpha_t
    x0 = (X - math.sqrt(1 - ab) * V) / math.sqrt(ab)
    mean = (math.sqrt(ab_prev) * (1 - alpha) / (1 - ab)) * x0 + (math.sqrt(alpha) * (1 - ab_prev) / (1 - ab)) * X
    var = (1 - ab_prev) / (1 - ab) * (1 - alpha)
    assert torch.allclose(out.mean, mean, atol=1e-5)
    assert torch.allclose(out.std.flatten(), torch.full((3,), math.sqrt(var)), atol=1e-6)


def test_ddim_eta_to_zero_is_the_deterministic_step():
    det = ddim_step(X, V, 0.3, 0.5, eta=0.0)
    assert torch.equal(det.log_prob, torch.zeros(3))
    x0 = (X - math.sqrt(0.7) * V) / math.sqrt(0.3)
    assert torch.allclose(det.prev_sample, math.sqrt(0.5) * x0 + math.sqrt(0.5) * V, atol=1e-5)
    small = ddim_step(X, V, 0.3, 0.5, eta=1e-6, noise=EPS)
    assert torch.allclose(small.prev_sample, det.prev_sample, atol=1e-4)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_ddim_prediction_types_agree_with_epsilon(prediction_type):
    """The same (x0, eps) pair given as v or as x0 gives the same step as given as eps."""
    ab = torch.tensor([0.2, 0.5, 0.8])
    x0 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    a = ab[:, None, None, None]
    x = a.sqrt() * x0 + (1 - a).sqrt() * EPS
    out_eps = ddim_step(x, EPS, ab, ab + 0.1, eta=0.7, noise=V)
    other = a.sqrt() * EPS - (1 - a).sqrt() * x0 if prediction_type == "v_prediction" else x0
    out = ddim_step(x, other, ab, ab + 0.1, eta=0.7, noise=V, prediction_type=prediction_type)
    assert torch.allclose(out.mean, out_eps.mean, atol=1e-5)
    assert torch.allclose(out.log_prob, out_eps.log_prob, atol=1e-4)


def test_ddim_clip_sample_clamps_x0_and_scoring_equals_sampling():
    big = 10 * V
    out = ddim_step(X, big, 0.3, 0.5, eta=1.0, noise=EPS, clip_sample=1.0)
    x0 = ((X - math.sqrt(0.7) * big) / math.sqrt(0.3)).clamp(-1, 1)
    eps = (X - math.sqrt(0.3) * x0) / math.sqrt(0.7)
    _, std = _reference_ddim(X, V, 0.3, 0.5, 1.0)
    mean = math.sqrt(0.5) * x0 + math.sqrt(0.5 - std**2) * eps
    assert torch.allclose(out.mean, mean, atol=1e-5)
    again = ddim_step(X, big, 0.3, 0.5, eta=1.0, prev_sample=out.prev_sample, clip_sample=1.0)
    assert torch.equal(again.log_prob, out.log_prob)


def test_ddim_bad_input_is_one_line():
    with pytest.raises(ValueError, match="accepted: epsilon, v_prediction, sample"):
        ddim_step(X, V, 0.3, 0.5, eta=1.0, noise=EPS, prediction_type="x0")
    with pytest.raises(ValueError, match="eta must be >= 0"):
        ddim_step(X, V, 0.3, 0.5, eta=-1.0, noise=EPS)
