"""Every reward checks its input at the interface (rewards/base.py check_input), once, for all: images
[B, 3, H, W] float in [-1, 1] and one prompt per image, refused otherwise in one line; a NaN or inf image scores
NaN (the trainer's non-finite-reward guard then skips the update), never a finite number."""

import ctypes.util

import numpy as np
import pytest
import torch

from visalign.images import images_to_tensor
from visalign.rewards import Reward, load_reward, load_reward_spec
from visalign.rewards.base import RewardInputError
from visalign.types import RewardOutput
from visalign.testbed.world import grammar, render
from visalign.testbed.world import text as text_world

SHAPE_PROMPTS = ["a red circle", "two squares", "a blue star"]
WORDS = ["CAT", "DOG", "SUN"]
COMBINE = {"components": {"geneval_s": {"weight": 1.0}, "compressibility": {"weight": 0.1}}}
# (reward spec or (name, options), its world): every reward that can be built offline
SPECS = [("geneval_s", "shapes"), ("geneval_s?exact=true", "shapes"), ("geneval_s?dense=true", "shapes"),
         ("compressibility", "shapes"), ("incompressibility", "shapes"), ("geneval_s_learned", "shapes"),
         (("combine", COMBINE), "shapes")]
if ctypes.util.find_library("tesseract") is not None:
    SPECS.append(("ocr?workers=1", "text"))
IDS = [s if isinstance(s, str) else s[0] for s, _ in SPECS]
_cache: dict = {}


def _reward(spec) -> Reward:
    key = spec if isinstance(spec, str) else spec[0]
    if key not in _cache:  # the learned reward and tesseract workers are built once per module
        _cache[key] = load_reward_spec(spec) if isinstance(spec, str) else load_reward(spec[0], **spec[1])
    return _cache[key]


def _batch(world: str) -> tuple[torch.Tensor, list[str]]:
    """A clean batch of 3: renders of the prompts, [3, 3, H, W] in [-1, 1]."""
    if world == "text":
        prompts = [text_world.TextSpec(w).prompt for w in WORDS]
        return images_to_tensor(np.stack([text_world.render(w, jitter=False) for w in WORDS])), prompts
    imgs = [render.render(grammar.parse_prompt(p), np.random.default_rng(i), 32) for i, p in enumerate(SHAPE_PROMPTS)]
    return images_to_tensor(np.stack(imgs)), list(SHAPE_PROMPTS)


def _malformed(x: torch.Tensor, prompts: list[str]):
    """(what, images, prompts, words the message must hold) for each way a batch can be wrong."""
    uint8 = ((x + 1) * 127.5).round().to(torch.uint8)
    return [
        ("channels last", x.permute(0, 2, 3, 1), prompts, ["got images of shape [3, ", ", 3] (channels last?)"]),
        ("no batch dim", x[0], prompts[:1], ["got images of shape [3, ", "accepted: [B, 3, H, W]"]),
        ("one channel", x[:, :1], prompts, ["got images of shape [3, 1, ", "accepted: [B, 3, H, W]"]),
        ("uint8", uint8, prompts, ["got uint8 images", "images / 127.5 - 1"]),
        ("[0, 255] floats", uint8.float(), prompts, ["got values in [", "[0, 255]? images / 127.5 - 1",
                                                     "accepted: [B, 3, H, W] float in [-1, 1]"]),
        ("[-2, 2]", x * 2, prompts, ["got values in [-2, ", "in [-1, 1]"]),
        ("1 prompt", x, prompts[:1], ["got 3 images and 1 prompt;", "one prompt per image"]),
        ("4 prompts", x, prompts + prompts[:1], ["got 3 images and 4 prompts;"]),
        ("a string", x, prompts[0], ["got 3 images and prompts of type str"]),
    ]


