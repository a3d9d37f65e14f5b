"""Video rewards (rewards/video.py, rewards/video_reward.py) on hand-made numpy clips: frame_consistency (a still clip
scores 1, unrelated noise frames lower; pixel and tiny-CLIP features), motion_smoothness (constant speed beats a
shape jumping back and forth; a still clip scores 1), per_frame (mean / min / first / last are the hand-computed
reductions of the inner reward's per-frame scores), the input check (an image reward refuses videos in one line
naming per_frame; a video reward refuses images), combine of video rewards (and its refusal of a mix), and the
learned video_reward on a tiny random Qwen2-VL saved to a folder and loaded back (nothing downloaded)."""

import json

import numpy as np
import pytest
import torch

from visalign.images import images_to_tensor
from visalign.rewards import REWARDS, Reward, load_reward
from visalign.rewards.base import RewardInputError
from visalign.rewards.combine import CombinedReward
from visalign.rewards.compressibility import jpeg_kb
from visalign.rewards.video import FrameConsistency, PerFrame
from visalign.rewards.video_reward import VideoPatcher, smart_resize
from visalign.types import RewardOutput

SIZE = 48


def _clip(xs, size=SIZE, side=10) -> np.ndarray:
    """uint8 [F, size, size, 3]: a yellow square with a blue spot, its left edge at x = xs[i] in frame i, on blue."""
    frames = np.zeros((len(xs), size, size, 3), np.uint8)
    frames[..., 2] = 40
    y = size // 2 - side // 2
    for i, x in enumerate(xs):
        frames[i, y:y + side, x:x + side] = (230, 200, 40)
        frames[i, y + 3:y + 6, x + 3:x + 6] = (20, 20, 200)
    return frames


def _videos(*clips) -> torch.Tensor:
    return images_to_tensor(np.stack(clips))  # [B, F, 3, H, W] in [-1, 1]


def _noise(frames=6, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, SIZE, SIZE, 3), dtype=np.uint8)


STILL = _clip([12] * 6)
CONSTANT = _clip([4 + 3 * i for i in range(6)])  # 3 px per frame, to the right
JUMPING = _clip([8, 22, 8, 22, 8, 22])  # back and forth by 14 px every frame


class _Motion(Reward):
    """A stand-in for the Motion world's verifier: how far the frames' brightness centroid travels, in [0, 1]."""

    name = "motion"
    video = True
    needs_text = False

    def __call__(self, videos, prompts, metadata=None):
        w = (videos.mean(2) + 1)  # [B, F, H, W]
        xs = torch.arange(videos.shape[-1], dtype=w.dtype)
        cx = (w.sum(-2) * xs).sum(-1) / w.sum((-2, -1))  # [B, F]
        return RewardOutput((cx[:, -1] - cx[:, 0]).abs().clamp(max=1.0))


# ------------------------------------------------------------------------------------------------ frame_consistency

def test_a_still_clip_scores_frame_consistency_one_and_unrelated_noise_lower():
    videos = _videos(STILL, CONSTANT, _noise())
    for reference in ("previous", "first", "both"):
        out = load_reward("frame_consistency", reference=reference)(videos, ["a", "b", "c"])
        assert out.scores[0] == 1.0 and out.scores[2] < 0.1 and 0.5 < out.scores[1] < 1.0, (reference, out.scores)
        assert ((out.scores >= 0) & (out.scores <= 1)).all()
    # VBench's `both`: the average of the similarity to the previous frame and to the first
    out = load_reward("frame_consistency")(videos, ["a", "b", "c"])
    torch.testing.assert_close(out.scores, (out.details["to_previous"] + out.details["to_first"]) / 2)
    # flat mid-grey frames have no direction to compare: identical frames still score 1; one frame scores 1
    grey = torch.zeros(1, 4, 3, 16, 16)
    assert load_reward("frame_consistency")(grey, [""]).scores.item() == 1.0
    assert load_reward("frame_consistency")(videos[:, :1], ["a", "b", "c"]).scores.tolist() == [1.0, 1.0, 1.0]
    r = load_reward("frame_consistency")
    assert r.video and r.differentiable and not r.needs_text and r.value_range == (0.0, 1.0)
    x = videos.clone().requires_grad_(True)
    r(x, ["a", "b", "c"]).scores[1].backward()
    assert torch.isfinite(x.grad).all() and x.grad[1].abs().sum() > 0
    with pytest.raises(ValueError, match="reference='last' is not one of previous | first | both"):
        load_reward("frame_consistency", reference="last")


