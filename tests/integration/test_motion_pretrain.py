"""GenEval-S Motion as a real diffusers text-to-video pipeline (models/motion_pipelines.py,
pretrain/motion_pretrain.py): the word-level tokenizer, both pretraining recipes at tiny size through `visalign
pretrain`, plain-diffusers loading and sampling with no visalign import, fp16 storage, and builtin:motion-wan's
one-line error while its weights are not trained. Nothing here needs the bundled weights."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from visalign.cli import main
from visalign.testbed.models import motion_pipelines as mp
from visalign.testbed.motion.vocab import vocabulary
from visalign.testbed.pretrain import motion_pretrain

VAE = {"base_dim": 4, "z_dim": 4, "dim_mult": [1, 1]}  # one halving, in space and in time
TEXT = {"dim": 16, "layers": 1, "heads": 2, "ff_dim": 32}
WAN = {"heads": 2, "head_dim": 12, "layers": 1, "ffn_dim": 32, "freq_dim": 16, "text": TEXT, "steps": 4,
       "guidance": 3.0}


def _recipe(tmp: Path, kind: str, model: dict, **extra) -> Path:
    d = {"kind": kind, "description": "tiny", "model": model,
         "train": {"steps": 3, "batch_size": 2, "log_every": 1, "warmup_steps": 1, "seed": 0}, **extra}
    path = tmp / f"{kind}-{len(list(tmp.glob('*.yaml')))}.yaml"
    path.write_text(json.dumps(d))  # YAML is a superset of JSON
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A Wan VAE and a WanPipeline around it, each pretrained 3 steps at tiny size through `visalign pretrain`
    (latent statistics and the round trip on a few clips)."""
    tmp = tmp_path_factory.mktemp("motion")
    with pytest.MonkeyPatch.context() as mpatch:
        mpatch.setattr(motion_pretrain, "STATS_BATCH", 16)
        mpatch.setattr(motion_pretrain, "ROUND_TRIP_CLIPS", 4)
        mpatch.setattr(motion_pretrain, "ROUND_TRIP_PER_CATEGORY", 1)
        assert main(["pretrain", str(_recipe(tmp, "motion_vae_pretrain", VAE)), "--out", str(tmp / "vae")]) == 0
    assert main(["pretrain", str(_recipe(tmp, "motion_wan_pretrain", WAN, vae=str(tmp / "vae"))),
                 "--out", str(tmp / "wan")]) == 0
    return tmp


def test_every_motion_word_is_one_token(tiny):
    from transformers import AutoTokenizer

    for tok in (mp.motion_tokenizer(16), AutoTokenizer.from_pretrained(str(tiny / "wan" / "tokenizer"))):
        for w in vocabulary():
            ids = tok(w).input_ids
            assert len(ids) == 2 and ids[1] == tok.eos_token_id == 1 and ids[0] > 2, (w, ids)  # word, eos; no unk
            assert tok.convert_ids_to_tokens(ids[0]) == w
        ids = tok(["A red circle moving left", ""], padding="max_length", max_length=8).input_ids
        assert ids[0] == [3 + vocabulary().index(w) for w in "a red circle moving left".split()] + [1, 0, 0]
        assert ids[1] == [1] + [0] * 7  # the empty prompt: eos, then <pad> (id 0, as T5 pads)
    ids = mp.motion_tokenizer(16)("a red blob").input_ids
    assert ids[2] == 2  # a word outside the vocabulary is <unk>


