"""ImageReward: its original-layout state dict (BLIP ViT + BERT with cross-attention + MLP head), tiny, built
here, converted onto transformers' BLIP modules and compared with a reference forward written from BLIP's
equations (timm ViT, med.py BERT); the reward end to end from a checkpoint file, with gradients to the
images; one-line key-mismatch errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from visalign.rewards import load_reward
from visalign.rewards.clip import preprocess
from visalign.rewards.converters import OPENAI_MEAN, OPENAI_STD, CheckpointMismatch, load_imagereward
from visalign.rewards.image_reward import SCORE_MEAN, SCORE_STD

V_W, V_L, V_H, PATCH, IMG, T_W, T_L, T_H, MAXPOS = 32, 2, 2, 4, 16, 24, 2, 2, 40
WORDS = ["a", "red", "cat", "two", "dogs", "blue", "square", "on", "the", "left", "of"]


def bert_tokenizer(tmp_path):
    """A BERT WordPiece tokenizer from a vocab.txt written here (no hub:
    docs/architecture.md#facts-the-testbed-relies-on)."""
    from transformers import AutoTokenizer, BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "tok")
    return AutoTokenizer.from_pretrained(tmp_path / "tok", local_files_only=True)


def imagereward_sd(vocab: int, seed: int = 0) -> dict:
    """Tiny ImageReward state dict with the original names: blip.visual_encoder (timm ViT), blip.text_encoder
    (med.py BERT, cross-attention to the image tokens), mlp.layers (the head)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, std=0.2: torch.randn(*s, generator=g) * std  # noqa: E731
    sd = {}

    def lin(name, o, i):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = r(o, i), r(o, std=0.1)

    def ln(name, w):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = 1 + r(w, std=0.1), r(w, std=0.1)

    v = "blip.visual_encoder"
    sd[f"{v}.cls_token"], sd[f"{v}.pos_embed"] = r(1, 1, V_W), r(1, (IMG // PATCH) ** 2 + 1, V_W)
    sd[f"{v}.patch_embed.proj.weight"], sd[f"{v}.patch_embed.proj.bias"] = r(V_W, 3, PATCH, PATCH), r(V_W, std=0.1)
    for i in range(V_L):
        b = f"{v}.blocks.{i}"
        ln(f"{b}.norm1", V_W), ln(f"{b}.norm2", V_W)
        lin(f"{b}.attn.qkv", 3 * V_W, V_W), lin(f"{b}.attn.proj", V_W, V_W)
        lin(f"{b}.mlp.fc1", 4 * V_W, V_W), lin(f"{b}.mlp.fc2", V_W, 4 * V_W)
    ln(f"{v}.norm", V_W)
    t = "blip.text_encoder"
    sd[f"{t}.embeddings.word_embeddings.weight"] = r(vocab, T_W)
    sd[f"{t}.embeddings.position_embeddings.weight"] = r(MAXPOS, T_W)
    sd[f"{t}.embeddings.position_ids"] = torch.arange(MAXPOS)[None]  # a buffer the original saved
    ln(f"{t}.embeddings.LayerNorm", T_W)
    for i in range(T_L):
        b = f"{t}.encoder.layer.{i}"
        for a, kv_in in (("attention", T_W), ("crossattention", V_W)):
            lin(f"{b}.{a}.self.query", T_W, T_W), lin(f"{b}.{a}.self.key", T_W, kv_in)
            lin(f"{b}.{a}.self.value", T_W, kv_in), lin(f"{b}.{a}.output.dense", T_W, T_W)
            ln(f"{b}.{a}.output.LayerNorm", T_W)
        lin(f"{b}.intermediate.dense", 4 * T_W, T_W), lin(f"{b}.output.dense", T_W, 4 * T_W)
        ln(f"{b}.output.LayerNorm", T_W)
    for i, (o, n) in zip((0, 2, 4, 6, 7), [(1024, T_W), (128, 1024), (64, 128), (16, 64), (1, 16)]):
        sd[f"mlp.layers.{i}.weight"], sd[f"mlp.layers.{i}.bias"] = r(o, n, std=1 / math.sqrt(n)), r(o, std=0.1)
    return sd


# ------------------------------------------------------------ reference forward from BLIP's original code

def _lin(x, sd, p):
    return x @ sd[f"{p}.weight"].T + sd[f"{p}.bias"]


def _ln(x, sd, p, eps):
    return F.layer_norm(x, x.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"], eps)


def _attn(q, k, v, heads, key_mask=None):
    b, t, d = q.shape
    q, k, v = (z.view(b, z.shape[1], heads, d // heads).transpose(1, 2) for z in (q, k, v))  # [B, H, T, d]
    att = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
    if key_mask is not None:
        att = att + (1.0 - key_mask[:, None, None, :].float()) * -10000.0  # med.py's extended mask
    return (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)


def ref_vision(sd, px):
    v = "blip.visual_encoder"
    x = F.conv2d(px, sd[f"{v}.patch_embed.proj.weight"], sd[f"{v}.patch_embed.proj.bias"], stride=PATCH)
    x = torch.cat([sd[f"{v}.cls_token"].expand(len(px), 1, -1), x.flatten(2).transpose(1, 2)], 1) + sd[f"{v}.pos_embed"]
    for i in range(V_L):
        b = f"{v}.blocks.{i}"
        h = _lin(_ln(x, sd, f"{b}.norm1", 1e-6), sd, f"{b}.attn.qkv")  # [B, T, 3D]: q, k, v
        x = x + _lin(_attn(*h.chunk(3, -1), V_H), sd, f"{b}.attn.proj")
        x = x + _lin(F.gelu(_lin(_ln(x, sd, f"{b}.norm2", 1e-6), sd, f"{b}.mlp.fc1")), sd, f"{b}.mlp.fc2")
    return _ln(x, sd, f"{v}.norm", 1e-6)  # [B, 1 + N, D]


def ref_score(sd, px, ids, mask):
    img = ref_vision(sd, px)
    t = "blip.text_encoder"
    x = sd[f"{t}.embeddings.word_embeddings.weight"][ids] + sd[f"{t}.embeddings.position_embeddings.weight"][: ids.shape[1]]
    x = _ln(x, sd, f"{t}.embeddings.LayerNorm", 1e-12)
    for i in range(T_L):
        b = f"{t}.encoder.layer.{i}"
        a = f"{b}.attention"
        ctx = _attn(_lin(x, sd, f"{a}.self.query"), _lin(x, sd, f"{a}.self.key"), _lin(x, sd, f"{a}.self.value"), T_H, mask)
        x = _ln(_lin(ctx, sd, f"{a}.output.dense") + x, sd, f"{a}.output.LayerNorm", 1e-12)
        c = f"{b}.crossattention"
        ctx = _attn(_lin(x, sd, f"{c}.self.query"), _lin(img, sd, f"{c}.self.key"), _lin(img, sd, f"{c}.self.value"), T_H)
        x = _ln(_lin(ctx, sd, f"{c}.output.dense") + x, sd, f"{c}.output.LayerNorm", 1e-12)
        h = _lin(F.gelu(_lin(x, sd, f"{b}.intermediate.dense")), sd, f"{b}.output.dense")
        x = _ln(h + x, sd, f"{b}.output.LayerNorm", 1e-12)
    z = x[:, 0]  # [CLS]
    for i in (0, 2, 4, 6, 7):
        z = _lin(z, sd, f"mlp.layers.{i}")
    return (z.squeeze(-1) - SCORE_MEAN) / SCORE_STD


IMAGES = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(1)) * 2 - 1
PROMPTS = ["a red cat", "two dogs on the left of a blue square", "a cat"]


def test_imagereward_converter_matches_the_blip_reference(tmp_path):
    tok = bert_tokenizer(tmp_path)
    sd = imagereward_sd(len(tok))
    vision, text, head = load_imagereward(sd, vision_heads=V_H, text_heads=T_H)
    px = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(vision(pixel_values=px).last_hidden_state, ref_vision(sd, px), atol=1e-5, rtol=1e-4)


def test_image_reward_end_to_end_matches_the_reference(tmp_path):
    tok = bert_tokenizer(tmp_path)
    sd = imagereward_sd(len(tok), seed=3)
    torch.save(sd, tmp_path / "ImageReward.pt")
    r = load_reward("image_reward", checkpoint=str(tmp_path), tokenizer=str(tmp_path / "tok"), local_files_only=True,
                    vision_heads=V_H, text_heads=T_H)
    with torch.no_grad():
        got = r(IMAGES, PROMPTS).scores
        t = tok(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        assert t.input_ids[0, 0] == tok.cls_token_id and int(t.attention_mask[0].sum()) == 5  # [CLS] a red cat [SEP]
        ref = ref_score(sd, preprocess(IMAGES, IMG, OPENAI_MEAN, OPENAI_STD), t.input_ids, t.attention_mask)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert len(set(got.tolist())) == 3
    x = IMAGES.clone().requires_grad_(True)
    r(x, PROMPTS).scores.sum().backward()
    assert r.differentiable and torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


def test_imagereward_mismatch_names_first_missing_and_unexpected_key(tmp_path):
    sd = imagereward_sd(20)
    del sd["blip.text_encoder.encoder.layer.1.crossattention.self.key.bias"]
    sd["blip.text_decoder.cls.predictions.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatch) as e:
        load_imagereward(sd, vision_heads=V_H, text_heads=T_H)
    msg = str(e.value)
    assert "1 missing keys (first: blip.text_encoder(->BlipTextModel).encoder.layer.1.crossattention.self.key.bias)" in msg
    assert "1 unexpected keys (first: blip.text_decoder.cls.predictions.bias)" in msg and "\n" not in msg
