"""State-dict converters from the published reward checkpoints' own layouts to transformers modules, and the
loading helpers they share. Every conversion is checked key by key: a checkpoint that does not match names
its first missing and first unexpected key in one line (CheckpointMismatch), instead of loading half a model.

    openclip_to_clip(sd)         open_clip CLIP (HPSv2.1's ViT-H-14) -> (CLIPConfig, CLIPModel state dict)
    imagereward_to_blip(sd)      ImageReward-v1.0 (BLIP ViT-L + BERT with cross-attention + MLP head)
                                 -> (vision state dict, text state dict, head state dict)
    MLPHead                      the 768 -> 1024 -> 128 -> 64 -> 16 -> 1 head of the LAION aesthetic
                                 predictor and ImageReward (keys layers.0/2/4/6/7)
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's pixel statistics (open_clip, BLIP, ImageReward)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class CheckpointMismatch(ValueError):
    """A checkpoint's keys do not fit the module it is loaded into."""


def check_keys(expected, got, what: str) -> None:
    """Raise CheckpointMismatch naming the first missing and first unexpected keys (sorted)."""
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or unexpected:
        raise CheckpointMismatch(
            f"{what}: the checkpoint does not match: {len(missing)} missing keys (first: "
            f"{missing[0] if missing else '-'}), {len(unexpected)} unexpected keys (first: "
            f"{unexpected[0] if unexpected else '-'})")


def load_strict(module: nn.Module, sd: dict[str, torch.Tensor], what: str) -> nn.Module:
    """module.load_state_dict(sd) after check_keys, so a mismatch reads as one line."""
    check_keys(module.state_dict().keys(), sd.keys(), what)
    module.load_state_dict(sd)
    return module


def resolve_file(spec: str | Path, filename: str) -> Path:
    """A file given as a path, a folder holding `filename`, or a hub repo id whose `filename` is in the local
    hub cache. visalign never downloads a checkpoint file itself (a reward's local_files_only governs
    transformers' from_pretrained only): the user fetches it explicitly, e.g. `huggingface-cli download REPO
    FILE`, which puts it in the cache read here."""
    p = Path(spec)
    if p.is_file():
        return p
    if p.is_dir():
        if not (p / filename).is_file():
            raise FileNotFoundError(f"{p} holds no {filename}; give the file's path or a folder holding it")
        return p / filename
    from huggingface_hub import try_to_load_from_cache  # reads the cache only: no network call is made

    hit = try_to_load_from_cache(str(spec), filename)
    if isinstance(hit, str):
        return Path(hit)
    raise FileNotFoundError(f"'{spec}' is not a file, a folder holding {filename}, or a hub id whose {filename} is in "
                            f"the local hub cache; fetch it first (huggingface-cli download {spec} {filename}) or "
                            f"give its path")


