"""The shapes world as real diffusers pipelines (models/shapes_pipelines.py, pretrain/pipeline_pretrain.py): the
world tokenizer, the pretraining recipes at tiny size, plain-diffusers loading with no visalign import, and
plain diffusers drawing the same images as visalign's sampler (benchmarks/plain_diffusers_eval.py)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from visalign.cli import main
from visalign.testbed.models import shapes_pipelines as sp
from visalign.rewards.base import REWARDS, Reward
from visalign.types import RewardOutput
from visalign.testbed.world.vocab import vocabulary

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import plain_diffusers_eval as plain  # noqa: E402

TINY_TEXT = {"dim": 16, "projection": 16, "layers": 1, "heads": 2}
SD3 = {"layers": 1, "heads": 2, "head_dim": 8, "text": TINY_TEXT, "steps": 4, "guidance": 3.0}
SD15 = {"channels": [16, 32], "norm_groups": 4, "attention_head_dim": 4, "text": TINY_TEXT, "steps": 4}


def test_every_world_word_is_one_token():
    vocab, merges = sp.learn_merges(("ab", "abc", "b"))
    # symbols: a b</w> | a b c</w> | b</w>; pairs (a, b</w>) x1, (a, b) x1, (b, c</w>) x1: ties go to the
    # smallest pair, ("a", "b") < ("a", "b</w>"); then (ab, c</w>) and (a, b</w>) are the only pairs left
    assert merges == [("a", "b"), ("a", "b</w>"), ("ab", "c</w>")]
    assert {"ab</w>", "abc</w>", "b</w>"} <= set(vocab)
    tok = sp.world_tokenizer(12)
    for w in vocabulary():
        ids = tok(w).input_ids
        assert len(ids) == 3 and tok.convert_ids_to_tokens(ids)[1] == w + "</w>", (w, ids)
    ids = tok("Three red stars", padding="max_length", max_length=12).input_ids
    words = ["<|startoftext|>", "three</w>", "red</w>", "stars</w>", "<|endoftext|>"]
    assert tok.convert_ids_to_tokens(ids[:5]) == words
    assert ids[5:] == [1] * 7  # padded with eos, as CLIP pads


def _recipe(tmp: Path, kind: str, model: dict, **extra) -> Path:
    d = {"kind": kind, "description": "tiny", "model": model,
         "train": {"steps": 3, "batch_size": 4, "log_every": 1, "warmup_steps": 1, "seed": 0}, **extra}
    path = tmp / f"{kind}.yaml"
    path.write_text(json.dumps(d))  # YAML is a superset of JSON
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A VAE, an SD3 and an SD1.5 pipeline, each pretrained 3 steps at tiny size through `visalign pretrain`."""
    tmp = tmp_path_factory.mktemp("pipelines")
    assert main(["pretrain", str(_recipe(tmp, "vae_pretrain", {"channels": [8, 16], "norm_groups": 4})),
                 "--out", str(tmp / "vae")]) == 0
    assert main(["pretrain", str(_recipe(tmp, "sd3_pretrain", SD3, vae=str(tmp / "vae"))),
                 "--out", str(tmp / "sd3")]) == 0
    assert main(["pretrain", str(_recipe(tmp, "sd15_pretrain", SD15, vae=str(tmp / "vae"), text_encoders="frozen")),
                 "--out", str(tmp / "sd15")]) == 0
    return tmp