def test_frame_consistency_with_a_tiny_clip_vision_model(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                           num_attention_heads=2, image_size=16, patch_size=4,
                                                           projection_dim=8))
    model.save_pretrained(tmp_path / "clip")
    (tmp_path / "clip" / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": {"height": 16, "width": 16}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    r = load_reward("frame_consistency", features="clip", model=str(tmp_path / "clip"))
    assert isinstance(r, FrameConsistency) and r.encoder.vision.config.projection_dim == 8
    videos = _videos(STILL, _noise())
    out = r(videos, ["", ""])
    torch.testing.assert_close(out.scores[0], torch.tensor(1.0))
    assert out.scores[1] < out.scores[0]
    with pytest.raises(FileNotFoundError, match="could not load the frame_consistency CLIP config"):
        load_reward("frame_consistency", features="clip", model=str(tmp_path / "nothing"))


# ------------------------------------------------------------------------------------------------ motion_smoothness

def test_constant_speed_is_smoother_than_jumping_back_and_forth():
    r = load_reward("motion_smoothness")
    out = r(_videos(CONSTANT, JUMPING, STILL), ["", "", ""])
    constant, jumping, still = out.scores.tolist()
    assert constant > 0.5 and jumping < 0.1, out
    assert still == 1.0 and out.details["acceleration"][2] == 0  # nothing moves, so nothing changes speed
    assert out.details["speed"][1] > out.details["speed"][0] > out.details["speed"][2]
    assert not r.differentiable and r.video and not r.needs_text
    # fewer than 3 frames: no acceleration to measure
    assert r(_videos(JUMPING[:2]), [""]).scores.item() == 1.0
    # a softer scale: the same clips, the same order, higher scores
    soft = load_reward("motion_smoothness", scale=10.0)(_videos(CONSTANT, JUMPING), ["", ""]).scores
    assert soft[0] > soft[1] and (soft > out.scores[:2]).all()


# ------------------------------------------------------------------------------------------------------- per_frame

def test_per_frame_mean_and_min_are_the_reductions_of_the_inner_per_frame_scores():
    frames = _noise(4, seed=1)
    frames[1] //= 8  # frames of different content -> different JPEG sizes
    frames[2] = 128
    videos = _videos(frames, _noise(4, seed=2) // 2)  # [2, 4, 3, H, W]
    kb = torch.stack([jpeg_kb(v) for v in videos])  # [2, 4] the inner reward's per-frame sizes, frame by frame
    assert len(set(kb[0].tolist())) == 4
    mean = load_reward("per_frame", reward="compressibility")(videos, ["a", "b"])
    torch.testing.assert_close(mean.scores, -kb.mean(1))
    torch.testing.assert_close(mean.details["jpeg_kb"], kb.mean(1))  # the inner details, reduced alike
    worst = load_reward("per_frame", reward="compressibility", reduce="min")(videos, ["a", "b"])
    torch.testing.assert_close(worst.scores, (-kb).amin(1))
    first = load_reward("per_frame", reward="incompressibility?quality=95", frames="first")(videos, ["a", "b"])
    torch.testing.assert_close(first.scores, kb[:, 0])
    last = load_reward("per_frame", reward="incompressibility", frames="last", options={"quality": 95})
    torch.testing.assert_close(last(videos, ["a", "b"]).scores, kb[:, -1])
    r = load_reward("per_frame", reward="compressibility")
    assert r.video and not r.needs_text and not r.differentiable


def test_per_frame_passes_the_prompt_and_the_group_of_each_video_to_every_frame():
    seen = {}

    class Spy(Reward):
        name = "spy"
        differentiable = True

        def __call__(self, images, prompts, metadata=None):
            seen.update(prompts=list(prompts), meta=metadata, n=len(images))
            return RewardOutput(images.mean((1, 2, 3)), {"tag": ["x"] * len(images)})

    r = PerFrame(Spy(), "mean")
    videos = torch.linspace(-1, 1, 2 * 3).view(2, 3, 1, 1, 1).expand(2, 3, 3, 4, 4).clone().requires_grad_(True)
    out = r(videos, ["p", "q"], {"group_ids": torch.tensor([7, 7]), "group_size": 2, "step": 5})
    assert seen["prompts"] == ["p", "p", "p", "q", "q", "q"] and seen["n"] == 6
    meta = seen["meta"]
    assert meta["group_ids"].tolist() == [7] * 6 and meta["group_size"] == 6 and meta["step"] == 5
    torch.testing.assert_close(out.scores, videos.detach().mean((1, 2, 3, 4)))
    assert "tag" not in out.details  # only [B * frames] tensors are reduced and kept
    out.scores.sum().backward()
    assert r.differentiable and videos.grad.abs().sum() > 0


def test_per_frame_refusals():
    with pytest.raises(ValueError, match="per_frame needs option reward"):
        load_reward("per_frame")
    with pytest.raises(ValueError, match="already judges videos"):
        load_reward("per_frame", reward="frame_consistency")
    with pytest.raises(ValueError, match="reduce='max' is not one of mean | min"):
        load_reward("per_frame", reward="compressibility", reduce="max")
    with pytest.raises(ValueError, match=r"option\(s\) \['quality'\] given both"):
        load_reward("per_frame", reward="compressibility?quality=90", options={"quality": 80})


# ------------------------------------------------------------------------------------------------- the input check

def test_an_image_reward_refuses_videos_in_one_line_naming_per_frame():
    videos = _videos(STILL, CONSTANT)
    combined = load_reward("combine", components={"compressibility": {"weight": 1.0}})

    class Mine(Reward):
        name = "mine"

        def __call__(self, images, prompts, metadata=None):
            return RewardOutput(images.mean((1, 2, 3)))

    for reward in (load_reward("compressibility"), combined, Mine()):
        with pytest.raises(ValueError) as e:
            reward(videos, ["a", "b"])
        msg = str(e.value)
        assert isinstance(e.value, RewardInputError) and "\n" not in msg, msg
        assert msg.startswith(f"reward {reward.name}: got videos of shape [2, 6, 3, {SIZE}, {SIZE}]; it judges images")
        assert "per_frame" in msg and "accepted: [B, 3, H, W]" in msg


def test_a_video_reward_checks_its_videos_the_same_way():
    r = load_reward("frame_consistency")
    videos = _videos(STILL, CONSTANT)
    with pytest.raises(RewardInputError, match=r"^reward frame_consistency: got images of shape \[2, 3, 48, 48\]; it "
                                               r"judges videos, accepted: \[B, F, 3, H, W\]"):
        r(videos[:, 0], ["a", "b"])
    with pytest.raises(RewardInputError, match=r"got videos of shape \[2, 6, 48, 48, 3\] \(channels last\?\)"):
        r(videos.permute(0, 1, 3, 4, 2), ["a", "b"])
    with pytest.raises(RewardInputError, match=r"got uint8 videos"):
        r(((videos + 1) * 127.5).to(torch.uint8), ["a", "b"])
    with pytest.raises(RewardInputError, match="got 2 videos and 1 prompt; accepted: a list of one prompt per video"):
        r(videos, ["a"])
    with pytest.raises(RewardInputError, match=r"\(no frames\)"):
        r(videos[:, :0], ["a", "b"])
    bad = videos.clone()
    bad[1, 3, 0, 5, 5] = float("nan")  # one pixel of one frame
    scores = r(bad, ["a", "b"]).scores
    assert scores[0] == 1.0 and torch.isnan(scores[1])


# ---------------------------------------------------------------------------------------------------------- combine

def test_combine_accepts_video_rewards_and_refuses_a_mix():
    components = {"motion": (_Motion(), 1.0), "consistency": (load_reward("frame_consistency"), 0.5),
                  "jpeg": (load_reward("per_frame", reward="compressibility"), 0.1)}
    comb = CombinedReward(components, normalize="none")
    assert comb.video and not comb.needs_text
    videos = _videos(STILL, CONSTANT, JUMPING)
    out = comb(videos, ["", "", ""])
    assert out.scores.shape == (3,) and set(out.details) == {"motion", "consistency", "jpeg"}
    torch.testing.assert_close(out.scores, out.details["motion"] + 0.5 * out.details["consistency"]
                               + 0.1 * out.details["jpeg"])
    grouped = comb(videos, ["", "", ""], {"group_ids": torch.tensor([0, 0, 0])})
    assert torch.isfinite(grouped.scores).all()
    # by name, as a recipe gives it; a combination of video rewards lifts nothing
    named = load_reward("combine", components={"frame_consistency": {"weight": 1.0}, "motion_smoothness": {},
                                               "per_frame": {"options": {"reward": "compressibility"}}})
    assert named.video and named(videos, ["", "", ""]).scores.shape == (3,)
    with pytest.raises(ValueError) as e:
        load_reward("combine", components={"frame_consistency": {"weight": 1.0}, "compressibility": {"weight": 1.0}})
    msg = str(e.value)
    assert "\n" not in msg and "['frame_consistency'] judge videos and ['compressibility'] judge images" in msg
    assert "per_frame" in msg


def test_the_video_rewards_are_registered():
    for name in ("frame_consistency", "motion_smoothness", "per_frame", "video_reward"):
        assert name in REWARDS.names() and "\n" not in REWARDS.doc(name)


# ----------------------------------------------------------------------------- video_reward on a tiny Qwen2-VL

WORDS = ["<|endoftext|>", "<unk>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
         "<|video_pad|>", "<|image_pad|>", "<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>", "user", "assistant",
         "a", "red", "cat", "dog", "runs", "jumps", "over", "the", "moon", "rate", ":", "."]
SPECIAL = WORDS[:11]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {% for c in m['content'] %}"
            "{% if c['type'] == 'video' %}"
            "<|vision_start|><|video_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{% endif %}")
PROCESSOR = {"patch_size": 4, "temporal_patch_size": 2, "merge_size": 2, "min_pixels": 64, "max_pixels": 1024,
             "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}


def _tiny_backbone(family: str, ids: dict):
    """A tiny random Qwen2-VL or Qwen2.5-VL (ForConditionalGeneration, as published checkpoints are saved)."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)

    text = {"vocab_size": len(WORDS), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256, "pad_token_id": 0,
            "bos_token_id": None, "eos_token_id": ids["<|im_end|>"],
            "rope_parameters": {"rope_type": "default", "mrope_section": [4, 2, 2], "rope_theta": 1e4}}
    vision = {"depth": 1, "num_heads": 2, "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2}
    if family == "qwen2_vl":
        config_cls, model_cls = Qwen2VLConfig, Qwen2VLForConditionalGeneration
        vision.update(embed_dim=16, hidden_size=32, mlp_ratio=2)
    else:
        config_cls, model_cls = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
        vision.update(hidden_size=16, intermediate_size=32, out_hidden_size=32, window_size=16,
                      fullatt_block_indexes=[0])
    cfg = config_cls(vision_config=vision, text_config=text, image_token_id=ids["<|image_pad|>"],
                     video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                     vision_end_token_id=ids["<|vision_end|>"])
    return model_cls(cfg).eval()


def tiny_video_reward_dir(path, head_rows=3, reward_config=None, seed=0, family="qwen2_vl"):
    """A VideoAlign-style folder: a tiny random Qwen2-VL (save_pretrained), a word-level tokenizer with Qwen2-VL's
    special tokens and a chat template, the processor numbers, reward_head.safetensors and reward_config.json."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|endoftext|>", unk_token="<unk>",
                                  eos_token="<|im_end|>", additional_special_tokens=SPECIAL[2:])
    tok.chat_template = TEMPLATE
    torch.manual_seed(seed)
    _tiny_backbone(family, {w: i for i, w in enumerate(WORDS)}).save_pretrained(path)
    tok.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(PROCESSOR))
    save_file({"weight": torch.randn(head_rows, 32, generator=torch.Generator().manual_seed(seed + 1))},
              str(path / "reward_head.safetensors"))
    if reward_config is not None:
        (path / "reward_config.json").write_text(json.dumps(reward_config))
    return path