def torch_state_dict(path: Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """A .pt/.pth/.bin state dict loaded with weights_only=True (tensors only, never code); `key` picks a
    nested dict (HPS's 'state_dict'); a leading 'module.' (DataParallel) is dropped."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if key is not None and isinstance(sd, dict) and key in sd:
        sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointMismatch(f"{path}: not a state dict of tensors" + (f" (looked under '{key}')" if key else ""))
    return {k.removeprefix("module."): v for k, v in sd.items()}


# ------------------------------------------------------------------------------------ open_clip -> CLIP

def _split_qkv(out: dict, prefix: str, t: torch.Tensor, kind: str) -> None:
    """nn.MultiheadAttention's fused in_proj_weight [3D, D] / in_proj_bias [3D] (q, k, v stacked in that
    order) -> q_proj, k_proj, v_proj weights / biases."""
    for name, part in zip(("q_proj", "k_proj", "v_proj"), t.chunk(3, 0)):
        out[f"{prefix}.{name}.{kind}"] = part.contiguous()


_OPENCLIP_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                   "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_OPENCLIP_TOP = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight", "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight", "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
_OPENCLIP_BUFFERS = ("attn_mask", "visual.attn_mask")  # causal-mask buffers some open_clip versions saved


def openclip_config(sd: dict[str, torch.Tensor], hidden_act: str = "gelu", vision_head_width: int = 64,
                    text_head_width: int = 64, eos_token_id: int = 49407, layer_norm_eps: float = 1e-5):
    """The CLIPConfig of an open_clip state dict, read from its shapes; heads = width / head width, which the
    shapes do not hold: open_clip's ViT-H-14 config (HPSv2) has vision head_width 80 (1280 / 16 heads) and
    text 64 (1024 / 16); OpenAI's ViT-L/14 has 64 in both. hidden_act: "gelu" for LAION-trained towers
    (ViT-H-14, HPSv2), "quick_gelu" for OpenAI's."""
    from transformers import CLIPConfig

    def layers(prefix):
        return 1 + max((int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(prefix)}(\d+)\.", k))), default=-1)

    try:
        conv, vpos = sd["visual.conv1.weight"], sd["visual.positional_embedding"]
        vw, patch, tw = conv.shape[0], conv.shape[-1], sd["token_embedding.weight"].shape[1]
        vision = dict(hidden_size=vw, intermediate_size=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                      num_hidden_layers=layers("visual.transformer.resblocks."), num_attention_heads=vw // vision_head_width,
                      patch_size=patch, image_size=patch * math.isqrt(vpos.shape[0] - 1), hidden_act=hidden_act,
                      layer_norm_eps=layer_norm_eps)
        text = dict(hidden_size=tw, intermediate_size=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                    num_hidden_layers=layers("transformer.resblocks."), num_attention_heads=tw // text_head_width,
                    vocab_size=sd["token_embedding.weight"].shape[0], max_position_embeddings=sd["positional_embedding"].shape[0],
                    hidden_act=hidden_act, layer_norm_eps=layer_norm_eps, eos_token_id=eos_token_id)
        proj = sd["visual.proj"].shape[1]
        if vw % vision_head_width or tw % text_head_width:
            raise CheckpointMismatch(f"open_clip widths {vw} (vision), {tw} (text) are not multiples of the head widths "
                                     f"{vision_head_width}, {text_head_width}")
    except KeyError as e:
        raise CheckpointMismatch(f"not an open_clip CLIP state dict: no key {e}") from None
    return CLIPConfig(vision_config=vision, text_config=text, projection_dim=proj)


def openclip_to_clip(sd: dict[str, torch.Tensor], **config_kw):
    """open_clip CLIP state dict -> (CLIPConfig, transformers CLIPModel state dict, keys it could not place).
    Both towers are pre-LN
    transformers with nn.MultiheadAttention's fused qkv (split here); open_clip's projections are x @ proj
    matrices [D, P], transformers' are Linear layers (weight [P, D]), hence the transposes."""
    config = openclip_config(sd, **config_kw)
    out, unexpected = {}, []
    for k, v in sd.items():
        if k in _OPENCLIP_BUFFERS:
            continue
        if k in _OPENCLIP_TOP:
            out[_OPENCLIP_TOP[k]] = v
        elif k == "visual.proj":
            out["visual_projection.weight"] = v.t().contiguous()
        elif k == "text_projection":
            out["text_projection.weight"] = v.t().contiguous()
        elif m := re.match(r"(visual\.)?transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$", k):
            tower = "vision_model" if m.group(1) else "text_model"
            prefix = f"{tower}.encoder.layers.{m.group(2)}"
            if m.group(3) in _OPENCLIP_BLOCK:
                out[f"{prefix}.{_OPENCLIP_BLOCK[m.group(3)]}.{m.group(4)}"] = v
            else:
                unexpected.append(k)
        elif m := re.match(r"(visual\.)?transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", k):
            tower = "vision_model" if m.group(1) else "text_model"
            _split_qkv(out, f"{tower}.encoder.layers.{m.group(2)}.self_attn", v, m.group(3))
        else:
            unexpected.append(k)
    return config, out, unexpected


def load_openclip_as_clip(sd: dict[str, torch.Tensor], **config_kw):
    """open_clip state dict -> a transformers CLIPModel in eval mode, every key checked (missing keys by
    their transformers names, unexpected ones by their open_clip names)."""
    from transformers import CLIPModel

    config, hf, unexpected = openclip_to_clip(sd, **config_kw)
    model = CLIPModel(config)
    check_keys(model.state_dict().keys(), set(hf) | set(unexpected), "open_clip -> CLIPModel")
    model.load_state_dict(hf)
    return model.eval()


# ------------------------------------------------------------------------------------------ MLP head

class MLPHead(nn.Module):
    """The LAION improved aesthetic predictor's MLP (Schuhmann, 2022), reused as ImageReward's head (Xu et al.,
    2023): linear layers with dropout between them and no activation, so at inference it is one affine map,
    kept layer by layer so the published state dicts (layers.0/2/4/6/7) load as they are."""

    def __init__(self, in_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                    nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(-1)  # [B, in_dim] -> [B]

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], what: str = "MLP head") -> "MLPHead":
        if "layers.0.weight" not in sd:
            check_keys(cls(8).state_dict().keys(), sd.keys(), what)  # names the missing layers.0.weight
        return load_strict(cls(sd["layers.0.weight"].shape[1]), sd, what).eval()


# ------------------------------------------------------------------------------- ImageReward -> BLIP

_BLIP_VISION_TOP = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding",
                    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
                    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
                    "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}
