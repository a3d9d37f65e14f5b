"""GenEval-S Motion (testbed/motion: the shapes world as 9-frame 32x32 clips) as a real diffusers text-to-video
pipeline, built from configs here and trained by `visalign pretrain` (pretrain/motion_pretrain.py):

  motion-wan   WanPipeline: a WanTransformer3DModel (self-attention over the video's latent patches,
               cross-attention to the prompt, time modulation; Wan 2.1's layout) over AutoencoderKLWan latents
               (a causal 3D-convolution VAE), a UMT5EncoderModel and FlowMatchEulerDiscreteScheduler.

It is saved as an ordinary pipeline folder (model_index.json and one folder per component; transformer and VAE
in fp16 safetensors, the 0.1M-param text encoder in fp32) that `WanPipeline.from_pretrained(path)` loads and
samples with no visalign import; `sampling.json` beside model_index.json holds the call arguments the model was
trained for (num_inference_steps, guidance_scale, num_frames, height, width, and max_sequence_length, the prompt
length the text tokens are padded to: WanPipeline's default of 512 would attend over 500 padding tokens the model
never saw): `pipe(prompt, **json.load(open(path / "sampling.json")))`.

The tokenizer is a word-level PreTrainedTokenizerFast over the Motion vocabulary (each word one token, then eos;
pad 0 as T5's), stored as tokenizer.json, which transformers 4 and 5 both read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from visalign.models.pipeline_files import SAMPLING_NAME, quiet, read_sampling  # noqa: F401  (re-exported)

from ..motion.vocab import FRAMES, RESOLUTION, vocabulary
from .shapes_pipelines import _half_copy, _replace_dir

PIPELINE = "WanPipeline"
SPECIAL = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2: T5's pad and eos, then unk
TOKENIZER_CLASS = "PreTrainedTokenizerFast"  # the name transformers 4 and 5 both load tokenizer.json by


# ---------------------------------------------------------------------------------------------- tokenizer


def motion_tokenizer(max_length: int = 16):
    """A PreTrainedTokenizerFast over the Motion words: a `tokenizers` WordLevel model (lower-cased, split on
    whitespace, every vocabulary word one token, anything else <unk>) that appends eos as T5 does; padded with
    <pad> (id 0) to `max_length`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(SPECIAL)}
    for w in vocabulary():
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=max_length)


# ------------------------------------------------------------------------------------------------ configs


@dataclass(frozen=True)
class WanVAEConfig:
    """AutoencoderKLWan of the clips: `patch` x `patch` pixel blocks folded into channels first (Wan 2.2's VAE
    does this; 1: none), then one level per dim_mult entry with a 2x spatial halving between levels (two levels:
    32x32 -> 16x16 latents), each halving also halving time where temporal_downsample says (one: 9 frames -> 5
    latent frames, the first frame alone, then each pair). The encoder is causal in time: the first frame alone,
    then chunks of 4."""

    base_dim: int = 16
    z_dim: int = 8  # latent channels
    dim_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    temporal_downsample: tuple[bool, ...] = (True,)  # one entry per halving (len(dim_mult) - 1)
    patch: int = 1  # 1: no folding (the first level's convolutions run at full resolution)

    def __post_init__(self):
        if self.patch not in (1, 2, 4):
            raise ValueError(f"patch must be 1, 2 or 4, got {self.patch}")
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(f"temporal_downsample needs {len(self.dim_mult) - 1} entries (one per halving of "
                             f"dim_mult {list(self.dim_mult)}), got {list(self.temporal_downsample)}")
        t = 2 ** sum(map(bool, self.temporal_downsample))
        if t == 1:  # WanPipeline makes num_frames 1 + a multiple of the factor: 1 + 9 // 1 x 1 = 10 frames
            raise ValueError("temporal_downsample needs at least one true entry: without temporal compression "
                             f"WanPipeline draws {FRAMES + 1} frames where {FRAMES} are asked for")
        if (FRAMES - 1) % t:
            raise ValueError(f"{FRAMES} frames do not encode with {t}x temporal compression: frames - 1 must be a "
                             f"multiple of {t}")


@dataclass(frozen=True)
class UMT5Config:
    """The UMT5 text encoder (Wan's, at toy size): relative-position attention, gated-GELU feed-forward."""

    dim: int = 64
    layers: int = 2
    heads: int = 4
    ff_dim: int = 128
    max_length: int = 16  # tokens with eos: the pipeline's max_sequence_length (the longest prompt has 11 words)


@dataclass(frozen=True)
class WanConfig:
    """The WanTransformer3DModel (and its text encoder and sampling defaults)."""

    heads: int = 4
    head_dim: int = 32  # width = heads x head_dim
    layers: int = 4
    ffn_dim: int = 512
    freq_dim: int = 256  # sinusoidal features of the timestep
    patch: tuple[int, ...] = (1, 4, 4)  # (frames, height, width) of a latent patch: 16x16 latents -> 16 per frame
    shift: float = 1.0  # the scheduler's sigma shift (Wan at 480p: 3 to 5; 32x32 clips need none)
    text: UMT5Config = field(default_factory=UMT5Config)
    steps: int = 20  # sampling defaults written to sampling.json
    guidance: float = 4.0