def test_vae_latents_have_unit_statistics(tiny):
    from visalign.models.diffusers_adapter import load_diffusers
    from visalign.testbed.pretrain.pipeline_pretrain import STATS_BATCH
    from visalign.testbed.pretrain.pretrain import STREAMS
    from visalign.images import images_to_tensor

    cfg = json.loads((tiny / "vae" / "config.json").read_text())
    assert cfg["scaling_factor"] != 1.0 and cfg["shift_factor"] != 0.0  # measured, not the defaults
    adapter = load_diffusers(str(tiny / "sd3"))
    _, images = STREAMS["shapes"]([0, 1], 32).batch(STATS_BATCH)  # the batch the statistics were measured on
    with torch.no_grad():
        z = adapter.encode_images(images_to_tensor(images))
    # fp16 storage of the weights moves them a little
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05
    log = [json.loads(line) for line in (tiny / "vae" / "pretrain_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all("mse" in r and "kl" in r for r in log)


@pytest.mark.parametrize("kind", ["sd3", "sd15"])
def test_plain_diffusers_loads_the_folder_without_visalign(tiny, kind):
    code = f"""
import sys, json, torch, diffusers
path = {str(tiny / kind)!r}
index = json.load(open(path + "/model_index.json"))
absent = {{k: None for k, v in index.items() if v == [None, None]}}
pipe = getattr(diffusers, index["_class_name"]).from_pretrained(path, **absent)
pipe.set_progress_bar_config(disable=True)
kw = json.load(open(path + "/sampling.json"))
img = pipe(["a red circle"], generator=torch.Generator().manual_seed(0), output_type="np", **kw).images
assert img.shape == (1, 32, 32, 3), img.shape
assert not any(m.startswith("visalign") for m in sys.modules)
print(type(pipe).__name__, pipe.vae.dtype, sorted(absent))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    name = "StableDiffusion3Pipeline" if kind == "sd3" else "StableDiffusionPipeline"
    assert out.stdout.startswith(f"{name} torch.float32")  # one dtype throughout with no torch_dtype given
    if kind == "sd3":
        assert "text_encoder_3" in out.stdout and "tokenizer_3" in out.stdout  # T5 left out
    index = json.loads((tiny / kind / "model_index.json").read_text())
    weights = next((tiny / kind / ("transformer" if kind == "sd3" else "unet")).glob("*.safetensors"))
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16  # the bundle's storage
    assert index["_class_name"] == sp.PIPELINES[kind]


@pytest.mark.parametrize("kind", ["sd3", "sd15"])
def test_plain_diffusers_draws_visalign_eval_images(tiny, kind):
    from visalign.testbed.evaluate import eval_items
    from visalign.models.registry import load_generator

    assert plain.items(3, 2, "eval") == eval_items(3, 2, "eval")
    assert plain.items(2, 0, "train") == eval_items(2, 0, "train")
    its = plain.items(1, 0, "eval")
    prompts, seeds = [p for _, p, _ in its], [s for _, _, s in its]
    pipe = plain.load(str(tiny / kind), None)
    theirs = plain.generate(pipe, prompts, seeds, plain.call_args(pipe, str(tiny / kind), None, None))
    ours = load_generator(f"diffusers:{tiny / kind}").generate(prompts, seeds)
    assert ours.shape == theirs.shape == (6, 32, 32, 3)
    assert int(np.abs(ours.astype(int) - theirs.astype(int)).max()) <= 1  # float rounding at the 8-bit step
    assert np.abs(ours.astype(int)[0] - ours.astype(int)[1]).max() > 10  # not trivially equal


def test_sd15_folder_needs_no_safety_checker(tiny):
    """Saved without a safety checker and saying so, so a plain from_pretrained(path) loads without warnings."""
    index = json.loads((tiny / "sd15" / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False


def test_bundled_sampling_defaults_reach_the_adapter(tiny):
    from visalign.models.diffusers_adapter import load_diffusers

    sd3 = load_diffusers(str(tiny / "sd3"))
    assert (sd3.default_steps, sd3.default_guidance, sd3.max_sequence_length) == (4, 3.0, 1)
    assert sd3.default_shift == 1.0 and sd3.latent_shape == (4, 16, 16)
    assert load_diffusers(str(tiny / "sd3"), max_sequence_length=0).max_sequence_length == 0  # an option wins
    sd15 = load_diffusers(str(tiny / "sd15"))
    assert (sd15.default_steps, sd15.prediction_type) == (4, "v_prediction")


def test_text_encoders_train_or_stay_as_initialised(tiny):
    from visalign.models.diffusers_adapter import load_diffusers
    from visalign.testbed.pretrain.pipeline_pretrain import load_vae

    for kind, cfg, build, trains in (("sd3", sp.config_from_dict(sp.SD3Config, SD3), sp.build_sd3, True),
                                     ("sd15", sp.config_from_dict(sp.SD15Config, SD15), sp.build_sd15, False)):
        torch.manual_seed(0)  # the recipe's seed: the pipeline pretraining started from
        with sp.quiet():
            fresh = build(cfg, load_vae(str(tiny / "vae")))
        trained = load_diffusers(str(tiny / kind)).pipe
        pairs = zip(fresh.text_encoder.state_dict().values(), trained.text_encoder.state_dict().values())
        assert all(torch.equal(a, b) for a, b in pairs) != trains, kind  # text_encoders: train | frozen


def test_bad_recipes_and_folders_are_one_line(tmp_path, capsys):
    bad = _recipe(tmp_path, "sd3_pretrain", {"depth": 3})
    assert main(["pretrain", str(bad), "--out", str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "depth" in err[0] and "head_dim" in err[0]
    bad = _recipe(tmp_path, "sd15_pretrain", {}, vae=str(tmp_path / "nowhere"))
    assert main(["pretrain", str(bad), "--out", str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "builtin:shapes-vae" in err[0]
    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="something other than a saved model"):
        sp.save_vae(sp.build_vae(sp.VAEConfig(channels=(8, 16), norm_groups=4)), keep)
    assert (keep / "mine.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


class _Brightness(Reward):
    """Test reward: mean brightness, different for every image (random-weight pipelines draw no shapes)."""

    def __call__(self, images, prompts, metadata=None):
        return RewardOutput(images.float().mean(dim=(1, 2, 3)))


if "test_pipelines_brightness" not in REWARDS:
    REWARDS.register("test_pipelines_brightness")(lambda: _Brightness())


def test_one_iteration_lora_round_trips_to_plain_diffusers(tiny, tmp_path):
    """train 1 iteration of Flow-GRPO with a LoRA on the SD3 pipeline -> export diffusers-lora -> plain diffusers
    `load_lora_weights`: its images change, and equal visalign's sampler of the trained policy."""
    from visalign.recipe import load_train_recipe
    from visalign.models.registry import PolicyGenerator, load_generator
    from visalign.trainer.trainer import Trainer

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""kind: train
model: "diffusers:{tiny / 'sd3'}"
reward: test_pipelines_brightness
algorithm: grpo
sampling: {{kind: flow, steps: 3, guidance_scale: 3.0, noise_level: 0.7}}
train: {{iterations: 1, batch_size: 4, group_size: 2, lr: 0.5, finetune: lora, lora_rank: 4, lora_alpha: 64.0,
        lora_targets: [to_q, to_k, to_v, to_out.0, add_q_proj, add_k_proj, add_v_proj],
        eval_per_category: 1, eval_every: 1, checkpoint_every: 1, diagnose_every: 0}}
""")
    r, resolved = load_train_recipe(str(recipe))
    trainer = Trainer(r, resolved, tmp_path / "run", progress=False, log=lambda *a, **k: None)
    trainer.train()
    assert main(["export", str(tmp_path / "run"), "--format", "diffusers-lora", "--out", str(tmp_path / "lora")]) == 0

    its = plain.items(1, 0, "eval")
    prompts, seeds = [p for _, p, _ in its], [s for _, _, s in its]
    ours = PolicyGenerator(trainer.adapter).generate(prompts, seeds)  # the sampling.json defaults, LoRA active
    base_pipe = plain.load(str(tiny / "sd3"), None)
    kw = plain.call_args(base_pipe, str(tiny / "sd3"), None, None)
    base = plain.generate(base_pipe, prompts, seeds, kw)
    with_lora = plain.generate(plain.load(str(tiny / "sd3"), str(tmp_path / "lora")), prompts, seeds, kw)
    assert int(np.abs(with_lora.astype(int) - ours.astype(int)).max()) <= 1
    moved = int(np.abs(with_lora.astype(int) - base.astype(int)).max())
    assert moved > 8, moved  # the LoRA is not a no-op

    # merged: a whole pipeline folder with the folder's sampling defaults and tokenizer files carried over
    assert main(["export", str(tmp_path / "run"), "--format", "merged", "--out", str(tmp_path / "merged")]) == 0
    merged = tmp_path / "merged"
    assert sp.read_sampling(merged) == sp.read_sampling(tiny / "sd3")
    assert (merged / "tokenizer" / "merges.txt").is_file() and (merged / "tokenizer_2" / "vocab.json").is_file()
    from_merged = load_generator(f"diffusers:{merged}").generate(prompts, seeds)
    assert int(np.abs(from_merged.astype(int) - ours.astype(int)).max()) <= 1


def test_bundled_vae_keeps_what_the_verifier_checks():
    """builtin:shapes-vae (fp16 weights, loaded in fp32): the oracle's held-out renders encoded and decoded pass
    the verifier as the renders do, under both readings."""
    from visalign.testbed.pretrain.pipeline_pretrain import load_vae, round_trip

    vae = load_vae("builtin:shapes-vae")
    assert vae.config.latent_channels == 4 and vae.config.block_out_channels == [16, 32]  # 16x16x4 latents
    res = round_trip(vae, per_category=20)
    assert res["round_trip"] >= 0.99 and res["round_trip_exact"] >= 0.99, res


def test_pretraining_goes_on_from_a_saved_pipeline(tiny, tmp_path, capsys):
    from safetensors.torch import load_file

    recipe = _recipe(tmp_path, "sd3_pretrain", {}, init=str(tiny / "sd3"))
    assert main(["pretrain", str(recipe), "--out", str(tmp_path / "more")]) == 0
    assert sp.read_sampling(tmp_path / "more") == sp.read_sampling(tiny / "sd3")  # its defaults come with it
    name = "transformer/diffusion_pytorch_model.safetensors"
    before, after = load_file(str(tiny / "sd3" / name)), load_file(str(tmp_path / "more" / name))
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    bad = _recipe(tmp_path, "sd15_pretrain", {}, init=str(tiny / "sd3"))
    capsys.readouterr()
    assert main(["pretrain", str(bad), "--out", str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "StableDiffusion3Pipeline" in err[0] and "StableDiffusionPipeline" in err[0]


@pytest.mark.parametrize("kind,cls", [("sd3", "StableDiffusion3Pipeline"), ("sd15", "StableDiffusionPipeline")])
def test_bundled_pipeline_in_plain_diffusers_draws_what_visalign_eval_draws(kind, cls):
    """builtin:shapes-sd3 and -sd15 are ordinary pipeline folders: plain diffusers loads them with no visalign
    import, and with the same steps, guidance and seeds draws visalign's images (so the same held-out scores)."""
    from visalign.testbed.models.registry import WEIGHTS_DIR
    from visalign.models.registry import load_generator

    path = WEIGHTS_DIR / f"shapes-{kind}"
    code = f"""
import sys, json, torch
from diffusers import {cls}
absent = {{k: None for k, v in json.load(open({str(path / "model_index.json")!r})).items() if v == [None, None]}}
pipe = {cls}.from_pretrained({str(path)!r}, **absent)  # SD3: T5 left out; SD1.5: no safety checker
pipe.set_progress_bar_config(disable=True)
img = pipe("a red circle", generator=torch.Generator().manual_seed(0), output_type="np",
           **json.load(open({str(path / "sampling.json")!r}))).images
assert img.shape == (1, 32, 32, 3) and not any(m.startswith("visalign") for m in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    its = plain.items(2, 0, "eval")
    prompts, seeds = [p for _, p, _ in its], [s for _, _, s in its]
    pipe = plain.load(str(path), None)
    theirs = plain.generate(pipe, prompts, seeds, plain.call_args(pipe, str(path), None, None))
    ours = load_generator(f"builtin:shapes-{kind}").generate(prompts, seeds)
    assert int(np.abs(ours.astype(int) - theirs.astype(int)).max()) <= 1
    assert plain.score(theirs, its) == plain.score(ours, its)


def test_tokenizer_folders_hold_the_bpe_files_transformers_4_reads(tmp_path):
    """Beside tokenizer.json (transformers 5), vocab.json + merges.txt alone give the same ids."""
    import shutil

    from transformers import CLIPTokenizer

    from visalign.testbed.models.registry import WEIGHTS_DIR

    folder = WEIGHTS_DIR / "shapes-sd3" / "tokenizer_2"
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(folder / f, tmp_path)
    prompts = ["a red circle left of a blue square", "four triangles", ""]
    ids = lambda tok: tok(prompts, padding="max_length", max_length=12).input_ids  # noqa: E731
    assert ids(CLIPTokenizer.from_pretrained(str(tmp_path))) == ids(CLIPTokenizer.from_pretrained(str(folder)))


def test_a_run_on_a_bundled_pipeline_exports_as_a_diffusers_one(tmp_path):
    """builtin:shapes-sd3 is a diffusers pipeline to export too: its LoRA goes out in diffusers' format, and the
    merged folder keeps the bundled sampling defaults."""
    from visalign.recipe import load_train_recipe
    from visalign.testbed.models.registry import WEIGHTS_DIR
    from visalign.trainer.trainer import Trainer

    r, resolved = load_train_recipe("geneval-s-sd3-grpo", [
        "train.iterations=1", "train.batch_size=2", "train.group_size=2", "train.minibatches=1", "train.lora_rank=2",
        "train.eval_per_category=1", "train.budget_minutes=0", "sampling.steps=2"])
    Trainer(r, resolved, tmp_path / "run", progress=False, log=lambda *a, **k: None).train()
    for fmt in ("diffusers-lora", "merged"):
        assert main(["export", str(tmp_path / "run"), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
    assert (tmp_path / "diffusers-lora" / "pytorch_lora_weights.safetensors").is_file()
    assert sp.read_sampling(tmp_path / "merged") == sp.read_sampling(WEIGHTS_DIR / "shapes-sd3")


def test_the_weights_bundle_stays_within_40_mib():
    from visalign.testbed.models.registry import WEIGHTS_DIR

    size = sum(f.stat().st_size for f in WEIGHTS_DIR.rglob("*") if f.is_file())
    assert size <= 40 * 2**20, f"{size / 2**20:.1f} MiB"
