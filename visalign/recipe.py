"""A train recipe resolved against the registries: `load_train_recipe` builds the typed TrainRecipe (config.py)
and checks every option before any weights load (`check_recipe_options`: the algorithm, reward, model and
sampler names and options). It sits above algorithms/, models/, policies/ and rewards/, which import config.py
(the typed dataclasses, Range, build and overrides) and never this module (docs/architecture.md, rules)."""

from __future__ import annotations

import dataclasses

from .algorithms.base import ALGORITHMS
from .config import ConfigError, TrainRecipe, apply_overrides, build, check_options, load_recipe_dict
from .models.registry import check_model_options, model_family, with_options
from .policies import POLICY_FAMILIES
from .rewards.base import REWARDS


def load_train_recipe(name_or_path: str, overrides: list[str] | None = None) -> tuple[TrainRecipe, dict]:
    """-> (the checked recipe, the resolved dict it was built from). Every option is checked here, before any
    weights load (check_recipe_options)."""
    data = apply_overrides(load_recipe_dict(name_or_path), overrides or [])
    kind = data.pop("kind", "train")
    if kind != "train":
        raise ConfigError(f"recipe '{name_or_path}' is a {kind} recipe; `visalign train` takes train recipes")
    recipe = build(TrainRecipe, data)
    check_recipe_options(recipe)
    return recipe, dataclasses.asdict(recipe)


def check_recipe_options(recipe: TrainRecipe) -> None:
    """A train recipe's options, checked without loading any weights (the names resolved in the registries, a
    `module:Name` imported): `algorithm_options` against the algorithm's config dataclass, `reward_options`
    against the reward factory's signature, `model_options` (and a spec's own) against the model factory's, and
    `sampling` against the Sampling dataclass of the model's family. The family is known cheaply for the built-in
    models, a diffusers pipeline whose model_index.json is local or in the hub cache, a saved built-in folder and
    a `module:factory` that sets `factory.family` (models/registry.py: model_family); for any other model (a hub id
    not downloaded yet, a factory without `family`) `sampling` is checked when the model has loaded (Trainer)."""
    algorithm = ALGORITHMS.get(recipe.algorithm)
    build(algorithm.config_cls, recipe.algorithm_options, f"algorithm.{recipe.algorithm}")
    check_options(REWARDS.get(recipe.reward), recipe.reward_options, f"reward '{recipe.reward}'")
    try:
        spec = with_options(recipe.model, recipe.model_options)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_model_options(spec)
    family = model_family(spec)
    if family in POLICY_FAMILIES:
        build(POLICY_FAMILIES[family].Sampling, recipe.sampling, "sampling")