# ----------------------------------------------------------------------------------------------- builders


def build_vae(cfg: WanVAEConfig):
    from diffusers import AutoencoderKLWan

    n = len(cfg.dim_mult) - 1
    channels = 3 * cfg.patch**2
    return AutoencoderKLWan(
        base_dim=cfg.base_dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult), num_res_blocks=cfg.num_res_blocks,
        attn_scales=[], temperal_downsample=[bool(t) for t in cfg.temporal_downsample],
        in_channels=channels, out_channels=channels, patch_size=cfg.patch if cfg.patch > 1 else None,
        scale_factor_temporal=2 ** sum(map(bool, cfg.temporal_downsample)), scale_factor_spatial=cfg.patch * 2**n,
        latents_mean=[0.0] * cfg.z_dim, latents_std=[1.0] * cfg.z_dim,  # measured after training
    )


def latent_shape(vae, frames: int = FRAMES, resolution: int = RESOLUTION) -> tuple[int, int, int, int]:
    """(channels, latent frames, height, width) of a clip's latents."""
    c = vae.config
    return (c.z_dim, (frames - 1) // c.scale_factor_temporal + 1, resolution // c.scale_factor_spatial,
            resolution // c.scale_factor_spatial)


def build_text_encoder(cfg: UMT5Config, vocab_size: int):
    from transformers import UMT5Config as HFConfig
    from transformers import UMT5EncoderModel

    return UMT5EncoderModel(HFConfig(
        vocab_size=vocab_size, d_model=cfg.dim, d_kv=cfg.dim // cfg.heads, d_ff=cfg.ff_dim, num_layers=cfg.layers,
        num_heads=cfg.heads, relative_attention_num_buckets=8, relative_attention_max_distance=cfg.max_length,
        feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        tie_word_embeddings=False, dropout_rate=0.0,  # trained from scratch on endless fresh prompts
    ))


def build_wan(cfg: WanConfig, vae):
    """An untrained WanPipeline around a (trained) VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    transformer = WanTransformer3DModel(
        patch_size=tuple(cfg.patch), num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim,
        in_channels=vae.config.z_dim, out_channels=vae.config.z_dim, text_dim=cfg.text.dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.layers,
    )
    tok = motion_tokenizer(cfg.text.max_length)
    return WanPipeline(tokenizer=tok, text_encoder=build_text_encoder(cfg.text, len(tok)), vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=cfg.shift), transformer=transformer)


def sampling_defaults(cfg: WanConfig) -> dict:
    """The pipeline-call arguments of sampling.json."""
    return {"num_inference_steps": cfg.steps, "guidance_scale": cfg.guidance, "num_frames": FRAMES,
            "height": RESOLUTION, "width": RESOLUTION, "max_sequence_length": cfg.text.max_length}


# ------------------------------------------------------------------------------------------------- saving


def save_vae(vae, out: str | Path, dtype: torch.dtype | None = torch.float16) -> None:
    with quiet():
        _replace_dir(lambda tmp: _half_copy(vae, dtype).save_pretrained(tmp, safe_serialization=True), Path(out))


def _portable_tokenizer(folder: Path) -> None:
    """Name the tokenizer class PreTrainedTokenizerFast where transformers 5 wrote its own TokenizersBackend (a
    name transformers 4 lacks), in the tokenizer's config and the pipeline's index."""
    cfg = folder / "tokenizer" / "tokenizer_config.json"
    d = json.loads(cfg.read_text())
    d["tokenizer_class"] = TOKENIZER_CLASS
    d.pop("backend", None)
    cfg.write_text(json.dumps(d, indent=2) + "\n")
    index = json.loads((folder / "model_index.json").read_text())
    index["tokenizer"] = ["transformers", TOKENIZER_CLASS]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def save_pipeline(pipe, out: str | Path, sampling: dict, dtype: torch.dtype | None = torch.float16) -> None:
    """pipe.save_pretrained plus sampling.json, swapped in whole. Transformer and VAE are stored in `dtype` (fp16:
    the bundle); the text encoder stays fp32 (0.1M params): diffusers loads its models in fp32 unless told
    otherwise but transformers loads the dtype it finds, so an fp32 text encoder makes a plain
    `WanPipeline.from_pretrained(path)` one dtype throughout."""
    from diffusers import WanPipeline

    def write(tmp: Path) -> None:
        parts = {name: _half_copy(m, None if name == "text_encoder" else dtype)
                 for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
        saved = WanPipeline(**{**pipe.components, **parts}, boundary_ratio=pipe.config.get("boundary_ratio"),
                            expand_timesteps=pipe.config.get("expand_timesteps", False))
        saved.save_pretrained(tmp, safe_serialization=True)
        (tmp / SAMPLING_NAME).write_text(json.dumps(sampling, indent=2) + "\n")
        _portable_tokenizer(tmp)

    with quiet():
        _replace_dir(write, Path(out))


def load_pipeline(path: str | Path):
    """A saved WanPipeline folder -> the pipeline in fp32 (fp16 weights upcast) and its sampling defaults."""
    from diffusers import WanPipeline

    with quiet():
        pipe = WanPipeline.from_pretrained(str(path), dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe, read_sampling(path)

