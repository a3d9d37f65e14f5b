"""The UNet's optional position features (models/unet.py): hand-worked values, and that they make the
attention blocks position-aware (a model without them cannot tell two positions of a constant image apart
at its attention levels; with them it can)."""

import math

import torch

from visalign.testbed.models.builtin import ShapesModel, ShapesModelConfig
from visalign.testbed.models.unet import POS_FREQS, AttnBlock, position_features


def test_position_features_hand_worked():
    f = position_features(2, 4)  # [8, 4F], row-major (y, x)
    assert f.shape == (8, 4 * POS_FREQS)
    # pixel (row 1, col 2): y = 1.5 / 2 = 0.75, x = 2.5 / 4 = 0.625; first frequency pi
    row = f[1 * 4 + 2]
    assert math.isclose(row[0].item(), math.sin(math.pi * 0.75), abs_tol=1e-6)  # sin(pi y)
    assert math.isclose(row[POS_FREQS].item(), math.cos(math.pi * 0.75), abs_tol=1e-6)  # cos(pi y)
    assert math.isclose(row[2 * POS_FREQS + 1].item(), math.sin(2 * math.pi * 0.625), abs_tol=1e-6)  # sin(2 pi x)
    assert math.isclose(row[3 * POS_FREQS].item(), math.cos(math.pi * 0.625), abs_tol=1e-6)  # cos(pi x)
    assert len({tuple(r.tolist()) for r in f}) == 8  # every position distinct


def test_positional_attention_tells_positions_apart():
    torch.manual_seed(0)
    x = torch.ones(1, 16, 2, 4)  # a constant feature map: only position can make outputs differ
    ctx, mask = torch.randn(1, 3, 8), torch.ones(1, 3, dtype=torch.bool)
    plain = AttnBlock(16, 8, heads=4)(x, ctx, mask)
    assert torch.allclose(plain, plain[..., :1, :1].expand_as(plain), atol=1e-5)
    pos = AttnBlock(16, 8, heads=4, positional=True)(x, ctx, mask)
    assert (pos - pos[..., :1, :1]).abs().amax() > 1e-2


def test_positional_is_off_by_default_and_round_trips(tmp_path):
    cfg = dict(task="text", resolution=32, width=64, channels=(16, 16, 16), attention=(False, True, True),
               text_dim=32, text_layers=1)
    assert not any("pos." in k for k in ShapesModel(ShapesModelConfig(**cfg)).state_dict())
    model = ShapesModel(ShapesModelConfig(**cfg, positional=True))
    assert any(k.endswith("pos.weight") for k in model.state_dict())
    model.save_pretrained(tmp_path)
    loaded = ShapesModel.from_pretrained(tmp_path)
    assert loaded.config.positional and loaded.state_dict().keys() == model.state_dict().keys()
