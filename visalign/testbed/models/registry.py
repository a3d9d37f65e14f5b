"""The GenEval-S testbed's models in the core's registry: the oracle, the built-in UNets and token models, the bundled
diffusers pipelines (loaded through the core's `diffusers:` adapter), and a loader of saved built-in model folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np

from visalign.config import NonNegativeFloat, Range, check_options
from visalign.models.registry import BUNDLED_FOLDERS, BUNDLED_PIPELINES, MODEL_FOLDERS, MODELS, check_batch

from ..world import grammar, render
from .builtin import ShapesDiffusionAdapter, ShapesFlowAdapter, ShapesModel

WEIGHTS_DIR = Path(__file__).resolve().parent.parent.parent / "weights"  # visalign/weights: the bundled models


class OracleGenerator:
    """Renders each prompt exactly (a random scene satisfying it), optionally blurred and noised, or with
    `distractors` random objects nobody asked for beside it (what GenEval's rules let through and the exact
    reading does not): it measures the verifier, not a model."""

    parse = staticmethod(grammar.parse_prompt)  # the grammar its prompts are held to

    def __init__(self, resolution: Annotated[int, Range(ge=1, le=4096)] = 32, blur: NonNegativeFloat = 0.0,
                 noise: NonNegativeFloat = 0.0, distractors: int = 0):
        if distractors < 0:  # its own message (the CLI's tests read it); the other ranges are the annotations'
            raise ValueError(f"oracle: distractors must be >= 0, got {distractors}")
        self.resolution, self.blur, self.noise, self.distractors = resolution, blur, noise, distractors

    def generate(self, prompts: list[str], seeds: list[int]) -> np.ndarray:
        check_batch(prompts, seeds)
        out = []
        for p, s in zip(prompts, seeds):
            rng = np.random.default_rng(int(s))
            img = render.render(grammar.parse_prompt(p), rng, self.resolution, self.distractors)
            if self.blur or self.noise:
                img = render.perturb(img, rng, self.blur, self.noise)
            out.append(img)
        return np.stack(out)


# the class itself: load_model types its options from its __init__'s annotations
MODELS.register("oracle", "renders the prompt exactly (options: blur, noise, resolution, distractors: random objects "
                "nobody asked for beside it)")(OracleGenerator)


def builtin_adapter(model: ShapesModel):
    """The policy adapter of a built-in model: by what it predicts."""
    return (ShapesFlowAdapter if model.config.prediction == "velocity" else ShapesDiffusionAdapter)(model)


@MODELS.register("builtin:shapes-flow", "bundled 2.7M-param rectified-flow UNet, 32x32 (option: path)")
def _shapes_flow(path: str | None = None):
    return ShapesFlowAdapter(ShapesModel.from_pretrained(path or WEIGHTS_DIR / "shapes-flow"))


@MODELS.register("builtin:shapes-ddpm", "bundled 2.7M-param v-prediction DDPM UNet (cosine schedule), 32x32 "
                 "(option: path)")
def _shapes_ddpm(path: str | None = None):
    return ShapesDiffusionAdapter(ShapesModel.from_pretrained(path or WEIGHTS_DIR / "shapes-ddpm"))


@MODELS.register("builtin:text-flow", "bundled 0.68M-param rectified-flow UNet of the text task: signs that say a "
                 "1-4 letter word, 32x64 (option: path)")
def _text_flow(path: str | None = None):
    return ShapesFlowAdapter(ShapesModel.from_pretrained(path or WEIGHTS_DIR / "text-flow"))


@MODELS.register("builtin:shapes-ar", "bundled autoregressive GPT over 8x8 VQ tokens (builtin:shapes-vq) with an "
                 "optional layout plan (options: path, tokenizer, temperature, top_k, plan)")
def _shapes_ar(path: str | None = None, tokenizer: str | None = None, **sampling):
    default_tokenizer = WEIGHTS_DIR / "shapes-vq" if path is None else None  # a saved model carries its own
    return _token_model("builtin:shapes-ar", path or WEIGHTS_DIR / "shapes-ar", tokenizer or default_tokenizer,
                        sampling, ("temperature", "top_k", "plan"))


@MODELS.register("builtin:text-ar", "bundled autoregressive GPT of the text task: signs as 8x16 VQ tokens "
                 "(builtin:text-vq) (options: path, temperature, top_k)")
def _text_ar(path: str | None = None, **sampling):
    tokenizer = WEIGHTS_DIR / "text-vq" if path is None else None  # a saved model carries its own
    return _token_model("builtin:text-ar", path or WEIGHTS_DIR / "text-ar", tokenizer, sampling, ("temperature", "top_k"))


def _token_model(name: str, path, tokenizer, sampling: dict, accepted: tuple[str, ...]):
    """A GPT folder (+ its tokenizer; default PATH/tokenizer) with sampling defaults overridden by options."""
    import dataclasses

    from .ar import load_ar

    unknown = sorted(set(sampling) - set(accepted))
    if unknown:
        raise ValueError(f"{name} does not take options {unknown}; accepted: path, "
                         f"{'tokenizer, ' if 'plan' in accepted else ''}{', '.join(accepted)}")
    adapter = load_ar(path, tokenizer)
    sampling = check_options(type(adapter.config), sampling, f"model '{name}'")  # types (a number is a number)
    adapter.config = adapter.model.config = dataclasses.replace(adapter.config, **sampling)  # checked by ARSampling
    return adapter


@MODELS.register("builtin:shapes-sd3", "bundled StableDiffusion3Pipeline of the shapes world (MMDiT over builtin:shapes-vae "
                 "latents, two CLIP text encoders, no T5; 3.7M params), loaded by the diffusers adapter as a user's "
                 "SD3 is (options: path, dtype, max_sequence_length)")
def _shapes_sd3(path: str | None = None, **opts):
    return _bundled_pipeline("shapes-sd3", path, **opts)


@MODELS.register("builtin:shapes-sd15", "bundled StableDiffusionPipeline of the shapes world (UNet2DConditionModel "
                 "over builtin:shapes-vae latents, one CLIP text encoder, v-prediction DDIM; 4.0M params), loaded by the "
                 "diffusers adapter as a user's SD1.5 is (options: path, dtype)")
def _shapes_sd15(path: str | None = None, **opts):
    return _bundled_pipeline("shapes-sd15", path, **opts)


def _bundled_pipeline(folder: str, path: str | None, **opts):
    """A bundled pipeline folder (or `path`), through the diffusers adapter a user's pipeline takes."""
    from visalign.models.diffusers_adapter import load_diffusers

    adapter = load_diffusers(str(path or WEIGHTS_DIR / folder), **opts)
    adapter.parse_prompt = grammar.parse_prompt  # its tokenizer knows only the world's words: prompts held to them
    return adapter


