"""Issue #35 item 4: `package.module:Name` in the registries (is_module_spec's rule and its one-line errors), the
Protocols every built-in satisfies, recipe options checked before any weights load, compare from recipe metadata."""

import sys
from pathlib import Path

import pytest
import torch

from visalign import protocols
from visalign.algorithms import ALGORITHMS
from visalign.config import ConfigError
from visalign.recipe import load_train_recipe
from visalign.models.registry import MODELS, is_world_model, model_family
from visalign.registry import RegistryError, is_module_spec
from visalign.rewards import REWARDS, Reward, load_reward, load_reward_spec

PLUGIN = Path(__file__).resolve().parents[2] / "examples" / "plugin"


@pytest.fixture
def plugin(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN))
    yield
    for name in [m for m in sys.modules if m.startswith("visalign_example_plugin")]:
        del sys.modules[name]


# --------------------------------------------------------------------------------------- module:Name rule


@pytest.mark.parametrize("name,is_module", [
    ("mypkg.rewards:Sharpness", True),
    ("my_rewards:Sharpness", True),  # one module name is a dotted path of one part
    ("mypkg.models:Factory.build", True),  # a dotted attribute
    ("builtin:shapes-flow", False),  # a reserved prefix (and not an identifier after ':')
    ("builtin:shapes_flow", False),  # a reserved prefix, even with an identifier after it
    ("diffusers:my_pipeline", False),  # a diffusers folder named like an identifier is still a pipeline
    ("diffusers:org/model", False),
    ("oracle", False), ("geneval_s", False), ("runs/x", False),
    ("./dir:x", False), ("C:/models/x", False), ("/abs/path:Name", False),
    ("mypkg.rewards:", False), (":Name", False), ("mypkg..rewards:X", False), ("1pkg:X", False),
    ("mypkg.rewards:Sharp-ness", False), ("mypkg.rewards:X:Y", False),
    ("grpo:kl_beta=0.04", False),  # a compare spec's options are not an attribute
])
def test_module_spec_rule(name, is_module):
    assert is_module_spec(name) is is_module


def test_module_specs_load(plugin):
    r = load_reward("visalign_example_plugin.rewards:Saturation", power=2)
    assert isinstance(r, Reward) and r.power == 2.0
    grey, red = torch.zeros(1, 3, 4, 4), torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert r(torch.cat([grey, red]), ["", ""]).scores.tolist() == [0.0, 1.0]
    assert load_reward_spec("visalign_example_plugin.rewards:sharpness").name == "sharpness"  # a factory function
    algo = ALGORITHMS.get("visalign_example_plugin.algos:RankGRPO")
    adv = algo(algo.config_cls(scale=2.0)).advantages(torch.tensor([3.0, 1.0, 2.0, 0.0, 5.0, 9.0]), [""] * 6, 3)
    assert adv.tolist() == [2.0, -2.0, 0.0, -2.0, 0.0, 2.0]  # ranks within each group of 3, centred, x scale
    from visalign.models.registry import load_model

    adapter = load_model("visalign_example_plugin.models:tiny_flow?width=8")
    assert isinstance(adapter, protocols.DenoisingAdapter) and model_family("visalign_example_plugin.models:tiny_flow") == "flow"
    assert not is_world_model("visalign_example_plugin.models:tiny_flow")  # a user's model takes any prompt


@pytest.mark.parametrize("registry,name,message", [
    (REWARDS, "visalign_example_plugin.nope:X", "reward 'visalign_example_plugin.nope:X': cannot import "
     "'visalign_example_plugin.nope': No module named 'visalign_example_plugin.nope'"),
    (REWARDS, "visalign_example_plugin.rewards:Nope", "module 'visalign_example_plugin.rewards' has no 'Nope'"),
    (REWARDS, "visalign_example_plugin.algos:RankGRPO", "is the class RankGRPO, not a visalign.rewards.Reward subclass"),
    (ALGORITHMS, "visalign_example_plugin.rewards:Saturation", "is the class Saturation, not a "
     "visalign.algorithms.Algorithm subclass"),
    (ALGORITHMS, "visalign_example_plugin.algos:RankGRPOConfig", "not a visalign.algorithms.Algorithm subclass"),
    (MODELS, "visalign_example_plugin.rewards:__doc__", "is a str, not a function or class"),
    (REWARDS, "nosuchpkg_x.rewards:X", "No module named 'nosuchpkg_x'"),
])
def test_module_spec_errors_are_one_line(plugin, registry, name, message):
    with pytest.raises(RegistryError) as e:
        registry.get(name)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_reward_instance_or_a_factory_returning_something_else_is_refused(plugin, monkeypatch):
    import visalign_example_plugin.rewards as mod

    monkeypatch.setattr(mod, "INSTANCE", mod.Saturation(), raising=False)
    monkeypatch.setattr(mod, "broken", lambda: 3, raising=False)
    with pytest.raises(RegistryError, match="is a Saturation instance; name its class"):
        REWARDS.get("visalign_example_plugin.rewards:INSTANCE")
    with pytest.raises(ValueError, match="returned a int, not a visalign.rewards.Reward"):
        load_reward("visalign_example_plugin.rewards:broken")


