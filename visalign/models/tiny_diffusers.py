"""Tiny diffusers pipelines with random weights, built offline from configs (as diffusers' own tests build
them): the real backends' code paths at 32x32 in about a second, for tests and benchmarks. Nothing is
downloaded: the tokenizers are made from files written here (docs/architecture.md#facts-the-testbed-relies-on).

    build_tiny_pipeline("sd15" | "sdxl" | "sd3" | "flux" | "wan" | "ltx", seed=0) -> a diffusers pipeline
    save_tiny_pipeline(kind, out_dir)  ->  `diffusers:<out_dir>` loads it
    python -m visalign.models.tiny_diffusers KIND OUT_DIR

Images are 32x32 (the VAEs halve once: 16x16 latents); the default resolution of each pipeline
(sample_size x vae_scale_factor) is 32, except FLUX, whose pipeline hardcodes 128 x vae_scale_factor
(pass resolution=32).

The video pipelines (WanPipeline, LTXPipeline) make 9-frame 32x32 videos: their VAEs compress 4x in space and
in time (latents [8, 3, 8, 8]). Their pipelines' own defaults are far larger (Wan 81 frames at 480 x 832), so a
saved video pipeline carries a sampling.json with VIDEO_SAMPLING (num_frames, height, width), which `diffusers:`
reads; with a built one pass num_frames=9, resolution=32.
"""

from __future__ import annotations

import json
import string
import sys
import tempfile
from pathlib import Path

import torch

KINDS = ("sd15", "sdxl", "sd3", "flux", "wan", "ltx")
VIDEO_KINDS = ("wan", "ltx")
RESOLUTION = 32  # image side; the latents are RESOLUTION / 2
LATENT_CHANNELS = 4
CLIP_MAX_LENGTH = 77
VIDEO_SAMPLING = {"num_frames": 9, "height": RESOLUTION, "width": RESOLUTION}  # a saved video pipeline's sampling.json


def clip_tokenizer():
    """A CLIPTokenizer over a character vocabulary: every printable character, alone and as a word end
    ("x</w>"), and a merges file holding only its header line (docs/architecture.md#facts-the-testbed-relies-on)."""
    from transformers import CLIPTokenizer

    chars = sorted(set(string.ascii_letters + string.digits + string.punctuation))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=CLIP_MAX_LENGTH, local_files_only=True)