VIDEO_PROMPTS = ["a red cat runs", "a dog jumps over the moon"]  # different lengths: the batch is padded


def _small(*clips):
    return _videos(*(c[:, ::3, ::3] for c in clips))  # [B, F, 3, 16, 16]


def test_video_reward_on_a_tiny_qwen2_vl(tmp_path):
    tiny_video_reward_dir(tmp_path / "vr", reward_config={"mean": {"VQ": 1.0}, "std": {"TA": 2.0}})
    r = load_reward("video_reward", model=str(tmp_path / "vr"), batch_size=2)
    assert r.video and r.differentiable and r.needs_text
    videos = _small(CONSTANT, JUMPING)  # 6 frames: grid_t 3
    with torch.no_grad():
        out = r(videos, VIDEO_PROMPTS)
        again = r(videos, VIDEO_PROMPTS)
        one = torch.cat([r(videos[i:i + 1], VIDEO_PROMPTS[i:i + 1]).scores for i in range(2)])
        other = r(_small(STILL, _noise()), VIDEO_PROMPTS)
    assert out.scores.shape == (2,) and set(out.details) == {"vq", "mq", "ta", "overall"}
    assert torch.equal(out.scores, again.scores)  # deterministic
    torch.testing.assert_close(out.scores, one, atol=1e-5, rtol=1e-5)  # right padding in a batch changes nothing
    assert (other.scores - out.scores).abs().min() > 1e-4  # a different video scores differently
    torch.testing.assert_close(out.scores, out.details["vq"] + out.details["mq"] + out.details["ta"])
    # by hand: the head on the last token's hidden state, normalised with the config's mean / std
    with torch.no_grad():
        pixels, grid = r.patcher(videos[:1])
        text = r.text(VIDEO_PROMPTS[0], r.patcher.tokens(grid)[0])
        assert text.count("<|video_pad|>") == 3 * 4 * 4 // 4 and text.endswith("<|im_start|>assistant")
        ids = r.tokenizer([text], return_tensors="pt").input_ids
        hidden = r.backbone(input_ids=ids, pixel_values_videos=pixels, video_grid_thw=grid,
                            mm_token_type_ids=(ids == r.video_token_id).int() * 2).last_hidden_state
        raw = r.head(hidden[0, -1])
    torch.testing.assert_close(out.details["vq"][0], raw[0] - 1.0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.details["ta"][0], raw[2] / 2.0, atol=1e-5, rtol=1e-5)
    # one dimension; fewer frames (uniformly subsampled); gradients reach the frames
    mq = load_reward("video_reward", model=str(tmp_path / "vr"), score="mq", frames=4)
    x = videos.clone().requires_grad_(True)
    s = mq(x, VIDEO_PROMPTS)
    torch.testing.assert_close(s.scores.detach(), s.details["mq"])
    s.scores.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[:, [0, 2, 3, 5]].abs().sum() > 0
    assert x.grad[:, [1, 4]].abs().sum() == 0  # frames 1 and 4 are left out by the subsampling


