"""The shapes world as real diffusers pipelines, built from configs here and trained by `visalign pretrain`
(pretrain/pipeline_pretrain.py):

  shapes-sd3   StableDiffusion3Pipeline: an SD3Transformer2DModel (MMDiT: joint text-image attention) over
               AutoencoderKL latents, SD3's two CLIPTextModelWithProjection encoders (T5 left out, as the
               pipeline allows: text_encoder_3=None) and FlowMatchEulerDiscreteScheduler;
  shapes-sd15  StableDiffusionPipeline: a UNet2DConditionModel over the same latents, one CLIPTextModel and a
               DDIMScheduler.

Each is saved as an ordinary pipeline folder (model_index.json and one folder per component, fp16
safetensors) that `StableDiffusion3Pipeline.from_pretrained(path)` loads and samples with no visalign import;
visalign loads the same folder through its `diffusers:` adapter. Beside model_index.json, `sampling.json`
holds the pipeline-call arguments the model was trained for (num_inference_steps, guidance_scale, and for
SD3 max_sequence_length, the number of all-zero T5 tokens the pipeline appends when T5 is left out):
`pipe(prompt, **json.load(open(path / "sampling.json")))`.

The tokenizers are CLIPTokenizers whose BPE merges are learned (the BPE algorithm, Sennrich et al. 2016) on
the world's words, so every word of the closed vocabulary is one token.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from visalign.models.pipeline_files import SAMPLING_NAME, quiet, read_sampling  # noqa: F401  (re-exported)

from ..world.vocab import vocabulary

KINDS = ("sd3", "sd15")
PIPELINES = {"sd3": "StableDiffusion3Pipeline", "sd15": "StableDiffusionPipeline"}


# ---------------------------------------------------------------------------------------------- tokenizer


def learn_merges(words: tuple[str, ...]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """BPE on the word list until every word is one symbol: repeatedly merge the most frequent adjacent pair
    (ties: the smaller pair). Encoding with the merges in this order reproduces the training segmentation,
    so each word becomes exactly one token. Symbols carry CLIP's end-of-word suffix '</w>'."""
    segs = [list(w[:-1]) + [w[-1] + "</w>"] for w in words]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for s in segs:
        for sym in s:
            vocab.setdefault(sym, len(vocab))
    merges = []
    while any(len(s) > 1 for s in segs):
        pairs = Counter((s[i], s[i + 1]) for s in segs for i in range(len(s) - 1))
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merges.append((a, b))
        vocab.setdefault(a + b, len(vocab))
        for k, s in enumerate(segs):
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            segs[k] = out
    return vocab, merges


def write_bpe_files(folder: Path) -> None:
    """vocab.json and merges.txt of the world tokenizer beside the tokenizer.json transformers 5 writes: the files
    transformers 4's CLIPTokenizer reads, so the pipeline folder loads with either."""
    vocab, merges = learn_merges(vocabulary())
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