# -------------------------------------------------------------------------------------------- Protocols


def test_every_registered_reward_and_algorithm_satisfies_its_protocol():
    cheap = {"compressibility": {}, "incompressibility": {}, "geneval_s": {}, "geneval_s_learned": {},
             "combine": {"components": {"compressibility": {"weight": 1.0}}}, "remote": {"url": "http://127.0.0.1:9"}}
    for name, options in cheap.items():  # the others load hub weights; their classes are Reward subclasses too
        assert isinstance(load_reward(name, **options), protocols.RewardProtocol), name
    for name in ALGORITHMS.names():
        cls = ALGORITHMS.get(name)
        assert isinstance(cls(cls.config_cls()), protocols.AlgorithmProtocol), name


def test_builtin_and_diffusers_adapters_and_policies_satisfy_their_protocols(tiny_flow_model, tiny_vpred_model):
    from visalign.testbed.models.builtin import ShapesDiffusionAdapter, ShapesFlowAdapter
    from visalign.models.registry import load_model
    from visalign.policies import make_policy

    adapters = {"flow": ShapesFlowAdapter(tiny_flow_model), "diffusion": ShapesDiffusionAdapter(tiny_vpred_model),
                "autoregressive": load_model("builtin:shapes-ar"), "sd3": load_model("builtin:shapes-sd3"),
                "sd15": load_model("builtin:shapes-sd15")}
    for name, a in adapters.items():
        assert protocols.adapter_problem(a) is None, name
        assert isinstance(a, protocols.ADAPTER_PROTOCOLS[a.family]), name
        policy = make_policy(a)
        assert isinstance(policy, protocols.Policy), name
        assert isinstance(policy, protocols.DenoisingPolicyProtocol) is (a.family != "autoregressive"), name
    assert "lacks" in protocols.adapter_problem(type("Half", (), {"family": "flow"})())
    assert protocols.optional(object(), "default_shift") == 1.0 and protocols.optional(object(), "network_methods") == ()


def test_tiny_diffusers_adapters_satisfy_the_protocol():
    pytest.importorskip("diffusers")
    from visalign.models import tiny_diffusers
    from visalign.models.diffusers_adapter import adapter_for

    for kind in tiny_diffusers.KINDS:
        a = adapter_for(tiny_diffusers.build_tiny_pipeline(kind), resolution=32)
        assert protocols.adapter_problem(a) is None and isinstance(a, protocols.DenoisingAdapter), kind


# ----------------------------------------------------------------------- options checked before loading


@pytest.fixture
def no_loading(monkeypatch):
    """Any model load fails the test: the checks must come before."""
    import visalign.models.registry as reg
    import visalign.testbed.models.builtin as builtin

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the recipe's options were checked")

    monkeypatch.setattr(reg, "load_model", refuse)
    monkeypatch.setattr(builtin.ShapesModel, "from_pretrained", refuse)


