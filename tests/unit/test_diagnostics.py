"""Gradient-signal diagnostics on hand-worked numbers."""

import math

import pytest
import torch

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
    assert d.split_windows(list(range(10))) == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    assert d.split_windows([4, 5]) == [[4], [5]]


def test_low_signal_warning():
    assert d.low_signal_warning(0.5, 1e-4, 0.1) is None
    w = d.low_signal_warning(0.05, 3e-4, 0.1)
    assert "0.05" in w and "about 19x" in w and "lr=0.0003" in w and "\n" not in w
    assert "no measurable signal" in d.low_signal_warning(0.0, 3e-4, 0.1)
