"""Settings are checked where they are parsed, by one mechanism (config.py: types and Ranges from the annotations,
check_options for factories' keyword options): a value that would silently change the result, or end in a
traceback, is refused in one line that names the key and what is accepted."""

import argparse
import math
from typing import Annotated

import pytest

from visalign.algorithms import load_algorithm
from visalign.config import ConfigError, Range, build, check_options
from visalign.recipe import load_train_recipe
from visalign.models.registry import load_generator
from visalign.policies.flow import FlowSampling
from visalign.rewards import load_reward

RECIPE = "geneval-s-grpo"


def _refused(fn, *args, match: str, **kwargs) -> str:
    with pytest.raises(ConfigError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert match in msg and "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------------------------- train recipes

@pytest.mark.parametrize("override, match", [
    ("train.grad_clip=-1", "train.grad_clip=-1 is out of range; accepted: > 0"),  # reversed every update
    ("train.grad_clip=0", "train.grad_clip=0 is out of range; accepted: > 0"),  # clip_grad_norm_ to 0: no update
    ("train.minibatches=0", "train.minibatches=0 is out of range; accepted: >= 1"),  # was a ZeroDivisionError
    ("train.batch_size=0", "train.batch_size=0 is out of range; accepted: >= 1"),
    ("train.group_size=-8", "train.group_size=-8 is out of range; accepted: >= 1"),
    ("train.lr=-1e-4", "train.lr='-1e-4' is out of range; accepted: > 0"),  # YAML 1.1: a string
    ("train.lr=.nan", "train.lr=nan must be a finite number > 0"),
    ("train.lr=.inf", "train.lr=inf must be a finite number > 0"),
    ("train.lr=nan", "train.lr='nan' must be a finite number > 0"),
    ("train.adam_betas=[0.9,1.5]", "train.adam_betas=1.5 is out of range; accepted: in [0, 1)"),
    ("train.ema_decay=1", "train.ema_decay must be in [0, 1) (0 = off), got 1"),  # __post_init__ says it
    ("train.min_signal_share=1.5", "train.min_signal_share=1.5 is out of range; accepted: in [0, 1]"),
    ("train.budget_minutes=-1", "train.budget_minutes=-1 is out of range; accepted: >= 0"),
    ("train.weight_decay=.nan", "train.weight_decay=nan must be a finite number >= 0"),
    ("train.seed=-1", "train.seed=-1 is out of range; accepted: >= 0"),
    ("train.minibatches=abc", "train.minibatches='abc' must be an integer >= 1"),
    ("train.iterations=2.5", "train.iterations=2.5 must be an integer >= 1"),
    ("eval.steps=0", "eval.steps=0 is out of range; accepted: >= 1"),  # was silently the model's default
    ("eval.guidance=.nan", "eval.guidance=nan must be a finite number"),  # black images, scored 0.000
    ("eval.guidance=.inf", "eval.guidance=inf must be a finite number"),
])
def test_bad_train_settings_are_refused_with_the_accepted_range(override, match):
    _refused(load_train_recipe, RECIPE, [override], match=match)


@pytest.mark.parametrize("value, ok", [("true", True), ("false", True), ("maybe", False), ("1", False),
                                       ("0", False), ("'true'", False)])
def test_booleans_are_true_or_false(value, ok):
    if ok:
        recipe, _ = load_train_recipe(RECIPE, [f"train.compile={value}"])
        assert recipe.train.compile is (value == "true")
    else:
        _refused(load_train_recipe, RECIPE, [f"train.compile={value}"], match="must be true or false")


@pytest.mark.parametrize("override, match", [
    ("train.stepz=3", "unknown key 'train.stepz'; accepted: iterations, "),
    ("eval.foo=1", "unknown key 'eval.foo'; accepted: steps, guidance, judges"),
    ("foo=1", "unknown key 'foo'; accepted: name, "),
])
def test_unknown_keys_in_train_recipes_are_refused(override, match):
    _refused(load_train_recipe, RECIPE, [override], match=match)


def test_good_settings_still_parse():
    recipe, _ = load_train_recipe(RECIPE, ["train.grad_clip=0.5", "train.lr=1e-4", "eval.steps=4", "eval.guidance=2",
                                           "train.adam_betas=[0.9,0.99]", "train.ema_decay=0"])
    assert recipe.train.grad_clip == 0.5 and recipe.train.lr == 1e-4 and recipe.eval.steps == 4
    assert recipe.train.adam_betas == (0.9, 0.99) and isinstance(recipe.eval.guidance, float)


def test_sampling_and_algorithm_options_refuse_non_finite_numbers():
    _refused(build, FlowSampling, {"guidance_scale": math.nan}, "sampling",
             match="sampling.guidance_scale=nan must be a finite number")
    _refused(build, FlowSampling, {"noise_level": "abc"}, "sampling",
             match="sampling.noise_level='abc' must be a number >= 0")
    _refused(build, FlowSampling, {"noise_level": -0.5}, "sampling",
             match="sampling.noise_level=-0.5 is out of range; accepted: >= 0")
    _refused(build, FlowSampling, {"nope": 1}, "sampling", match="unknown key 'sampling.nope'")
    _refused(load_algorithm, "grpo", {"clip_range": math.inf}, match="algorithm.grpo.clip_range=inf must be a finite")
    _refused(load_algorithm, "grpo", {"global_std": "maybe"}, match="global_std='maybe' must be true or false")


# ---------------------------------------------------------------------------------- pretrain recipes

def _pretrain(recipe: str, *overrides: str, out="unused"):
    from visalign.cli import cmd_pretrain

    return cmd_pretrain(argparse.Namespace(recipe=recipe, overrides=list(overrides), out=out))


@pytest.mark.parametrize("recipe, override, match", [
    ("shapes-flow-pretrain", "model.foo=3", "unknown key 'model.foo'; accepted: prediction, "),  # was dropped
    ("shapes-flow-pretrain", "model.channels=[32,abc]", "model.channels='abc' must be an integer"),
    ("shapes-flow-pretrain", "train.log_every=0", "train.log_every=0 is out of range; accepted: >= 1"),
    ("shapes-flow-pretrain", "train.grad_clip=-1", "train.grad_clip=-1 is out of range; accepted: > 0"),
    ("shapes-flow-pretrain", "train.lr=.nan", "train.lr=nan must be a finite number > 0"),
    ("shapes-flow-sft", "model.resolution=64", "init 'builtin:shapes-flow' brings its own model config"),
    ("geneval-s-reward-pretrain", "model.foo=3", "unknown key 'model.foo'; accepted: resolution, "),
    ("geneval-s-reward-pretrain", "train.flip_prob=2", "train.flip_prob=2 is out of range; accepted: in [0, 1]"),
    ("shapes-vq-pretrain", "model.foo=3", "unknown key 'model.foo'; accepted: resolution, "),
    ("shapes-vq-pretrain", "model.beta=.nan", "model.beta=nan must be a finite number"),
    ("shapes-vq-pretrain", "train.log_every=0", "train.log_every=0 is out of range; accepted: >= 1"),
    ("shapes-ar-pretrain", "model.foo=3", "unknown key 'model.foo'; accepted: dim, "),
    ("shapes-vae-pretrain", "model.foo=3", "unknown key 'model.foo'; accepted: channels, "),
    ("shapes-sd3-pretrain", "model.text.foo=3", "unknown key 'model.text.foo'; accepted: dim, "),
    ("shapes-sd3-pretrain", "kl_weight=-1", "kl_weight=-1 is out of range; accepted: >= 0"),
])
def test_bad_pretrain_settings_are_refused_before_training(recipe, override, match, tmp_path):
    _refused(_pretrain, recipe, override, out=tmp_path / "out", match=match)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------ model and generator options

@pytest.mark.parametrize("spec, match", [
    ("builtin:shapes-flow?steps=0", "model 'builtin:shapes-flow': steps=0 is out of range; accepted: >= 1"),
    ("builtin:shapes-flow?steps=abc", "model 'builtin:shapes-flow': steps='abc' must be an integer >= 1"),
    ("builtin:shapes-flow?steps=2.5", "steps=2.5 must be an integer >= 1"),
    ("builtin:shapes-flow?guidance=nan", "guidance='nan' must be a finite number"),
    ("builtin:shapes-flow?guidance=.nan", "guidance=nan must be a finite number"),
    ("builtin:shapes-flow?guidance=.inf", "guidance=inf must be a finite number"),
    ("builtin:shapes-flow?batch_size=0", "batch_size=0 is out of range; accepted: >= 1"),
    ("builtin:shapes-flow?noise_level=.nan", "noise_level=nan must be a finite number"),
    ("builtin:shapes-ddpm?kind=ddim&eta=abc", "eta='abc' must be a number"),
    ("builtin:shapes-flow?foo=1", "model 'builtin:shapes-flow' does not take option 'foo'; accepted: path"),
    ("oracle?blur=-1", "model 'oracle': blur=-1 is out of range; accepted: >= 0"),
    ("oracle?noise=.nan", "must be a finite number >= 0"),
    ("oracle?foo=1", "model 'oracle' does not take option 'foo'; accepted: resolution, blur, noise, distractors"),
    ("builtin:shapes-ar?temperature=abc", "model 'builtin:shapes-ar': temperature='abc' must be a number"),
])
def test_bad_model_options_are_refused_in_one_line(spec, match):
    _refused(load_generator, spec, match=match)


def test_good_model_options_are_typed():
    gen = load_generator("builtin:shapes-flow?steps=3&guidance=2&noise_level=0.5")
    assert gen.sampling.steps == 3 and gen.sampling.guidance_scale == 2.0 and gen.sampling.noise_level == 0.5
    assert load_generator("oracle?blur=0.5&resolution=16").resolution == 16


# --------------------------------------------------------------------------------------- reward options

@pytest.mark.parametrize("name, options, match", [
    ("geneval_s", {"dense": "maybe"}, "reward 'geneval_s': dense='maybe' must be true or false"),  # was true
    ("geneval_s", {"exact": 1}, "reward 'geneval_s': exact=1 must be true or false"),
    ("geneval_s", {"foo": 1}, "reward 'geneval_s' does not take option 'foo'; accepted: dense, exact"),
    ("compressibility", {"quality": "abc"}, "reward 'compressibility': quality='abc' must be an integer"),
    ("combine", {"components": {"geneval_s": {}}, "eps": math.nan}, "reward 'combine': eps=nan must be a finite"),
    ("combine", {"components": {"geneval_s": {"options": {"dense": "maybe"}}}}, "dense='maybe' must be true or false"),
    ("ocr", {"timeout": -1}, "reward 'ocr': timeout=-1 is out of range; accepted: > 0"),
    ("remote", {"url": "http://x", "timeout": math.inf}, "reward 'remote': timeout=inf must be a finite number"),
])
def test_bad_reward_options_are_refused_in_one_line(name, options, match):
    _refused(load_reward, name, match=match, **options)


def test_reward_spec_options_are_typed():
    from visalign.rewards import load_reward_spec

    assert load_reward_spec("geneval_s?dense=true").dense is True
    _refused(load_reward_spec, "geneval_s?dense=maybe", match="dense='maybe' must be true or false")


# ------------------------------------------------------------------------------------------ the mechanism

def test_range_reads_as_the_message_says():
    assert str(Range(ge=1)) == ">= 1" and str(Range(gt=0)) == "> 0" and str(Range(ge=0, lt=1)) == "in [0, 1)"
    assert str(Range(gt=0, le=1)) == "in (0, 1]" and str(Range(le=5)) == "<= 5"
    assert 1 in Range(ge=1) and 0 not in Range(ge=1) and 1 not in Range(ge=0, lt=1) and 0.5 in Range(ge=0, lt=1)


def test_check_options_types_a_signature_and_lets_open_ended_ones_check_themselves():
    def factory(n: Annotated[int, Range(ge=2)] = 2, x: float = 0.0, flag: bool = False, anything=None):
        return n

    assert check_options(factory, {"n": 3, "x": 1, "anything": [1]}, "f") == {"n": 3, "x": 1.0, "anything": [1]}
    _refused(check_options, factory, {"n": 1}, "thing 'f'", match="thing 'f': n=1 is out of range; accepted: >= 2")
    _refused(check_options, factory, {"x": math.nan}, "f", match="f: x=nan must be a finite number")
    _refused(check_options, factory, {"nope": 1}, "f", match="f does not take option 'nope'; accepted: n, x, flag")

    def open_ended(n: int = 1, **rest):
        return n

    assert check_options(open_ended, {"n": 2, "other": "kept"}, "g") == {"n": 2, "other": "kept"}


def test_a_field_may_accept_non_finite_numbers_when_it_says_so():
    def factory(limit: Annotated[float, Range(gt=0, finite=False)] = math.inf):
        return limit

    assert check_options(factory, {"limit": math.inf}, "f") == {"limit": math.inf}
