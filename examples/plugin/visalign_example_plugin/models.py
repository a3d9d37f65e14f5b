"""A model factory (`model: visalign_example_plugin.models:tiny_flow?width=16`): keyword arguments are the model's
options, and it returns a model adapter (visalign.protocols: family, module, encode, predict, decode, ...). Here a
small randomly initialised built-in flow UNet; yours would load your network. Setting `family` on the factory lets
`load_train_recipe` check the recipe's `sampling` keys before anything is built."""

from __future__ import annotations

import torch

from visalign.config import PositiveInt
from visalign.testbed.models.builtin import ShapesFlowAdapter, ShapesModel, ShapesModelConfig


def tiny_flow(width: PositiveInt = 16, seed: int = 0):
    torch.manual_seed(seed)
    model = ShapesModel(ShapesModelConfig(resolution=16, channels=(width, 2 * width), attention=(False, True),
                                          text_dim=32, text_layers=1, heads=2, sample_steps=4))
    return ShapesFlowAdapter(model)


tiny_flow.family = "flow"