MOTION_WAN_COMMANDS = ("visalign pretrain motion-vae-pretrain --out visalign/weights/motion-vae, then visalign "
                      "pretrain motion-wan-pretrain --out visalign/weights/motion-wan")


@MODELS.register("builtin:motion-wan", "bundled WanPipeline of GenEval-S Motion: 9-frame 32x32 clips (a "
                 "WanTransformer3DModel over AutoencoderKLWan latents, a UMT5 text encoder), loaded by the diffusers "
                 "adapter as a user's Wan is (options: path, dtype)")
def _motion_wan(path: str | None = None, **opts):
    """The bundled Motion pipeline folder (or `path`). Its weights are trained by the two motion recipes, not
    shipped with the code that builds them: a missing folder is one line naming the commands that write it."""
    from visalign.models.diffusers_adapter import load_diffusers

    from ..motion import grammar as motion_grammar

    folder = Path(path) if path else WEIGHTS_DIR / "motion-wan"
    if not (folder / "model_index.json").is_file():
        if path:
            raise ValueError(f"builtin:motion-wan: {folder} holds no pipeline (model_index.json); give a folder "
                             f"`visalign pretrain motion-wan-pretrain --out DIR` wrote")
        raise ValueError(f"builtin:motion-wan: its weights are not in {folder} yet; train them with "
                         f"{MOTION_WAN_COMMANDS}")
    adapter = load_diffusers(str(folder), **opts)
    adapter.parse_prompt = motion_grammar.parse_prompt  # its tokenizer knows only the Motion words
    return adapter


def _folder_options(device: str = "cpu"):
    """The options of a saved built-in model folder (ShapesModel.from_pretrained's, but its path)."""


# diffusers pipeline folders in WEIGHTS_DIR
BUNDLED_PIPELINES.extend(["builtin:shapes-sd3", "builtin:shapes-sd15", "builtin:motion-wan"])
BUNDLED_FOLDERS.update({name: WEIGHTS_DIR / name.split(":", 1)[1] for name in (
    "builtin:shapes-flow", "builtin:shapes-ddpm", "builtin:text-flow", "builtin:shapes-ar", "builtin:text-ar",
    *BUNDLED_PIPELINES)})


@MODEL_FOLDERS.register("builtin", "a built-in model saved with save_pretrained (a token model with its tokenizer)")
def _builtin_folder(name: str, **opts):
    from .ar import TOKENIZER_DIR

    if (Path(name) / TOKENIZER_DIR).is_dir():  # a token model saved with its tokenizer (models/ar.py)
        return _shapes_ar(path=name, **opts)
    opts = check_options(_folder_options, opts, f"model folder '{name}'")  # ?bogus=1: one line
    return builtin_adapter(ShapesModel.from_pretrained(name, **opts))


# each built-in factory's policy family: load_train_recipe checks a recipe's sampling keys against it before any
# weights load (models/registry.py model_family)
for _factory, _family in ((_shapes_flow, "flow"), (_shapes_ddpm, "diffusion"), (_text_flow, "flow"),
                          (_shapes_ar, "autoregressive"), (_text_ar, "autoregressive"), (_shapes_sd3, "flow"),
                          (_shapes_sd15, "diffusion"), (_motion_wan, "flow")):
    _factory.family = _family