_BLIP_VISION_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv",
                      "attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def imagereward_to_blip(sd: dict[str, torch.Tensor]):
    """ImageReward's state dict (keys blip.visual_encoder.*, blip.text_encoder.*, mlp.layers.*) -> state dicts
    for transformers' BlipVisionModel, BlipTextModel (add_pooling_layer=False) and MLPHead. BLIP's ViT (timm
    layout: blocks.N.attn.qkv fused, as transformers' BLIP keeps it) is renamed; its BERT text encoder is the
    same med.py code transformers ported, so those keys only lose their prefix. position_ids buffers are
    dropped; any other key outside the three parts is reported as unexpected by the caller's check."""
    vision, text, head, other = {}, {}, {}, []
    for k, v in sd.items():
        if k.endswith("position_ids"):
            continue
        if k.startswith("blip.visual_encoder."):
            rest = k[len("blip.visual_encoder."):]
            if rest in _BLIP_VISION_TOP:
                vision[_BLIP_VISION_TOP[rest]] = v
            elif (m := re.match(r"blocks\.(\d+)\.(.+)\.(weight|bias)$", rest)) and m.group(2) in _BLIP_VISION_BLOCK:
                vision[f"encoder.layers.{m.group(1)}.{_BLIP_VISION_BLOCK[m.group(2)]}.{m.group(3)}"] = v
            else:
                other.append(k)
        elif k.startswith("blip.text_encoder."):
            text[k[len("blip.text_encoder."):]] = v
        elif k.startswith("mlp."):
            head[k[len("mlp."):]] = v
        else:
            other.append(k)
    return vision, text, head, other


def imagereward_configs(sd: dict[str, torch.Tensor], vision_heads: int | None = None, text_heads: int | None = None):
    """BlipVisionConfig and BlipTextConfig of an ImageReward state dict, from its shapes (ImageReward-v1.0:
    ViT-L/16 at 224, 24 layers, 16 heads, eps 1e-6; BERT-base, 12 layers, 12 heads, cross-attention to
    the 1024-wide image tokens). Heads default to width / 64, as in both originals."""
    from transformers.models.blip.configuration_blip import BlipTextConfig, BlipVisionConfig

    def layers(prefix):
        return 1 + max((int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(prefix)}(\d+)\.", k))), default=-1)

    try:
        conv, pos = sd["blip.visual_encoder.patch_embed.proj.weight"], sd["blip.visual_encoder.pos_embed"]
        vw, tw = conv.shape[0], sd["blip.text_encoder.embeddings.word_embeddings.weight"].shape[1]
        vision = BlipVisionConfig(
            hidden_size=vw, intermediate_size=sd["blip.visual_encoder.blocks.0.mlp.fc1.weight"].shape[0],
            num_hidden_layers=layers("blip.visual_encoder.blocks."), num_attention_heads=vision_heads or vw // 64,
            patch_size=conv.shape[-1], image_size=conv.shape[-1] * math.isqrt(pos.shape[1] - 1), hidden_act="gelu",
            layer_norm_eps=1e-6)
        text = BlipTextConfig(
            hidden_size=tw, vocab_size=sd["blip.text_encoder.embeddings.word_embeddings.weight"].shape[0],
            intermediate_size=sd["blip.text_encoder.encoder.layer.0.intermediate.dense.weight"].shape[0],
            num_hidden_layers=layers("blip.text_encoder.encoder.layer."), num_attention_heads=text_heads or tw // 64,
            encoder_hidden_size=vw, hidden_act="gelu", layer_norm_eps=1e-12,
            max_position_embeddings=sd["blip.text_encoder.embeddings.position_embeddings.weight"].shape[0])
    except KeyError as e:
        raise CheckpointMismatch(f"not an ImageReward (BLIP) state dict: no key {e}") from None
    return vision, text


def load_imagereward(sd: dict[str, torch.Tensor], **config_kw):
    """ImageReward state dict -> (BlipVisionModel, BlipTextModel, MLPHead), in eval mode, every key checked."""
    from transformers.models.blip.modeling_blip import BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    vcfg, tcfg = imagereward_configs(sd, **config_kw)
    vision_sd, text_sd, head_sd, other = imagereward_to_blip(sd)
    vision, text = BlipVisionModel(vcfg), BlipTextModel(tcfg, add_pooling_layer=False)
    head = MLPHead(head_sd["layers.0.weight"].shape[1] if "layers.0.weight" in head_sd else tcfg.hidden_size)
    parts = {"blip.visual_encoder(->BlipVisionModel).": (vision, vision_sd),
             "blip.text_encoder(->BlipTextModel).": (text, text_sd), "mlp.": (head, head_sd)}
    expected = {p + k for p, (m, _) in parts.items() for k in m.state_dict()}
    check_keys(expected, {p + k for p, (_, d) in parts.items() for k in d} | set(other), "ImageReward")
    for m, d in parts.values():
        m.load_state_dict(d)
    return vision.eval(), text.eval(), head.eval()