def test_vae_pretraining_writes_normalised_latents_and_the_round_trip(tiny):
    from visalign.testbed.pretrain.motion_pretrain import MotionStream, decode_unclamped, encode_clips, load_vae

    cfg = json.loads((tiny / "vae" / "config.json").read_text())
    assert cfg["_class_name"] == "AutoencoderKLWan" and len(cfg["latents_mean"]) == len(cfg["latents_std"]) == 4
    assert cfg["latents_std"] != [1.0] * 4  # measured, not the defaults
    vae = load_vae(str(tiny / "vae"))
    _, clips = MotionStream([0, 1]).batch(16)  # the clips the statistics were measured on (STATS_BATCH of 16)
    with torch.no_grad():
        z = encode_clips(vae, clips)
    assert z.shape == (16, 4, 5, 16, 16)  # 9 frames -> 1 + 8 / 2 latent frames of 32 px / 2
    per_channel = z.transpose(0, 1).flatten(1)
    # fp16 storage of the weights and of the statistics' own rounding move them a little
    assert per_channel.mean(1).abs().max() < 0.1 and (per_channel.std(1) - 1).abs().max() < 0.1
    log = [json.loads(line) for line in (tiny / "vae" / "pretrain_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all("mse" in r and "kl" in r for r in log)
    # trained on the decoder's output before decode()'s clamp (which passes no gradient where it saturates)
    with torch.no_grad():
        big = 3 * torch.randn(2, 4, 5, 16, 16, generator=torch.Generator().manual_seed(0))  # saturating latents
        raw, clamped = decode_unclamped(vae, big), vae.decode(big).sample
    assert raw.shape == clamped.shape == (2, 3, 9, 32, 32) and torch.equal(raw.clamp(-1, 1), clamped)
    res = json.loads((tiny / "vae" / "round_trip.json").read_text())
    assert res["round_trip_mse"] > 0 and {"round_trip", "round_trip_exact", "round_trip_extra"} <= set(res)


def test_plain_diffusers_samples_the_folder_without_visalign(tiny):
    code = f"""
import sys, json, torch
from diffusers import WanPipeline
path = {str(tiny / "wan")!r}
pipe = WanPipeline.from_pretrained(path)
pipe.set_progress_bar_config(disable=True)
kw = {{**json.load(open(path + "/sampling.json")), "num_inference_steps": 2}}
video = pipe(["a red circle moving left"], generator=torch.Generator().manual_seed(0), **kw).frames
assert video.shape == (1, 9, 32, 32, 3), video.shape
assert not any(m.startswith("visalign") for m in sys.modules)
print(type(pipe).__name__, pipe.transformer.dtype, pipe.text_encoder.dtype, pipe.vae.dtype)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["WanPipeline"] + ["torch.float32"] * 3  # one dtype throughout, none given
    assert mp.read_sampling(tiny / "wan") == {"num_inference_steps": 4, "guidance_scale": 3.0, "num_frames": 9,
                                              "height": 32, "width": 32, "max_sequence_length": 16}
    index = json.loads((tiny / "wan" / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline" and index["tokenizer"] == ["transformers", "PreTrainedTokenizerFast"]


def test_weights_on_disk_are_fp16_but_the_text_encoder(tiny):
    from safetensors import safe_open

    for folder, dtype in ((tiny / "wan" / "transformer", torch.float16), (tiny / "wan" / "vae", torch.float16),
                          (tiny / "vae", torch.float16), (tiny / "wan" / "text_encoder", torch.float32)):
        with safe_open(str(next(folder.glob("*.safetensors"))), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {dtype}, folder


def test_text_encoder_trains_with_the_transformer_and_pretraining_goes_on(tiny, tmp_path):
    from safetensors.torch import load_file

    from visalign.testbed.pretrain.motion_pretrain import load_vae

    torch.manual_seed(0)  # the recipe's seed: the pipeline pretraining started from
    with mp.quiet():
        fresh = mp.build_wan(mp.WanConfig(**{**WAN, "text": mp.UMT5Config(**TEXT)}), load_vae(str(tiny / "vae")))
    trained = load_file(str(tiny / "wan" / "text_encoder" / "model.safetensors"))
    assert any(not torch.equal(v, trained[k]) for k, v in fresh.text_encoder.state_dict().items() if k in trained)

    assert main(["pretrain", str(_recipe(tmp_path, "motion_wan_pretrain", {}, init=str(tiny / "wan"))),
                 "--out", str(tmp_path / "more")]) == 0
    assert mp.read_sampling(tmp_path / "more") == mp.read_sampling(tiny / "wan")  # its defaults come with it
    name = "transformer/diffusion_pytorch_model.safetensors"
    before, after = load_file(str(tiny / "wan" / name)), load_file(str(tmp_path / "more" / name))
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)


def test_bad_recipes_are_one_line(tiny, tmp_path, capsys):
    for recipe, words in (
        (_recipe(tmp_path, "motion_wan_pretrain", {"depth": 3}), ("depth", "head_dim")),
        (_recipe(tmp_path, "motion_wan_pretrain", {}, vae=str(tmp_path / "nowhere")), ("builtin:motion-vae",)),
        (_recipe(tmp_path, "motion_vae_pretrain", {"temporal_downsample": [True, True]}), ("temporal_downsample",)),
        (_recipe(tmp_path, "motion_wan_pretrain", {}, init=str(tiny / "vae")), ("WanPipeline",)),
    ):
        capsys.readouterr()
        assert main(["pretrain", str(recipe), "--out", str(tmp_path / "x")]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and all(w in err[0] for w in words), err


def test_builtin_motion_wan_without_its_weights_names_the_pretraining_commands(tmp_path, monkeypatch):
    from visalign.models.registry import BUNDLED_PIPELINES, load_model
    from visalign.testbed.models import registry

    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)  # the bundle as it is before the weights are trained
    with pytest.raises(ValueError) as e:
        load_model("builtin:motion-wan")
    msg = str(e.value)
    assert "\n" not in msg and "visalign pretrain motion-vae-pretrain" in msg and "motion-wan-pretrain" in msg
    with pytest.raises(ValueError, match="holds no pipeline"):
        load_model(f"builtin:motion-wan?path={tmp_path}")
    assert "builtin:motion-wan" in BUNDLED_PIPELINES
