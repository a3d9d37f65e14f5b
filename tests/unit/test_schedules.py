"""The one learning-rate schedule (math/schedules.py: lr_factor) on hand-worked values, and every training loop
using it."""

import math

import pytest

from visalign.config import TrainConfig
from visalign.math.schedules import lr_factor
from visalign.testbed.pretrain.pretrain import PretrainConfig


@pytest.mark.parametrize("step,steps,warmup,schedule,progress,expected", [
    (0, 10, 2, "cosine", None, 0.5),  # warmup: (0 + 1) / 2
    (1, 10, 2, "cosine", None, 1.0),  # the last warmup step reaches the peak
    (2, 10, 2, "cosine", None, 1.0),  # the first decay step: q = 0
    (6, 10, 2, "cosine", None, 0.5),  # q = 4 / 8: cos(pi / 2) = 0
    (9, 10, 2, "cosine", None, 0.5 * (1 - math.cos(math.pi / 8))),  # q = 7 / 8: 0.0380602
    (9, 10, 2, "constant", None, 1.0),
    (0, 10, 0, "cosine", None, 1.0),  # no warmup: the first step at the peak
    (5, 10, 0, "cosine", 0.75, 0.5 * (1 - math.sqrt(0.5))),  # progress replaces step / steps: 0.1464466
    (3, 10, 2, "cosine", 0.6, 0.5),  # q = (0.6 - 0.2) / 0.8 = 0.5
    (3, 10, 2, "cosine", 1.2, 0.0),  # past the end: clamped to 0
    (1, 10, 4, "cosine", 0.9, 0.5),  # warmup whatever the progress: (1 + 1) / 4
])
def test_lr_factor_hand_worked(step, steps, warmup, schedule, progress, expected):
    assert lr_factor(step, steps, warmup, schedule, progress) == pytest.approx(expected, abs=1e-12)
    assert 0.0 <= lr_factor(step, steps, warmup, schedule, progress) <= 1.0


def test_lr_factor_refuses_an_unknown_schedule():
    with pytest.raises(ValueError, match="lr schedule 'linear' is not one of cosine, constant"):
        lr_factor(5, 10, 0, "linear")


def test_every_loop_uses_it():
    from visalign.testbed.pretrain import pretrain, reward_pretrain, token_pretrain
    from visalign.trainer.trainer import lr_at

    rl = TrainConfig(iterations=4, lr=1.0, lr_schedule="cosine", warmup_iterations=1)
    # 1-based iterations: 1 warms up, 2 is the first decay step (q = 0), 4 the last (q = 2 / 3)
    assert [lr_at(i, rl) for i in (1, 2, 3, 4)] == pytest.approx([1.0, 1.0, 0.75, 0.25])
    pre = PretrainConfig(steps=10, lr=2.0, warmup_steps=2)
    assert pretrain.lr_at(6, pre) == pytest.approx(2.0 * 0.5)
    tok = token_pretrain.TokenPretrainConfig(steps=10, lr=2.0, warmup_steps=2, max_minutes=1.0)
    assert token_pretrain._lr(6, 0.0, tok) == pytest.approx(1.0)  # steps further along than time
    assert token_pretrain._lr(6, 60 * 0.6, tok) == pytest.approx(1.0)  # time at 0.6: q = 0.5 either way
    assert token_pretrain._lr(6, 60.0, tok) == pytest.approx(0.0)  # time is up: annealed to 0
    rew = reward_pretrain.RewardPretrainConfig(steps=10, lr=2.0, warmup_steps=2)
    assert reward_pretrain.lr_at(6, rew) == pytest.approx(1.0)
    assert reward_pretrain.lr_at(3, rew, 0.6) == pytest.approx(1.0)
