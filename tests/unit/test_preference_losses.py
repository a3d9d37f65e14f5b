"""The preference and reward-weighted losses and the pairing, on hand-worked numbers: DPO, Diffusion-DPO,
RWR weights, pairs within groups."""

import math

import pytest
import torch

from visalign.math.advantages import pair_within_groups
from visalign.math.losses import diffusion_dpo_loss, dpo_loss, rwr_weights


def test_dpo_loss_hand_worked():
    # zero margin: -log sigmoid(0) = log 2, whatever beta
    assert dpo_loss(torch.tensor([0.3]), torch.tensor([0.3]), beta=5.0).item() == pytest.approx(math.log(2))
    # margin 0.2, beta 10: -log sigmoid(2) = log(1 + e^-2)
    assert dpo_loss(torch.tensor([0.5]), torch.tensor([0.3]), beta=10.0).item() == pytest.approx(math.log1p(math.exp(-2)))
    # the preference's sign: preferring the rejected one costs more
    assert dpo_loss(torch.tensor([0.3]), torch.tensor([0.5]), 10.0) > dpo_loss(torch.tensor([0.5]), torch.tensor([0.3]), 10.0)
    # beta -> large: the loss is ~0 for the right order and ~beta * |margin| for the wrong one
    assert dpo_loss(torch.tensor([1.0]), torch.tensor([0.0]), 1e3).item() < 1e-6
    assert dpo_loss(torch.tensor([0.0]), torch.tensor([1.0]), 1e3).item() == pytest.approx(1e3, rel=1e-6)


def test_dpo_gradient_is_beta_sigmoid_weighted():
    """d loss / d lr_w = -beta sigmoid(-beta margin): -beta / 2 at zero margin, pushing the chosen one up."""
    lw, ll = torch.tensor([0.0], requires_grad=True), torch.tensor([0.0], requires_grad=True)
    dpo_loss(lw, ll, beta=4.0).sum().backward()
    assert lw.grad.item() == pytest.approx(-2.0) and ll.grad.item() == pytest.approx(2.0)


def test_diffusion_dpo_loss_hand_worked():
    """docs/architecture.md#diffusion-dpo: -log sigmoid(-beta / 2 [(err_w - err_w_ref) - (err_l - err_l_ref)])."""
    ew, ewr, el, elr = (torch.tensor([v]) for v in (0.10, 0.12, 0.30, 0.28))
    # (0.10 - 0.12) - (0.30 - 0.28) = -0.04; -beta / 2 * -0.04 = 0.02 beta; beta 100 -> -log sigmoid(2)
    assert diffusion_dpo_loss(ew, ewr, el, elr, beta=100.0).item() == pytest.approx(math.log1p(math.exp(-2)), rel=1e-5)
    # at the reference (errors equal to the reference's) the loss is log 2
    assert diffusion_dpo_loss(ew, ew, el, el, beta=100.0).item() == pytest.approx(math.log(2))
    # denoising the chosen image worse than the reference raises the loss
    assert diffusion_dpo_loss(ewr + 0.02, ewr, el, el, 100.0) > diffusion_dpo_loss(ewr - 0.02, ewr, el, el, 100.0)
    # the gradient at the reference lowers err_w and raises err_l, each with weight beta / 4
    w, l = ew.clone().requires_grad_(True), el.clone().requires_grad_(True)
    diffusion_dpo_loss(w, ew, l, el, beta=8.0).sum().backward()
    assert w.grad.item() == pytest.approx(2.0) and l.grad.item() == pytest.approx(-2.0)


def test_rwr_weights_hand_worked():
    adv = torch.tensor([1.0, 0.0, -1.0, 0.0])
    w = rwr_weights(adv, temperature=1.0, max_weight=10.0)
    e = torch.tensor([math.e, 1.0, 1 / math.e, 1.0])
    assert torch.allclose(w, e / e.mean())
    assert w.mean().item() == pytest.approx(1.0)
    # clipping, and the limits: a high temperature is uniform (supervised), a low one keeps the best
    assert rwr_weights(adv, 1.0, max_weight=1.5).max().item() == 1.5
    assert torch.allclose(rwr_weights(adv, 1e6, 10.0), torch.ones(4), atol=1e-5)
    assert torch.allclose(rwr_weights(adv, 1e-3, 10.0), torch.tensor([4.0, 0.0, 0.0, 0.0]))


def test_pairs_within_groups():
    scores = torch.tensor([0.2, 0.9, 0.5, 0.1, 1.0, 1.0, 0.0, 1.0])  # two groups of 4
    w, l = pair_within_groups(scores, 4)
    # group 0: best 1 (0.9) vs worst 3 (0.1), then 2 (0.5) vs 0 (0.2); group 1: 4 vs 6, then 5 (1.0) vs 7 (1.0) tie -> dropped
    assert w.tolist() == [1, 2, 4] and l.tolist() == [3, 0, 6]
    assert (scores[w] > scores[l]).all()
    w, l = pair_within_groups(torch.ones(4), 2)
    assert len(w) == 0 and len(l) == 0  # all ties: no preference at all
    with pytest.raises(ValueError, match="groups of 3"):
        pair_within_groups(torch.ones(4), 3)
