"""CLIP-family rewards: the open_clip -> CLIPModel converter against a reference forward written from open_clip's
equations, on a tiny state dict with the original key names; the LAION MLP head; each reward (clip_score,
pickscore, hps, aesthetic) end to end from tiny checkpoints written here (nothing downloaded), with gradients
reaching the images; one-line errors for mismatched checkpoints and missing files."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from visalign.models.tiny_diffusers import clip_tokenizer
from visalign.rewards import load_reward
from visalign.rewards.clip import preprocess
from visalign.rewards.converters import (OPENAI_MEAN, OPENAI_STD, CheckpointMismatch, MLPHead, load_openclip_as_clip,
                                         resolve_file)

V_W, V_L, PATCH, IMG, T_W, T_L, CTX, PROJ, HEADS = 32, 2, 4, 16, 32, 2, 16, 24, 2  # head width 16


def openclip_sd(vocab: int, seed: int = 0) -> dict:
    """A tiny open_clip CLIP state dict: the original key names and layouts (fused in_proj, x @ proj)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, std=0.2: torch.randn(*s, generator=g) * std  # noqa: E731
    sd = {"visual.conv1.weight": r(V_W, 3, PATCH, PATCH), "visual.class_embedding": r(V_W),
          "visual.positional_embedding": r((IMG // PATCH) ** 2 + 1, V_W), "visual.proj": r(V_W, PROJ),
          "token_embedding.weight": r(vocab, T_W), "positional_embedding": r(CTX, T_W),
          "text_projection": r(T_W, PROJ), "logit_scale": torch.tensor(math.log(1 / 0.07))}
    for ln, w in (("visual.ln_pre", V_W), ("visual.ln_post", V_W), ("ln_final", T_W)):
        sd[f"{ln}.weight"], sd[f"{ln}.bias"] = 1 + r(w, std=0.1), r(w, std=0.1)
    for prefix, w, n in (("visual.transformer", V_W, V_L), ("transformer", T_W, T_L)):
        for i in range(n):
            p = f"{prefix}.resblocks.{i}"
            sd[f"{p}.attn.in_proj_weight"], sd[f"{p}.attn.in_proj_bias"] = r(3 * w, w), r(3 * w, std=0.1)
            sd[f"{p}.attn.out_proj.weight"], sd[f"{p}.attn.out_proj.bias"] = r(w, w), r(w, std=0.1)
            sd[f"{p}.mlp.c_fc.weight"], sd[f"{p}.mlp.c_fc.bias"] = r(4 * w, w), r(4 * w, std=0.1)
            sd[f"{p}.mlp.c_proj.weight"], sd[f"{p}.mlp.c_proj.bias"] = r(w, 4 * w), r(w, std=0.1)
            for ln in ("ln_1", "ln_2"):
                sd[f"{p}.{ln}.weight"], sd[f"{p}.{ln}.bias"] = 1 + r(w, std=0.1), r(w, std=0.1)
    return sd


# --------------------------------------------------- reference forward, from open_clip's model definition

def _ln(x, sd, p):
    return F.layer_norm(x, x.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"], 1e-5)


def _act(name):
    return (lambda x: x * torch.sigmoid(1.702 * x)) if name == "quick_gelu" else F.gelu


def _block(x, sd, p, act, causal):
    """Pre-LN residual block: x + out_proj(MHA(ln_1 x)) with the fused in_proj, then x + c_proj(act(c_fc(ln_2 x)))."""
    b, t, d = x.shape
    qkv = _ln(x, sd, f"{p}.ln_1") @ sd[f"{p}.attn.in_proj_weight"].T + sd[f"{p}.attn.in_proj_bias"]  # [B, T, 3D]
    q, k, v = (z.view(b, t, HEADS, d // HEADS).transpose(1, 2) for z in qkv.chunk(3, -1))  # [B, H, T, d]
    att = q @ k.transpose(-1, -2) / math.sqrt(d // HEADS)  # [B, H, T, T]
    if causal:
        att = att.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    o = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
    x = x + o @ sd[f"{p}.attn.out_proj.weight"].T + sd[f"{p}.attn.out_proj.bias"]
    h = act(_ln(x, sd, f"{p}.ln_2") @ sd[f"{p}.mlp.c_fc.weight"].T + sd[f"{p}.mlp.c_fc.bias"])
    return x + h @ sd[f"{p}.mlp.c_proj.weight"].T + sd[f"{p}.mlp.c_proj.bias"]


def ref_image(sd, px, act="gelu"):
    x = F.conv2d(px, sd["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)  # [B, N, D]
    x = torch.cat([sd["visual.class_embedding"].expand(len(px), 1, -1), x], 1) + sd["visual.positional_embedding"]
    x = _ln(x, sd, "visual.ln_pre")
    for i in range(V_L):
        x = _block(x, sd, f"visual.transformer.resblocks.{i}", _act(act), causal=False)
    return _ln(x[:, 0], sd, "visual.ln_post") @ sd["visual.proj"]  # class token -> [B, P]


def ref_text(sd, ids, eot, act="gelu"):
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][: ids.shape[1]]
    for i in range(T_L):
        x = _block(x, sd, f"transformer.resblocks.{i}", _act(act), causal=True)
    x = _ln(x, sd, "ln_final")
    return x[torch.arange(len(ids)), eot] @ sd["text_projection"]  # the end-of-text token -> [B, P]


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_openclip_converter_matches_the_reference_forward(act):
    vocab = 50
    sd = openclip_sd(vocab)
    model = load_openclip_as_clip(sd, hidden_act=act, vision_head_width=V_W // HEADS, text_head_width=T_W // HEADS, eos_token_id=1)
    px = torch.randn(3, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model.visual_projection(model.vision_model(pixel_values=px).pooler_output)
        torch.testing.assert_close(got, ref_image(sd, px, act), atol=1e-5, rtol=1e-4)
        ids = torch.randint(2, vocab, (3, CTX), generator=torch.Generator().manual_seed(2))
        eot = torch.tensor([5, 9, CTX - 1])
        ids[torch.arange(3), eot] = 1  # eos id 1, then padding after it
        got_t = model.text_projection(model.text_model(input_ids=ids).pooler_output)
        torch.testing.assert_close(got_t, ref_text(sd, ids, eot, act), atol=1e-5, rtol=1e-4)
    assert float(model.logit_scale.detach()) == pytest.approx(math.log(1 / 0.07))


def test_openclip_mismatch_names_first_missing_and_unexpected_key():
    sd = openclip_sd(50)
    del sd["visual.ln_post.bias"]
    sd["visual.head.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointMismatch) as e:
        load_openclip_as_clip(sd, vision_head_width=16, text_head_width=16, eos_token_id=1)
    msg = str(e.value)
    assert "1 missing keys (first: vision_model.post_layernorm.bias)" in msg
    assert "1 unexpected keys (first: visual.head.weight)" in msg and "\n" not in msg


def _head_sd(in_dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    dims = [(1024, in_dim), (128, 1024), (64, 128), (16, 64), (1, 16)]
    sd = {}
    for i, (o, n) in zip((0, 2, 4, 6, 7), dims):
        sd[f"layers.{i}.weight"] = torch.randn(o, n, generator=g) / math.sqrt(n)
        sd[f"layers.{i}.bias"] = torch.randn(o, generator=g) * 0.1
    return sd


def _ref_head(sd, x):
    for i in (0, 2, 4, 6, 7):  # linear layers only: the published MLP has no activations
        x = x @ sd[f"layers.{i}.weight"].T + sd[f"layers.{i}.bias"]
    return x.squeeze(-1)


def test_mlp_head_loads_the_published_layout_and_refuses_others():
    sd = _head_sd(PROJ)
    head = MLPHead.from_state_dict(sd)
    x = torch.randn(4, PROJ)
    torch.testing.assert_close(head(x), _ref_head(sd, x))
    bad = {k.replace("layers.7", "layers.8"): v for k, v in sd.items()}
    with pytest.raises(CheckpointMismatch, match=r"missing keys \(first: layers.7.bias\).*unexpected keys \(first: "
                                                 r"layers.8.bias\)"):
        MLPHead.from_state_dict(bad)


# ----------------------------------------------------------------------------------- rewards end to end

def _tiny_clip_dir(tmp_path, vocab):
    """A tiny CLIPModel checkpoint folder with a tokenizer and preprocessor_config.json, as on the hub."""
    from transformers import CLIPModel

    model = load_openclip_as_clip(openclip_sd(vocab, seed=3), vision_head_width=16, text_head_width=16, eos_token_id=1)
    path = tmp_path / "clip"
    model.save_pretrained(path)
    clip_tokenizer().save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": {"height": IMG, "width": IMG}, "image_mean": list(OPENAI_MEAN), "image_std": list(OPENAI_STD)}))
    return path, CLIPModel.from_pretrained(path, local_files_only=True).eval()


IMAGES = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(4)) * 2 - 1
PROMPTS = ["a red cat", "two dogs", "a blue square"]


def _grad_ok(reward):
    x = IMAGES.clone().requires_grad_(True)
    reward(x, PROMPTS).scores.sum().backward()
    assert reward.differentiable and torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


def test_preprocess_is_resize_crop_normalise_in_torch():
    x = torch.full((1, 3, 20, 30), 0.5)
    y = preprocess(x, 10, OPENAI_MEAN, OPENAI_STD)
    assert y.shape == (1, 3, 10, 10)
    torch.testing.assert_close(y[0, :, 5, 5], (0.75 - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD))
    wide = torch.zeros(1, 3, 10, 14, requires_grad=True)  # no resize: only the centre crop (columns 2..11)
    preprocess(wide, 10, (0, 0, 0), (1, 1, 1)).sum().backward()
    assert wide.grad[..., [0, 1, 12, 13]].abs().sum() == 0 and (wide.grad[..., 2:12] == 0.5).all()
    padded = preprocess(torch.ones(1, 3, 10, 20), 10, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), fit="pad")  # HPSv2's fit
    assert padded.shape == (1, 3, 10, 10) and torch.allclose(padded[..., 2:7, :], torch.ones(1), atol=1e-5)  # 5 rows
    assert (padded[..., :2, :] == -1).all() and (padded[..., 7:, :] == -1).all()  # black padding: 2 above, 3 below
    small = torch.zeros(1, 3, 5, 5, requires_grad=True)  # upsampled 5 -> 10: every pixel feeds the output
    preprocess(small, 10, (0, 0, 0), (1, 1, 1)).sum().backward()
    assert (small.grad.abs() > 0).all()


def test_clip_score_and_pickscore_end_to_end(tmp_path):
    vocab = len(clip_tokenizer())
    path, model = _tiny_clip_dir(tmp_path, vocab)
    clip = load_reward("clip_score", model=str(path), local_files_only=True)
    pick = load_reward("pickscore", model=str(path), processor=str(path), local_files_only=True)
    with torch.no_grad():
        s_clip, s_pick = clip(IMAGES, PROMPTS).scores, pick(IMAGES, PROMPTS).scores
        # independent check through transformers' own forward: logits_per_image = exp(logit_scale) cos
        tok = clip_tokenizer()(PROMPTS, padding="max_length", max_length=CTX, truncation=True, return_tensors="pt")
        px = preprocess(IMAGES, IMG, OPENAI_MEAN, OPENAI_STD)
        logits = model(input_ids=tok.input_ids, attention_mask=tok.attention_mask, pixel_values=px).logits_per_image
    torch.testing.assert_close(s_pick, logits.diagonal(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s_clip / 100, s_pick / math.exp(math.log(1 / 0.07)), atol=1e-5, rtol=1e-4)
    assert s_clip.shape == (3,) and len(set(s_clip.tolist())) == 3
    _grad_ok(clip)
    _grad_ok(pick)


def test_hps_end_to_end_matches_the_open_clip_reference(tmp_path):
    tok = clip_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    sd = openclip_sd(len(tok), seed=5)
    torch.save({"state_dict": sd, "epoch": 1}, tmp_path / "HPS_v2.1_compressed.pt")
    hps = load_reward("hps", checkpoint=str(tmp_path), tokenizer=str(tmp_path / "tok"), local_files_only=True,
                      vision_head_width=16, text_head_width=16)
    with torch.no_grad():
        got = hps(IMAGES, PROMPTS).scores
        ids = tok(PROMPTS, padding="max_length", max_length=CTX, truncation=True, return_tensors="pt").input_ids
        eot = (ids == tok.eos_token_id).int().argmax(1)
        img = F.normalize(ref_image(sd, preprocess(IMAGES, IMG, OPENAI_MEAN, OPENAI_STD, fit="pad")), dim=-1)
        txt = F.normalize(ref_text(sd, ids, eot), dim=-1)
    torch.testing.assert_close(got, (img * txt).sum(-1), atol=1e-5, rtol=1e-4)
    _grad_ok(hps)


def test_aesthetic_end_to_end(tmp_path):
    path, model = _tiny_clip_dir(tmp_path, len(clip_tokenizer()))
    head_sd = _head_sd(PROJ, seed=6)
    torch.save(head_sd, tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    r = load_reward("aesthetic", clip=str(path), predictor=str(tmp_path), local_files_only=True)
    assert not r.needs_text
    with torch.no_grad():
        px = preprocess(IMAGES, IMG, OPENAI_MEAN, OPENAI_STD)
        emb = F.normalize(model.visual_projection(model.vision_model(pixel_values=px).pooler_output), dim=-1)
        torch.testing.assert_close(r(IMAGES, PROMPTS).scores, _ref_head(head_sd, emb), atol=1e-5, rtol=1e-4)
    _grad_ok(r)


def test_missing_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="HPS_v2.1_compressed.pt") as e:
        load_reward("hps", checkpoint=str(tmp_path), local_files_only=True)
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="local hub cache; fetch it first") as e:
        resolve_file("nobody/no-such-reward-repo", "model.pth")
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="could not load the clip_score CLIP model") as e:
        load_reward("clip_score", model=str(tmp_path / "nothing"), local_files_only=True)
    assert "\n" not in str(e.value)
    torch.save({"layers.0.weight": torch.zeros(1024, 8)}, tmp_path / "bad.pth")
    (tmp_path / "c").mkdir()
    with pytest.raises(CheckpointMismatch, match="missing keys"):
        load_reward("aesthetic", predictor=str(tmp_path / "bad.pth"), clip=str(tmp_path / "c"), local_files_only=True)


def test_checkpoint_files_are_never_downloaded(monkeypatch):
    """A hub id is looked up in the local cache only, even for a reward built with local_files_only=false:
    the downloader is never called, and the error names the command that fetches the file."""
    import huggingface_hub

    def no_network(*a, **k):
        raise AssertionError("a hub download was attempted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download nobody/no-such-reward-repo model.pth"):
        resolve_file("nobody/no-such-reward-repo", "model.pth")
    with pytest.raises(FileNotFoundError, match="fetch it first"):
        load_reward("hps", checkpoint="nobody/no-such-reward-repo", local_files_only=False)