def t5_tokenizer():
    """A T5 stand-in: PreTrainedTokenizerFast over a `tokenizers` character-level WordLevel model with
    pad (0), eos (1) and unk (2) tokens; eos is appended as T5 does."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for c in sorted(set(string.printable) - set("\t\n\r\x0b\x0c")):
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def _clip_config(hidden: int = 32, projection: int = 32, vocab: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden, intermediate_size=37,
        layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=vocab or 256,
        hidden_act="gelu", projection_dim=projection, max_position_embeddings=CLIP_MAX_LENGTH,
    )


def _t5_encoder(d_model: int):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=128, d_model=d_model, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(cfg).eval()


def _vae(**kw):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[8, 16], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=LATENT_CHANNELS, norm_num_groups=4, sample_size=RESOLUTION, **kw,
    )


def _ddim():
    from diffusers import DDIMScheduler

    # SD1.5's schedule (scaled_linear betas, "leading" spacing with steps_offset 1, no alpha-to-one)
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def _sd15():
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=RESOLUTION // 2, in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=4,
        norm_num_groups=4,
    )
    tok = clip_tokenizer()
    return StableDiffusionPipeline(
        unet=unet, scheduler=_ddim(), vae=_vae(), text_encoder=CLIPTextModel(_clip_config(vocab=len(tok))).eval(),
        tokenizer=tok, safety_checker=None, feature_extractor=None, image_encoder=None,
        requires_safety_checker=False,
    )


def _sdxl():
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=RESOLUTION // 2, in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 time ids x 8 + the pooled projection
        cross_attention_dim=64, norm_num_groups=4,
    )
    tok, tok2 = clip_tokenizer(), clip_tokenizer()
    return StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(_clip_config(vocab=len(tok))).eval(),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(vocab=len(tok2))).eval(),
        tokenizer=tok, tokenizer_2=tok2, unet=unet, scheduler=_ddim(), image_encoder=None, feature_extractor=None,
        force_zeros_for_empty_prompt=True, add_watermarker=False,
    )


def _sd3():
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    # the two CLIPs' projection_dim add up to pooled_projection_dim; their hidden states (32 + 32) are
    # padded to the T5 width, the joint attention dim
    transformer = SD3Transformer2DModel(
        sample_size=RESOLUTION // 2, patch_size=1, in_channels=LATENT_CHANNELS, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64,
        out_channels=LATENT_CHANNELS,
    )
    tok, tok2 = clip_tokenizer(), clip_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=CLIPTextModelWithProjection(_clip_config(vocab=len(tok))).eval(), tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(vocab=len(tok2))).eval(), tokenizer_2=tok2,
        text_encoder_3=_t5_encoder(64), tokenizer_3=t5_tokenizer(),
    )


def _flux(guidance_embeds: bool = True):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    # in_channels = 4 x the latent channels (2x2 packing); sum(axes_dims_rope) == attention_head_dim
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 6, 6],
        guidance_embeds=guidance_embeds,
    )
    tok = clip_tokenizer()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5,
        max_shift=1.15,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=_vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=CLIPTextModel(_clip_config(vocab=len(tok))).eval(), tokenizer=tok,
        text_encoder_2=_t5_encoder(32), tokenizer_2=t5_tokenizer(), transformer=transformer,
    )


def _latent_stats(n: int) -> tuple[list[float], list[float]]:
    """Per-channel latent mean / std that are not 0 / 1, so the tests see the normalisation applied."""
    return [round(0.1 * (i - n // 2), 4) for i in range(n)], [round(0.5 + 0.25 * i, 4) for i in range(n)]


def _wan():
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    # 4x spatial (two downsamples) and 4x temporal compression, as Wan's 1 + 4k frame rule: 9 frames -> 3 latent
    mean, std = _latent_stats(8)
    vae = AutoencoderKLWan(base_dim=16, z_dim=8, dim_mult=[1, 2, 2], num_res_blocks=1, attn_scales=[],
                           temperal_downsample=[True, True], scale_factor_temporal=4, scale_factor_spatial=4,
                           latents_mean=mean, latents_std=std)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=8, out_channels=8,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=1, rope_max_seq_len=32,
    )
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=128, d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)).eval()
    return WanPipeline(tokenizer=t5_tokenizer(), text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))


def _ltx():
    from diffusers import (AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline,
                           LTXVideoTransformer3DModel)

    # 4x spatial and temporal compression (LTX's own: 32x and 8x); patch size 1, as LTX-Video's
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1,
        patch_size_t=1, encoder_causal=True, decoder_causal=False,
    )
    mean, std = _latent_stats(8)
    with torch.no_grad():
        vae.latents_mean.copy_(torch.tensor(mean))
        vae.latents_std.copy_(torch.tensor(std))
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=1, caption_channels=32,
    )
    # LTX-Video's scheduler: resolution-dependent shift, the schedule stretched to end at sigma 0.1
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_image_seq_len=1024, max_image_seq_len=4096, base_shift=0.95, max_shift=2.05,
        shift_terminal=0.1,
    )
    return LTXPipeline(scheduler=scheduler, vae=vae, text_encoder=_t5_encoder(32), tokenizer=t5_tokenizer(),
                       transformer=transformer)


_BUILDERS = {"sd15": _sd15, "sdxl": _sdxl, "sd3": _sd3, "flux": _flux, "wan": _wan, "ltx": _ltx}


def build_tiny_pipeline(kind: str, seed: int = 0):
    """A tiny random-weight pipeline of `kind` (sd15 | sdxl | sd3 | flux | wan | ltx), deterministic in `seed`."""
    if kind not in _BUILDERS:
        raise ValueError(f"unknown tiny pipeline kind '{kind}'; accepted: {', '.join(KINDS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = _BUILDERS[kind]()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(kind: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny pipeline with save_pretrained; `diffusers:<out_dir>` loads it. A video pipeline's folder also
    gets a sampling.json with VIDEO_SAMPLING (its 9 frames at 32x32)."""
    from .pipeline_files import SAMPLING_NAME

    out = Path(out_dir)
    build_tiny_pipeline(kind, seed).save_pretrained(out)
    if kind in VIDEO_KINDS:
        (out / SAMPLING_NAME).write_text(json.dumps(VIDEO_SAMPLING, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in KINDS:
        print(f"usage: python -m visalign.models.tiny_diffusers {{{'|'.join(KINDS)}}} OUT_DIR", file=sys.stderr)
        return 2
    out = save_tiny_pipeline(argv[0], argv[1])
    print(f"wrote a tiny {argv[0]} pipeline to {out} (load it as diffusers:{out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
