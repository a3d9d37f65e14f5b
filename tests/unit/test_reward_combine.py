"""`combine`: group standardisation on hand-worked numbers, scale invariance (a reward x1000 has the same
influence), option checks, and the registry's errors."""

import pytest
import torch

from visalign.registry import RegistryError
from visalign.rewards import REWARDS, Reward, load_reward
from visalign.rewards.combine import CombinedReward, group_standardize
from visalign.types import RewardOutput


class _Fixed(Reward):
    """Test reward returning given scores (times `scale`), whatever the images."""

    def __init__(self, scores, scale=1.0):
        self.scores, self.scale = torch.as_tensor(scores, dtype=torch.float32), scale

    def __call__(self, images, prompts, metadata=None):
        return RewardOutput(self.scores * self.scale)


def test_group_standardize_hand_worked():
    r = torch.tensor([1.0, 3.0, 10.0, 10.0, 0.0, 1.0, 2.0])
    ids = torch.tensor([5, 5, 7, 7, 9, 9, 9])
    z = group_standardize(r, ids, eps=0.0 + 1e-12)
    # group 5: mean 2, std 1 -> -1, 1; group 7: no spread -> 0, 0; group 9: mean 1, std sqrt(2/3)
    s = (2 / 3) ** 0.5
    torch.testing.assert_close(z, torch.tensor([-1.0, 1.0, 0.0, 0.0, -1 / s, 0.0, 1 / s]))


def _pair(scale_b):
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(16, generator=g), torch.rand(16, generator=g)
    return a, b, CombinedReward({"a": (_Fixed(a), 1.0), "b": (_Fixed(b, scale_b), 1.0)})


def test_a_reward_scaled_by_1000_has_equal_influence_after_group_normalisation():
    meta = {"group_size": 4, "group_ids": torch.arange(16) // 4}
    images = torch.zeros(16, 3, 8, 8)
    a, b, comb1 = _pair(1.0)
    _, _, comb1000 = _pair(1000.0)
    t1 = comb1(images, [""] * 16, meta)
    t1000 = comb1000(images, [""] * 16, meta)
    torch.testing.assert_close(t1.scores, t1000.scores, atol=1e-4, rtol=1e-4)  # the scale is gone
    torch.testing.assert_close(t1000.details["b"], b * 1000)  # raw components kept for logging
    # equal influence: in every group, both standardised components have unit variance, so the total
    # covaries equally with each of them
    za, zb = group_standardize(a, meta["group_ids"]), group_standardize(b * 1000, meta["group_ids"])
    total = t1000.scores
    cov_a, cov_b = float(((total - total.mean()) * za).mean()), float(((total - total.mean()) * zb).mean())
    assert abs(cov_a - cov_b) < 1e-4 and cov_a > 0.5
    # without normalisation, the x1000 reward decides the ranking alone
    raw = CombinedReward({"a": (_Fixed(a), 1.0), "b": (_Fixed(b, 1000.0), 1.0)}, normalize="none")
    order_raw = raw(images, [""] * 16, meta).scores.argsort()
    assert torch.equal(order_raw, (b * 1000).argsort()) and not torch.equal(order_raw, t1000.scores.argsort())


def test_weights_after_normalisation_and_batch_fallback():
    images = torch.zeros(4, 3, 8, 8)
    comb = CombinedReward({"a": (_Fixed([0.0, 2.0, 5.0, 5.0]), 2.0), "b": (_Fixed([1.0, 0.0, 3.0, 1.0]), 0.5)})
    out = comb(images, [""] * 4, {"group_ids": torch.tensor([0, 0, 1, 1])})
    torch.testing.assert_close(out.scores, torch.tensor([2 * -1 + 0.5 * 1, 2 * 1 + 0.5 * -1, 0.5 * 1, 0.5 * -1]))
    # groups of one sample (DDPO's group_size 1): the batch is the group
    single = comb(images, [""] * 4, {"group_ids": torch.arange(4)})
    batch = CombinedReward(dict(comb.components), normalize="batch")(images, [""] * 4, {"group_ids": torch.arange(4)})
    torch.testing.assert_close(single.scores, batch.scores)
    assert abs(float(single.scores.mean())) < 1e-5 and float(single.scores.std()) > 0.5
    # no group information (held-out evaluation): the raw weighted sum, comparable across checkpoints
    torch.testing.assert_close(comb(images, [""] * 4).scores, torch.tensor([0.5, 4.0, 11.5, 10.5]))


def test_combine_from_options_loads_components_by_name():
    r = load_reward("combine", components={"compressibility": {"weight": 1.0},
                                           "jpeg90": {"reward": "incompressibility", "weight": 0.5,
                                                      "options": {"quality": 90}}})
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = r(images, ["a"] * 4, {"group_ids": torch.tensor([0, 0, 1, 1])})
    assert set(out.details) == {"compressibility", "jpeg90"} and out.scores.shape == (4,)
    assert not r.needs_text and not r.differentiable and "combine" in REWARDS.names()


@pytest.mark.parametrize("components, match", [
    (None, "components must be a mapping"),
    ({"compressibility": {"wieght": 1}}, "must be"),
    ({"compressibility": {"weight": "x"}}, "finite number"),
])
def test_bad_combine_options_are_refused_in_one_line(components, match):
    with pytest.raises(ValueError, match=match) as e:
        load_reward("combine", components=components)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="normalize"):
        CombinedReward({"a": (_Fixed([1.0]), 1.0)}, normalize="zscore")


def test_unknown_reward_names_the_available_ones():
    with pytest.raises(RegistryError) as e:
        load_reward("pick_score")
    msg = str(e.value)
    assert "unknown reward 'pick_score'" in msg and "pickscore" in msg and "combine" in msg and "\n" not in msg
    with pytest.raises(RegistryError, match="unknown reward 'nope'"):
        load_reward("combine", components={"nope": {"weight": 1}})


def test_reward_to_moves_its_networks():
    class _Net(Reward):
        def __init__(self):
            self.net = torch.nn.Linear(2, 1)

    r = _Net().to("meta")
    assert r.device == torch.device("meta") and r.net.weight.device.type == "meta"


def test_visalign_list_shows_every_reward(capsys):
    from visalign.cli import main

    assert main(["list"]) == 0
    listed = capsys.readouterr().out.split("algorithms:")[0].split("rewards:")[1]
    names = [line.split()[0] for line in listed.strip().splitlines()]
    assert names == REWARDS.names()
    assert {"clip_score", "pickscore", "aesthetic", "hps", "image_reward", "vlm_judge", "combine", "remote"} <= set(names)


def test_visalign_list_shows_prompt_sets_and_pretraining_kinds(capsys):
    from visalign.cli import main
    from visalign.pretraining import PRETRAIN_KINDS
    from visalign.prompts import PROMPT_SETS

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    sets = out.split("prompt sets")[1].split("recipes:")[0].strip().splitlines()[1:]
    assert [line.split()[0] for line in sets] == [*PROMPT_SETS.names(), "animals", "file:PATH"]
    kinds = out.split("pretraining kinds:")[1].split("prompt sets")[0].strip().splitlines()
    assert [line.split()[0] for line in kinds] == PRETRAIN_KINDS.names()
