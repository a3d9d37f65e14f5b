"""The built-in shapes-world generators: our tokenizer + text encoder + UNet, stored as a JSON config and a
safetensors file, loaded with `ShapesModel.from_pretrained(path)`.

`prediction` says what the network predicts: "velocity" (rectified flow, builtin:shapes-flow), or, for a
DDPM on the cosine schedule, "epsilon" or "v_prediction" (v = sqrt(ab) eps - sqrt(1 - ab) x0, Salimans & Ho,
2022; builtin:shapes-ddpm). The network works on images in [-1, 1], [B, 3, H, W], with no autoencoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from visalign.config import NonNegativeInt, PositiveInt
from visalign.math import schedules
from visalign.models.persist import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, Pretrained  # noqa: F401  (re-exported)
from .text import PARSERS, TextEncoder, check_task, make_tokenizer
from .unet import UNet

PREDICTIONS = ("velocity", "epsilon", "v_prediction")


@dataclass(frozen=True)
class ShapesModelConfig:
    prediction: str = "velocity"
    resolution: PositiveInt = 32  # image height (and width unless `width` is set)
    width: NonNegativeInt = 0  # image width; 0 = square (the text task's signs are 32 x 64)
    task: str = "shapes"  # the world task it draws: its prompt tokens and pretraining data (models/text.py TASKS)
    channels: tuple[PositiveInt, ...] = (32, 64, 128)
    attention: tuple[bool, ...] = (False, True, True)
    heads: PositiveInt = 4
    positional: bool = False  # position features in the attention blocks (models/unet.py; the text task)
    text_dim: PositiveInt = 128
    text_layers: PositiveInt = 2
    max_prompt_words: PositiveInt = 8
    # Sampling defaults that came with the training (what `visalign sample` uses unless told otherwise).
    sample_steps: PositiveInt = 20
    guidance_scale: float = 3.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction '{self.prediction}' is not one of {', '.join(PREDICTIONS)}")
        if not self.channels:
            raise ValueError("channels is empty; accepted: one width per UNet level, e.g. [32, 64, 128]")
        attended = {"text_dim": self.text_dim, f"channels[{len(self.channels) - 1}]": self.channels[-1]}  # + mid
        attended.update({f"channels[{i}]": c for i, (c, a) in enumerate(zip(self.channels, self.attention)) if a})
        split = [f"{k}={v}" for k, v in attended.items() if v % self.heads]
        if split:  # each attention splits its width into `heads` parts
            raise ValueError(f"heads={self.heads} does not divide {', '.join(split)}; accepted: heads dividing "
                             f"text_dim and the widths of the attention levels")
        for name, size in (("resolution", self.resolution), ("width", self.width)):
            if size % (2 ** len(self.channels)) != 0:
                raise ValueError(
                    f"{name} {size} must be divisible by 2^{len(self.channels)} = "
                    f"{2 ** len(self.channels)} (one halving per UNet level)"
                )
        check_task(self.task)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the images the model draws."""
        return self.resolution, self.width or self.resolution

    @classmethod
    def from_dict(cls, d: dict) -> "ShapesModelConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("channels", "attention"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(**known)


@dataclass
class TextCondition:
    """Encoded prompts: tokens [B, L, D], mask [B, L] (True = real token), pooled [B, D]."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def __getitem__(self, idx) -> "TextCondition":
        return TextCondition(self.tokens[idx], self.mask[idx], self.pooled[idx])

    @staticmethod
    def cat(conds: list["TextCondition"]) -> "TextCondition":
        return TextCondition(*(torch.cat([getattr(c, f) for c in conds]) for f in ("tokens", "mask", "pooled")))


class ShapesModel(Pretrained, nn.Module):
    config_cls = ShapesModelConfig

    @classmethod
    def config_from_dict(cls, d: dict) -> ShapesModelConfig:
        return ShapesModelConfig.from_dict(d)

    def __init__(self, config: ShapesModelConfig):
        super().__init__()
        self.config = config
        self.tokenizer = make_tokenizer(config.task, config.max_prompt_words)
        self.text_encoder = TextEncoder(
            self.tokenizer.vocab_size, config.text_dim, config.text_layers, config.heads, config.max_prompt_words
        )
        self.unet = UNet(config.channels, config.attention, config.text_dim, config.heads,
                         positional=config.positional)

    def encode_prompts(self, prompts: list[str]) -> TextCondition:
        ids = self.tokenizer(prompts).to(self.device)
        tokens, pooled, mask = self.text_encoder(ids)
        return TextCondition(tokens, mask, pooled)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        """x [B, 3, H, W] in [-1, 1] noised to time t [B] in [0, 1] -> the prediction [B, 3, H, W]."""
        return self.unet(x, t, cond.tokens, cond.mask, cond.pooled)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the UNet blocks' activations in the backward (less memory per update, one more forward)."""
        self.unet.gradient_checkpointing = True

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.unet.gradient_checkpointing


class _ShapesAdapter:
    """A built-in model as a policy adapter: pixel space, so decode is a clamp."""

    predictions: tuple[str, ...] = ("velocity",)  # what the model may predict for this adapter
    # the network's methods besides forward that encode() calls: FSDP (distributed.py) gathers the sharded
    # parameters around them as around a forward
    network_methods: tuple[str, ...] = ("encode_prompts",)

    def __init__(self, model: ShapesModel):
        if model.config.prediction not in self.predictions:
            raise ValueError(f"a {self.family} adapter needs a {' or '.join(self.predictions)} model, this one "
                             f"predicts {model.config.prediction}")
        self.model = model
        self.latent_shape = (3, *model.config.image_size)
        self.default_steps = model.config.sample_steps
        self.default_guidance = model.config.guidance_scale

    @property
    def module(self) -> nn.Module:
        """The trainable network (full fine-tuning and LoRA act on it)."""
        return self.model

    def encode(self, prompts: list[str]) -> TextCondition:
        return self.model.encode_prompts(prompts)

    def parse_prompt(self, prompt: str):
        """The prompt's spec in the model's world task (a one-line PromptError for a prompt outside it)."""
        return PARSERS[self.model.config.task](prompt)

    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        return self.model(x, t, cond)

    def enable_gradient_checkpointing(self) -> None:
        """train.gradient_checkpointing: the UNet's blocks under torch.utils.checkpoint."""
        self.model.enable_gradient_checkpointing()

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-1, 1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return images.clamp(-1, 1).to(self.model.device)


class ShapesFlowAdapter(_ShapesAdapter):
    """builtin:shapes-flow for FlowPolicy: predict(x, sigma, cond) is the velocity."""

    family = "flow"
    predictions = ("velocity",)


class ShapesDiffusionAdapter(_ShapesAdapter):
    """builtin:shapes-ddpm for DiffusionPolicy: predict(x, t, cond) is epsilon or v at continuous time t in
    [0, 1] of the cosine schedule (math/schedules.py), the time the model was pretrained on."""

    family = "diffusion"
    predictions = ("epsilon", "v_prediction")
    clip_sample = 1.0  # pixel space: the clean image lies in [-1, 1]

    @property
    def prediction_type(self) -> str:
        return self.model.config.prediction

    def schedule(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (timesteps [T] the network's time at each step, alpha_bars [T+1] of every state, last = 1)."""
        t = torch.linspace(1.0, 0.0, steps + 1)
        return t[:-1], schedules.alpha_bar(t)

    def forward_noise(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u [B] in (0, 1) -> (the network's time [B], alpha_bar [B]) of a forward-process draw."""
        return u, schedules.alpha_bar(u)