def world_tokenizer(max_length: int = 12):
    """A CLIPTokenizer over the shapes world's words (each one token), bos 0 and eos = pad 1; `max_length`
    tokens with bos and eos (the longest prompt has 8 words)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_bpe_files(Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=max_length, local_files_only=True)


# ------------------------------------------------------------------------------------------------ configs


@dataclass(frozen=True)
class VAEConfig:
    """AutoencoderKL of the 32x32 renders: one level per width, one halving between levels (two levels:
    16x16 latents, three: 8x8)."""

    channels: tuple[int, ...] = (16, 32)
    latent_channels: int = 4
    layers_per_block: int = 1
    norm_groups: int = 8
    mid_attention: bool = False  # self-attention in the middle block (at 16x16 it costs a third of a step)
    resolution: int = 32


@dataclass(frozen=True)
class TextConfig:
    """One CLIP text encoder (SD3 has two of these; their hidden states are concatenated)."""

    dim: int = 64
    layers: int = 2
    heads: int = 4
    projection: int = 64
    max_length: int = 12  # tokens with bos and eos


@dataclass(frozen=True)
class SD3Config:
    heads: int = 4
    head_dim: int = 32  # width = heads x head_dim
    layers: int = 4
    patch: int = 2  # latent patch side: (16 / 2)^2 = 64 image tokens
    shift: float = 1.0  # the scheduler's sigma shift (SD3 at 1024 px: 3; 32x32 renders need none)
    text: TextConfig = field(default_factory=TextConfig)
    steps: int = 20  # sampling defaults written to sampling.json
    guidance: float = 4.0
    max_sequence_length: int = 1  # all-zero T5 tokens the pipeline appends (T5 left out); trained with these


@dataclass(frozen=True)
class SD15Config:
    channels: tuple[int, ...] = (64, 128)  # UNet widths per level over the latents
    attention_head_dim: int = 8
    layers_per_block: int = 1
    norm_groups: int = 8
    prediction: str = "v_prediction"  # epsilon | v_prediction
    text: TextConfig = field(default_factory=TextConfig)
    steps: int = 20
    guidance: float = 4.0


def config_from_dict(cls, d: dict):
    """A config dataclass from a recipe's dict (lists become tuples; a nested 'text' dict a TextConfig); an
    unknown or mistyped key is one ValueError line naming the accepted ones."""
    kw = {}
    for k, v in d.items():
        if k not in cls.__dataclass_fields__:
            raise ValueError(f"{cls.__name__} has no field '{k}'; accepted: {', '.join(cls.__dataclass_fields__)}")
        kw[k] = config_from_dict(TextConfig, v) if k == "text" else tuple(v) if isinstance(v, list) else v
    return cls(**kw)


# ----------------------------------------------------------------------------------------------- builders


def build_vae(cfg: VAEConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n, block_out_channels=list(cfg.channels),
        layers_per_block=cfg.layers_per_block, latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_groups,
        mid_block_add_attention=cfg.mid_attention, sample_size=cfg.resolution,
        scaling_factor=1.0, shift_factor=0.0,  # measured after training (SD3's way)
    )


def _clip(cls, cfg: TextConfig, vocab_size: int):
    from transformers import CLIPTextConfig

    return cls(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=cfg.dim, intermediate_size=4 * cfg.dim, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, projection_dim=cfg.projection, max_position_embeddings=cfg.max_length,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_act="gelu",
    ))


def build_sd3(cfg: SD3Config, vae):
    """An untrained StableDiffusion3Pipeline around a (trained) VAE. The two CLIPs' hidden states, concatenated
    (2 x text.dim), are the joint-attention input (no T5 to pad them to); their pooled projections,
    concatenated, the pooled conditioning."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    latent_side = vae.config.sample_size // 2 ** (len(vae.config.block_out_channels) - 1)
    width = cfg.heads * cfg.head_dim
    transformer = SD3Transformer2DModel(
        sample_size=latent_side, patch_size=cfg.patch, in_channels=vae.config.latent_channels,
        out_channels=vae.config.latent_channels, num_layers=cfg.layers, attention_head_dim=cfg.head_dim,
        num_attention_heads=cfg.heads, joint_attention_dim=2 * cfg.text.dim, caption_projection_dim=width,
        pooled_projection_dim=2 * cfg.text.projection, pos_embed_max_size=latent_side // cfg.patch,
    )
    tok, tok2 = world_tokenizer(cfg.text.max_length), world_tokenizer(cfg.text.max_length)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=cfg.shift), vae=vae,
        text_encoder=_clip(CLIPTextModelWithProjection, cfg.text, len(tok)), tokenizer=tok,
        text_encoder_2=_clip(CLIPTextModelWithProjection, cfg.text, len(tok2)), tokenizer_2=tok2,
        text_encoder_3=None, tokenizer_3=None,
    )