def test_video_reward_special_token_pooling(tmp_path):
    """The released VideoReward's pooling: one special token per dimension in the text, a head of one row."""
    template = "{prompt} <|VQ_reward|> . <|MQ_reward|> . <|TA_reward|>"
    tiny_video_reward_dir(tmp_path / "vr", head_rows=1, reward_config={"pooling": "special", "template": template})
    r = load_reward("video_reward", model=str(tmp_path / "vr"), batch_size=2)
    videos = _small(CONSTANT, JUMPING)
    with torch.no_grad():
        out = r(videos, VIDEO_PROMPTS)
        pixels, grid = r.patcher(videos[1:])
        ids = r.tokenizer([r.text(VIDEO_PROMPTS[1], r.patcher.tokens(grid)[0])], return_tensors="pt").input_ids
        hidden = r.backbone(input_ids=ids, pixel_values_videos=pixels, video_grid_thw=grid,
                            mm_token_type_ids=(ids == r.video_token_id).int() * 2).last_hidden_state[0]
        at = [int((ids[0] == WORDS.index(t)).nonzero()) for t in ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")]
        raw = r.head(hidden[at])[:, 0]  # [3]: the shared row at each special token
    torch.testing.assert_close(torch.stack([out.details[d][1] for d in ("vq", "mq", "ta")]), raw, atol=1e-5, rtol=1e-5)
    assert len(set(raw.tolist())) == 3


def test_video_reward_on_a_tiny_qwen2_5_vl(tmp_path):
    """Qwen2.5-VL loads through the same Auto class; its video RoPE also takes the seconds a temporal patch spans."""
    r = load_reward("video_reward", model=str(tiny_video_reward_dir(tmp_path / "vr", family="qwen2_5_vl")),
                    batch_size=2)
    assert type(r.backbone).__name__ == "Qwen2_5_VLModel"
    videos = _small(CONSTANT, JUMPING)
    with torch.no_grad():
        out = r(videos, VIDEO_PROMPTS).scores
        one = torch.cat([r(videos[i:i + 1], VIDEO_PROMPTS[i:i + 1]).scores for i in range(2)])
        other = r(_small(STILL, _noise()), VIDEO_PROMPTS).scores
    assert out.shape == (2,) and torch.isfinite(out).all() and (other - out).abs().min() > 1e-4
    torch.testing.assert_close(out, one, atol=1e-5, rtol=1e-5)


def test_video_patcher_matches_the_qwen2_vl_processor():
    """A two-frame still video is what Qwen2-VL's processor makes of an image (the frame repeated over the temporal
    patch): the patches and their order must equal transformers' (PIL backend, no torchvision needed)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference_resize

    frame = _noise(1, seed=3)[0, :16, :24]  # 16 x 24: no resize at factor 8
    proc = Qwen2VLImageProcessorPil(**PROCESSOR)
    ref = proc(images=[frame], return_tensors="pt")
    patcher = VideoPatcher.from_config(PROCESSOR)
    pixels, grid = patcher(images_to_tensor(np.stack([frame, frame]))[None])
    assert grid.tolist() == ref["image_grid_thw"].tolist() == [[1, 4, 6]]
    torch.testing.assert_close(pixels, ref["pixel_values"].float(), atol=1e-5, rtol=1e-5)
    # three frames: padded to four with the last one, as the video processor pads
    odd, grid3 = patcher(images_to_tensor(np.stack([frame] * 3))[None])
    assert grid3.tolist() == [[2, 4, 6]] and torch.equal(odd[:24], odd[24:])
    assert patcher.tokens(grid3) == [12]
    # frames larger than max_pixels are shrunk to multiples of patch * merge within it (24 x 32 <= 1024)
    big, grid_big = patcher(torch.zeros(1, 2, 3, 64, 96))
    assert grid_big.tolist() == [[1, 6, 8]] and big.shape == (48, 3 * 2 * 4 * 4)
    for h, w in [(16, 24), (64, 96), (5, 7), (200, 30), (31, 33), (1000, 1000)]:
        assert smart_resize(h, w, 8, 64, 1024) == reference_resize(h, w, 8, 64, 1024), (h, w)


def test_video_reward_refusals(tmp_path):
    with pytest.raises(ValueError, match="needs reward_options.model"):
        load_reward("video_reward")
    with pytest.raises(FileNotFoundError, match="is not a local folder"):
        load_reward("video_reward", model=str(tmp_path / "nothing"))
    path = tiny_video_reward_dir(tmp_path / "vr", head_rows=2)
    with pytest.raises(ValueError, match=r"the head has 2 rows for dims \['VQ', 'MQ', 'TA'\]"):
        load_reward("video_reward", model=str(path))
    (path / "reward_head.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no reward_head.safetensors"):
        load_reward("video_reward", model=str(path))
    path = tiny_video_reward_dir(tmp_path / "vr2")
    with pytest.raises(ValueError, match="score='aesthetic' is not one of overall | vq | mq | ta"):
        load_reward("video_reward", model=str(path), score="aesthetic")