@pytest.mark.parametrize("recipe,override,message", [
    ("geneval-s-grpo", "sampling.nope=1", "unknown key 'sampling.nope'; accepted: steps"),
    ("geneval-s-grpo", "sampling.noise_level=-1", "noise_level=-1 is out of range"),
    ("geneval-s-grpo", "sampling.eta=1", "unknown key 'sampling.eta'"),  # a DDIM key on a flow model
    ("geneval-s-ddpo", "sampling.noise_level=0.5", "unknown key 'sampling.noise_level'"),  # and the reverse
    ("geneval-s-ar-grpo", "sampling.kind=flow", "unknown step kind 'flow'"),
    ("geneval-s-sd3-grpo", "sampling.eta=1", "unknown key 'sampling.eta'"),  # a diffusers pipeline's family
    ("geneval-s-grpo", "algorithm_options.nope=1", "unknown key 'algorithm.grpo.nope'"),
    ("geneval-s-grpo", "algorithm_options.clip_range=abc", "clip_range='abc' must be a number"),
    ("geneval-s-grpo", "reward_options.nope=1", "reward 'geneval_s' does not take option 'nope'"),
    ("geneval-s-grpo", "reward_options.dense=maybe", "dense='maybe' must be true or false"),
    ("geneval-s-grpo", "model_options.nope=1", "model 'builtin:shapes-flow' does not take option 'nope'"),
])
def test_bad_options_fail_before_any_weights_load(no_loading, recipe, override, message):
    with pytest.raises(ConfigError) as e:
        load_train_recipe(recipe, [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_module_spec_options_are_checked_too(plugin, no_loading):
    base = ["model=visalign_example_plugin.models:tiny_flow", "reward=visalign_example_plugin.rewards:Saturation",
            "algorithm=visalign_example_plugin.algos:RankGRPO"]
    load_train_recipe("geneval-s-grpo", base + ["reward_options.power=2", "algorithm_options.scale=3"])
    for bad, message in [("reward_options.power=-1", "power=-1 is out of range"),
                         ("algorithm_options.nope=1", "unknown key 'algorithm.visalign_example_plugin.algos:RankGRPO.nope'"),
                         ("sampling.eta=1", "unknown key 'sampling.eta'"),  # the factory declares family = "flow"
                         ("model_options.depth=3", "does not take option 'depth'; accepted: width, seed")]:
        with pytest.raises(ConfigError) as e:
            load_train_recipe("geneval-s-grpo", [*base, bad])
        assert message in str(e.value), (bad, str(e.value))


def test_a_model_whose_family_is_not_known_cheaply_is_left_to_load_time(no_loading):
    assert model_family("diffusers:nobody/not-in-the-cache") is None
    load_train_recipe("geneval-s-grpo", ["model=diffusers:nobody/not-in-the-cache", "sampling.nope=1"])


# --------------------------------------------------------------------------------- compare's recipes


def test_compare_takes_its_algorithms_from_the_recipes(tmp_path, monkeypatch):
    import shutil

    import visalign.config as config
    from visalign import compare

    old = {"grpo": "geneval-s-grpo", "ddpo": "geneval-s-ddpo", "dpok": "geneval-s-ddpo", "nft": "geneval-s-nft",
           "rwr": "geneval-s-rwr", "diffusion_dpo": "geneval-s-diffusion-dpo", "online_dpo": "geneval-s-online-dpo",
           "refl": "geneval-s-refl", "draft": "geneval-s-draft", "alignprop": "geneval-s-alignprop"}
    assert sorted(compare.compare_recipes()) == sorted(old)  # what compare.py listed by hand before
    assert {a: compare.recipe_for(a, "builtin:shapes-flow") for a in old} == old
    assert compare.recipe_for("dpok", "builtin:shapes-ar") == "geneval-s-ar-dpok"
    assert compare.recipe_for("dpok", "builtin:shapes-sd15?dtype=fp32") == "geneval-s-sd15-dpok"
    assert compare.recipe_for("grpo", "builtin:shapes-ddpm") == "geneval-s-grpo"  # any_model: sampler carried over
    # a new recipe joins compare by its compare block alone
    recipes = tmp_path / "recipes"
    shutil.copytree(config.RECIPES_DIR, recipes)
    (recipes / "geneval-s-mine.yaml").write_text("kind: train\nmodel: builtin:shapes-flow\nalgorithm: grpo\n"
                                                "algorithm_options: {kl_beta: 0.1}\ncompare:\n  algorithms: [my_grpo]\n"
                                                "  any_model: true\n")
    monkeypatch.setattr(config, "RECIPES_DIR", recipes)
    assert compare.parse_spec("my_grpo:clip_range=0.1")[:2] == ("my_grpo", {"clip_range": 0.1})
    assert compare.recipe_for("my_grpo", "builtin:shapes-ar") == "geneval-s-mine"
    with pytest.raises(ConfigError, match="cannot compare 'nope'; accepted: alignprop, ddpo"):
        compare.parse_spec("nope")
    (recipes / "geneval-s-mine2.yaml").write_text("kind: train\nalgorithm: grpo\ncompare: {algorithms: [my_grpo], "
                                                 "any_model: true}\n")
    with pytest.raises(ConfigError, match="geneval-s-mine, geneval-s-mine2 all say compare.any_model for my_grpo"):
        compare.recipe_for("my_grpo", "builtin:shapes-flow")
    with pytest.raises(ConfigError, match="compare.any_model needs compare.algorithms"):
        load_train_recipe("geneval-s-grpo", ["compare.algorithms=[]"])
