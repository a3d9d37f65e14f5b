"""The testbed's pretraining recipe kinds in the core's registry (visalign/pretraining.py): what `visalign pretrain`
runs for a recipe's `kind`."""

from __future__ import annotations

from pathlib import Path

from visalign.config import ConfigError, build
from visalign.pretraining import PRETRAIN_KINDS, PretrainKind

from ..models import motion_pipelines as mp
from ..models import shapes_pipelines as sp
from ..models.ar import ARConfig
from ..models.builtin import ShapesModel, ShapesModelConfig
from ..models.reward_net import RewardNetConfig
from ..models.vq import VQConfig
from . import motion_pretrain, pipeline_pretrain, token_pretrain
from .pretrain import PretrainRecipe
from .reward_pretrain import RewardPretrainRecipe


def run_pretrain(data: dict, out: str | Path, log=print) -> None:
    """A built-in shapes or text UNet from scratch on fresh renders, or fine-tuned from `init` (kind pretrain)."""
    from visalign.models.registry import load_model

    from .pretrain import pretrain

    data = {k: v for k, v in data.items() if k != "kind"}
    recipe = build(PretrainRecipe, data)
    init = None
    if recipe.init:
        init = getattr(load_model(recipe.init), "module", None)
        if not isinstance(init, ShapesModel):
            raise ValueError(f"init model '{recipe.init}' is not a built-in shapes model; accepted: "
                             f"builtin:shapes-flow or builtin:shapes-flow?path=DIR")
    if init is not None and recipe.model:
        raise ConfigError(f"init '{recipe.init}' brings its own model config; remove model: {sorted(recipe.model)}")
    # typed, not from_dict (which lets a saved config's unknown keys pass): model.foo=3 is refused, not dropped
    model_cfg = init.config if init is not None else build(ShapesModelConfig, recipe.model, "model")
    pretrain(model_cfg, recipe.train, out, log=log, init=init)


def run_reward_pretrain(data: dict, out: str | Path, log=print) -> None:
    """The learned GenEval-S reward, not a generator (kind reward_pretrain)."""
    from .reward_pretrain import reward_pretrain

    recipe = build(RewardPretrainRecipe, {k: v for k, v in data.items() if k != "kind"})
    model_cfg = build(RewardNetConfig, recipe.model, "model")  # typed: an unknown or mistyped key is refused
    reward_pretrain(model_cfg, recipe.train, out, log=log)


PRETRAIN_KINDS.register("pretrain", "a built-in UNet (shapes or text task) on fresh renders")(
    PretrainKind(PretrainRecipe, ShapesModelConfig, run_pretrain))
PRETRAIN_KINDS.register("reward_pretrain", "the learned GenEval-S reward on the verifier's labels")(
    PretrainKind(RewardPretrainRecipe, RewardNetConfig, run_reward_pretrain,
                 done="reward model trained in {minutes:.1f} min; written to {out}"))
# the autoregressive family (VQ tokenizer, token GPT); the diffusers pipelines (VAE, SD3, SD1.5)
PRETRAIN_KINDS.register("vq_pretrain", "the VQ tokenizer of the token models")(
    PretrainKind(token_pretrain.TokenPretrainRecipe, VQConfig, token_pretrain.run_recipe))
PRETRAIN_KINDS.register("ar_pretrain", "the token GPT (with a layout plan for shapes)")(
    PretrainKind(token_pretrain.TokenPretrainRecipe, ARConfig, token_pretrain.run_recipe))
for _kind, _cfg, _doc in (("vae_pretrain", sp.VAEConfig, "the bundled pipelines' VAE"),
                          ("sd3_pretrain", sp.SD3Config, "the bundled StableDiffusion3Pipeline"),
                          ("sd15_pretrain", sp.SD15Config, "the bundled StableDiffusionPipeline")):
    PRETRAIN_KINDS.register(_kind, _doc)(PretrainKind(pipeline_pretrain.PipelinePretrainRecipe, _cfg,
                                                      pipeline_pretrain.run_recipe))
# the bundled text-to-video pipeline of GenEval-S Motion (Wan VAE, then the WanPipeline around it)
for _kind, _cfg, _doc in (("motion_vae_pretrain", mp.WanVAEConfig, "the bundled WanPipeline's video VAE"),
                          ("motion_wan_pretrain", mp.WanConfig, "the bundled WanPipeline (GenEval-S Motion)")):
    PRETRAIN_KINDS.register(_kind, _doc)(PretrainKind(motion_pretrain.MotionPretrainRecipe, _cfg,
                                                      motion_pretrain.run_recipe))