@pytest.mark.parametrize("spec, world", SPECS, ids=IDS)
def test_malformed_batches_are_refused_in_one_line(spec, world):
    reward = _reward(spec)
    x, prompts = _batch(world)
    assert reward(x, prompts).scores.shape == (3,)  # the clean batch is scored
    for what, images, ps, words in _malformed(x, prompts):
        with pytest.raises(RewardInputError) as e:
            reward(images, ps)
        msg = str(e.value)
        assert msg.startswith(f"reward {reward.name}: got") and "accepted" in msg and "\n" not in msg, (what, msg)
        assert all(w in msg for w in words), (what, msg)


@pytest.mark.parametrize("spec, world", SPECS, ids=IDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_image_scores_nan_and_the_others_are_unchanged(spec, world, value):
    reward = _reward(spec)
    x, prompts = _batch(world)
    clean = reward(x, prompts).scores
    bad = x.clone()
    bad[1, 0, 3, 4] = value  # one pixel
    scores = reward(bad, prompts).scores
    assert torch.isnan(scores[1]) and torch.isfinite(scores[[0, 2]]).all()
    torch.testing.assert_close(scores[[0, 2]], clean[[0, 2]])
    assert torch.isfinite(x).all()  # the caller's images are not changed in place


def test_remote_refuses_before_it_sends_anything():
    reward = load_reward("remote", url="http://127.0.0.1:9")  # nothing listens there: a request would fail
    x, prompts = _batch("shapes")
    with pytest.raises(RewardInputError, match=r"reward remote: got 3 images and 1 prompt"):
        reward(x, prompts[:1])
    with pytest.raises(RewardInputError, match=r"reward remote: got uint8 images"):
        reward(((x + 1) * 127.5).to(torch.uint8), prompts)


def test_a_combine_component_is_checked_by_the_same_rule():
    reward = load_reward("combine", **COMBINE)
    x, prompts = _batch("shapes")
    with pytest.raises(RewardInputError, match=r"^reward combine: got images of shape \[3, 32, 32, 3\] \(channels"):
        reward(x.permute(0, 2, 3, 1), prompts)


def test_any_reward_subclass_is_checked_and_its_output_too():
    """The check is the interface's, not each reward's: a user's own reward gets it without asking."""
    class Mean(Reward):
        name = "mean"

        def __call__(self, images, prompts, metadata=None):
            return RewardOutput(images.float().mean(dim=(1, 2, 3)))

    class Short(Mean):
        name = "short"

        def __call__(self, images, prompts, metadata=None):
            return RewardOutput(torch.zeros(1))  # one score for any batch: what zip() did to 3 images, 1 prompt

    x, prompts = _batch("shapes")
    with pytest.raises(RewardInputError, match="reward mean: got uint8 images"):
        Mean()(((x + 1) * 127.5).to(torch.uint8), prompts)
    with pytest.raises(ValueError, match=r"reward short: returned scores of shape \[1\] for 3 images"):
        Short()(x, prompts)


def test_a_differentiable_reward_keeps_its_gradients_through_the_check():
    reward = _reward("geneval_s_learned")
    x, prompts = _batch("shapes")
    x = x.double().clamp(-1, 1).requires_grad_(True)
    reward(x, prompts).scores.sum().backward()
    raw = x.detach().clone().requires_grad_(True)
    type(reward).__call__.__wrapped__(reward, raw, prompts).scores.sum().backward()  # the reward without the check
    torch.testing.assert_close(x.grad, raw.grad)
    # with a NaN image in the batch: the others' gradients are unchanged, the NaN image's are 0, none is NaN
    bad = x.detach().clone()
    bad[1, 0, 0, 0] = float("nan")
    bad.requires_grad_(True)
    scores = reward(bad, prompts).scores
    assert torch.isnan(scores[1])
    scores[[0, 2]].sum().backward()
    assert torch.isfinite(bad.grad).all() and bad.grad[1].abs().sum() == 0
    torch.testing.assert_close(bad.grad[[0, 2]], x.grad[[0, 2]])


def test_slight_overshoot_is_accepted_and_an_empty_batch_too():
    reward = _reward("geneval_s")
    x, prompts = _batch("shapes")
    assert torch.isfinite(reward((x * 1.005), prompts).scores).all()  # a resize or a finite-difference step
    assert reward(x[:0], []).scores.shape == (0,)