def build_sd15(cfg: SD15Config, vae):
    """An untrained StableDiffusionPipeline around a (trained) VAE: cross-attention at every UNet level but the
    first, a DDIM scheduler on the cosine schedule with trailing timesteps (the first step starts from noise)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    if cfg.prediction not in ("epsilon", "v_prediction"):
        raise ValueError(f"sd15 prediction '{cfg.prediction}' is not one of epsilon, v_prediction")
    n = len(cfg.channels)
    latent_side = vae.config.sample_size // 2 ** (len(vae.config.block_out_channels) - 1)
    unet = UNet2DConditionModel(
        sample_size=latent_side, in_channels=vae.config.latent_channels, out_channels=vae.config.latent_channels,
        block_out_channels=list(cfg.channels), layers_per_block=cfg.layers_per_block,
        down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1),
        up_block_types=["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"], cross_attention_dim=cfg.text.dim,
        attention_head_dim=cfg.attention_head_dim, norm_num_groups=cfg.norm_groups,
    )
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=cfg.prediction, clip_sample=False,
                              set_alpha_to_one=True, timestep_spacing="trailing", steps_offset=1)
    tok = world_tokenizer(cfg.text.max_length)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=_clip(CLIPTextModel, cfg.text, len(tok)), tokenizer=tok, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, image_encoder=None,
        requires_safety_checker=False,
    )


def sampling_defaults(cfg: SD3Config | SD15Config) -> dict:
    """The pipeline-call arguments of sampling.json."""
    out = {"num_inference_steps": cfg.steps, "guidance_scale": cfg.guidance}
    if isinstance(cfg, SD3Config):
        out["max_sequence_length"] = cfg.max_sequence_length
    return out


# ------------------------------------------------------------------------------------------------- saving


def _replace_dir(write, out: Path) -> None:
    """write(tmp) into a temp folder next to `out`, then swap it in: a crash leaves the old folder or the new
    one, never half of either."""
    out = Path(out)
    ours = any((out / n).is_file() for n in ("model_index.json", "config.json"))
    if out.is_dir() and any(out.iterdir()) and not ours:
        raise ValueError(f"{out} is a folder that holds something other than a saved model; give an empty or new "
                         f"folder (or one this command wrote before)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    old = out.parent / f".{out.name}.old"
    try:
        write(tmp)
        if out.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        for p in (tmp, old):
            if p.exists():
                shutil.rmtree(p)


def _half_copy(module: torch.nn.Module, dtype: torch.dtype | None):
    """A copy of `module` in `dtype` (None: as it is), leaving the trained one as it was."""
    import copy

    return copy.deepcopy(module).to(dtype) if dtype is not None else module


def save_vae(vae, out: str | Path, dtype: torch.dtype | None = torch.float16) -> None:
    with quiet():
        _replace_dir(lambda tmp: _half_copy(vae, dtype).save_pretrained(tmp, safe_serialization=True), Path(out))


def save_pipeline(pipe, out: str | Path, sampling: dict, dtype: torch.dtype | None = torch.float16) -> None:
    """pipe.save_pretrained plus sampling.json, swapped in whole. The diffusers networks (VAE, transformer or
    UNet) are stored in `dtype` (fp16: the bundle); the text encoders stay fp32 (0.2M params each): diffusers
    loads its models in fp32 unless told otherwise but transformers loads the dtype it finds, so fp32 text
    encoders make a plain `from_pretrained(path)` without torch_dtype one dtype throughout."""

    def write(tmp: Path) -> None:
        parts = {name: _half_copy(m, None if name.startswith("text_encoder") else dtype)
                 for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
        flags = {k: pipe.config[k] for k in ("requires_safety_checker",) if k in pipe.config}  # not a component
        saved = type(pipe)(**{**pipe.components, **parts}, **flags)
        saved.save_pretrained(tmp, safe_serialization=True)
        (tmp / SAMPLING_NAME).write_text(json.dumps(sampling, indent=2) + "\n")
        for name in ("tokenizer", "tokenizer_2"):
            if (tmp / name).is_dir():
                write_bpe_files(tmp / name)

    with quiet():
        _replace_dir(write, Path(out))
