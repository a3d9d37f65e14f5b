"""Gradient-signal diagnostics on hand-worked numbers."""

import math

import pytest
import torch

from visalign.algorithms.base import split_windows
from visalign.trainer import diagnostics as d


def test_cosine_and_zero_vectors():
    assert d.cosine(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(1 / math.sqrt(2))
    assert d.cosine(torch.tensor([1.0, 2.0]), torch.tensor([-2.0, 1.0])) == pytest.approx(0.0)
    assert d.cosine(torch.zeros(3), torch.ones(3)) == 0.0  # no direction: no shared signal


def test_combined_share_and_batch_multiplier():
    # two estimates with share 0.5 each: snr 1 each, the mean has snr 2 -> share 2/3
    assert d.combined_share(0.5) == pytest.approx(2 / 3)
    assert d.combined_share(0.5, k=4) == pytest.approx(0.8)  # snr 4
    assert d.combined_share(-0.2) == 0.0
    assert d.batch_multiplier(0.2) == pytest.approx(4.0)  # snr 0.25 -> 1 needs 4x the rollouts
    assert d.batch_multiplier(0.6) == 1.0
    assert math.isinf(d.batch_multiplier(0.0))


def test_reward_stats_hand_worked():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    s = d.reward_stats(r, 4)
    assert s["diag_equal_groups"] == 0.5
    assert s["diag_var_within"] == pytest.approx((0.1875 + 0.0) / 2)  # group 1: mean .75, var .1875
    assert s["diag_var_between"] == pytest.approx(0.140625)  # means .75 and 0


def test_advantage_ess():
    assert d.advantage_ess(torch.tensor([1.0, -1.0, 0.0, 0.0])) == pytest.approx(0.5)
    assert d.advantage_ess(torch.tensor([2.0, -2.0, 2.0, -2.0])) == pytest.approx(1.0)
    assert d.advantage_ess(torch.zeros(4)) == 0.0


def test_split_windows():
    assert split_windows(list(range(10))) == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    assert split_windows([4, 5]) == [[4], [5]]


def test_run_share_and_low_signal_warning():
    # share 0.2 per update: snr 0.25; over 4 steps snr 1 -> 0.5; over 12 steps snr 3 -> 0.75
    assert d.run_share(0.2, 4) == pytest.approx(0.5)
    assert d.run_share(0.2, 12) == pytest.approx(0.75)
    assert d.run_share(0.0, 100) == 0.0 and d.run_share(1.0, 1) == 1.0
    assert d.low_signal_warning(0.2, 12, 1e-4, 0.5) is None
    w = d.low_signal_warning(0.05, 10, 3e-4, 0.5)  # snr 10/19 over the run; 0.5 needs per-update snr 0.1 (1.9x)
    assert "0.050 per update, 0.34 over the run's 10 optimizer steps" in w and "about 2x" in w
    assert "lr=0.0003" in w and "\n" not in w
    assert "no measurable signal" in d.low_signal_warning(0.0, 100, 3e-4, 0.5)
    assert "at most 0.050 per update, at most 0.34" in d.low_signal_warning(0.05, 10, 3e-4, 0.5, bound=True)


def test_upper_cosine_waits_for_evidence():
    assert d.upper_cosine([0.0, 0.0]) is None
    # mean 0.02, sample std 0.02 -> + 2 * 0.02 / sqrt(3)
    assert d.upper_cosine([0.0, 0.02, 0.04]) == pytest.approx(0.02 + 2 * 0.02 / math.sqrt(3))


def test_signal_share_matches_closed_form_on_a_synthetic_problem():
    """g = mu + noise, averaged over n samples: two independent estimates have E[cos] close to
    |mu|^2 / (|mu|^2 + sigma^2 / n), sigma^2 the total per-sample noise variance (issue 9)."""
    gen = torch.Generator().manual_seed(0)
    dim, trials = 4000, 40
    mu = torch.randn(dim, generator=gen) * 0.05  # |mu|^2 ~ 10
    for n, per_coord_std in [(8, 0.2), (32, 0.2), (16, 0.05)]:
        sigma2 = per_coord_std**2 * dim
        expected = float(mu @ mu) / (float(mu @ mu) + sigma2 / n)
        cos = []
        for _ in range(trials):
            a = mu + (torch.randn(n, dim, generator=gen) * per_coord_std).mean(0)
            b = mu + (torch.randn(n, dim, generator=gen) * per_coord_std).mean(0)
            cos.append(d.cosine(a, b))
        assert sum(cos) / trials == pytest.approx(expected, abs=0.03), (n, per_coord_std)
