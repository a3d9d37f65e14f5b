"""`visalign export`: a LoRA trained by `visalign train` on a tiny diffusers pipeline, exported in diffusers'
LoRA format, loads in plain diffusers and gives the image visalign's deterministic sampler gives with the
LoRA active; a merged export loads with from_pretrained and gives it too. Built-in models, full fine-tunes,
and the one-line refusals. The model card (README.md), peft's adapter_config.json and --push-to-hub (the Hub
client's methods replaced by recorders: no test touches the network)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from visalign.cli import main
from visalign.recipe import load_train_recipe
from visalign.models.registry import load_model
from visalign.models.tiny_diffusers import save_tiny_pipeline
from visalign.policies import FlowSampling, make_policy
from visalign.rewards.base import REWARDS, Reward
from visalign.trainer.trainer import Trainer
from visalign.types import RewardOutput

PROMPTS = ["a red circle", "two blue squares"]
GUIDANCE = 2.0
STEPS = 3
PIPELINES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
             "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}


class _Brightness(Reward):
    """Test reward: mean brightness, dense and different for every image (any image, not only shapes)."""

    def __call__(self, images, prompts, metadata=None):
        return RewardOutput(images.float().mean(dim=(1, 2, 3)))


if "test_export_brightness" not in REWARDS:
    REWARDS.register("test_export_brightness")(lambda: _Brightness())


def _train(tmp_path, model: str, family: str, finetune: str = "lora", iterations: int = 2):
    """Train `iterations` GRPO iterations of a recipe on `model`; -> (run folder, the trainer after training)."""
    kind = "ddim" if family == "diffusion" else "flow"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""kind: train
model: "{model}"
reward: test_export_brightness
algorithm: grpo
sampling: {{kind: {kind}, steps: {STEPS}, guidance_scale: {GUIDANCE}}}
eval: {{steps: 2}}
train: {{iterations: {iterations}, batch_size: 4, group_size: 2, lr: 0.05, finetune: {finetune}, lora_rank: 4,
        lora_alpha: 8.0, lora_targets: [to_q, to_k, to_v, to_out], eval_per_category: 1, eval_every: {iterations},
        checkpoint_every: {iterations}, diagnose_every: 0}}
""")
    r, resolved = load_train_recipe(str(recipe))
    trainer = Trainer(r, resolved, tmp_path / "run", progress=False, log=lambda *a, **k: None)
    trainer.train()
    return tmp_path / "run", trainer


def _visalign_image(adapter, latents):
    """visalign's deterministic sampler (DDIM eta 0 / Euler ODE) -> images [B, 3, 32, 32] in [0, 1]."""
    policy = make_policy(adapter)
    s = policy.eval_sampling(STEPS, GUIDANCE)
    if adapter.family == "flow":
        s = FlowSampling(steps=STEPS, kind="ode", guidance_scale=GUIDANCE, shift=adapter.default_shift)
    with torch.no_grad():
        return (policy.sample(PROMPTS, [1, 2], s, latents=latents).images + 1) / 2


def _diffusers_image(pipe, kind, latents):
    """The plain diffusers pipeline's image for the same start, steps and guidance -> [B, 3, 32, 32] in [0, 1]."""
    pipe.set_progress_bar_config(disable=True)
    kw = {"height": 32, "width": 32, "num_inference_steps": STEPS, "output_type": "pt"}
    if kind == "flux":
        c, h, w = latents.shape[1:]
        kw.update(latents=pipe._pack_latents(latents, latents.shape[0], c, h, w), true_cfg_scale=GUIDANCE,
                  negative_prompt=[""] * len(PROMPTS), guidance_scale=3.5)
    else:
        kw.update(latents=latents, guidance_scale=GUIDANCE)
    if kind == "sd3":
        kw["sigmas"] = list(np.linspace(1.0, 0.0, STEPS + 1)[:-1])
    with torch.no_grad():
        return pipe(PROMPTS, **kw).images


def _plain(kind, path):
    import diffusers

    return getattr(diffusers, PIPELINES[kind]).from_pretrained(str(path), local_files_only=True)


@pytest.mark.parametrize("kind", ["sd15", "sdxl", "sd3", "flux"])
def test_trained_lora_exports_to_plain_diffusers(kind, tmp_path):
    base_dir = save_tiny_pipeline(kind, tmp_path / "base")
    spec = f"diffusers:{base_dir}" + ("?resolution=32" if kind == "flux" else "")
    family = "diffusion" if kind in ("sd15", "sdxl") else "flow"
    run, trainer = _train(tmp_path, spec, family)
    lora_b = {n: p.detach().clone() for n, p in trainer.module.named_parameters() if "lora_B" in n}
    assert lora_b and max(float(b.abs().max()) for b in lora_b.values()) > 1e-3  # training moved the LoRA

    assert main(["export", str(run), "--format", "diffusers-lora", "--out", str(tmp_path / "lora")]) == 0
    assert (tmp_path / "lora" / "adapter_config.json").is_file()  # load_lora_weights below reads the folder with it
    saved = load_file(str(tmp_path / "lora" / "pytorch_lora_weights.safetensors"))
    ups = [v for k, v in saved.items() if "lora.up" in k or "lora_B" in k]
    assert len(ups) == len(lora_b) and all(float(v.abs().max()) > 0 for v in ups)
    # alpha / rank = 8 / 4 is folded into the B (up) matrices
    assert max(float(v.abs().max()) for v in ups) == pytest.approx(2 * max(float(b.abs().max()) for b in lora_b.values()))

    latents = torch.randn(2, *trainer.adapter.latent_shape, generator=torch.Generator().manual_seed(7))
    ours = _visalign_image(trainer.adapter, latents)
    pipe = _plain(kind, base_dir)
    base = _diffusers_image(pipe, kind, latents)
    pipe.load_lora_weights(str(tmp_path / "lora"))
    with_lora = _diffusers_image(pipe, kind, latents)
    assert float((with_lora - ours).abs().max()) < 1e-4
    assert float((base - ours).abs().max()) > 1e-3  # the LoRA is not a no-op

    assert main(["export", str(run), "--format", "merged", "--out", str(tmp_path / "merged")]) == 0
    merged = _diffusers_image(_plain(kind, tmp_path / "merged"), kind, latents)
    assert float((merged - ours).abs().max()) < 1e-4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_full_finetune_exports_merged_only(tmp_path, capsys):
    base_dir = save_tiny_pipeline("sd15", tmp_path / "base")
    run, trainer = _train(tmp_path, f"diffusers:{base_dir}", "diffusion", finetune="full", iterations=1)
    capsys.readouterr()
    assert main(["export", str(run), "--format", "diffusers-lora", "--out", str(tmp_path / "lora")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "full fine-tune" in err and "--format merged" in err
    assert not (tmp_path / "lora").exists()
    assert main(["export", str(run), "--format", "merged", "--out", str(tmp_path / "merged")]) == 0
    unet = _plain("sd15", tmp_path / "merged").unet.state_dict()
    trained = trainer.module.state_dict()
    assert unet.keys() == trained.keys() and all(torch.equal(unet[k], trained[k]) for k in unet)
    base = _plain("sd15", base_dir).unet.state_dict()
    assert any(not torch.equal(base[k], trained[k]) for k in base)


def test_builtin_model_merged_export(tiny_flow_model, tmp_path, capsys):
    tiny_flow_model.save_pretrained(tmp_path / "tiny")
    run, trainer = _train(tmp_path, str(tmp_path / "tiny"), "flow", iterations=1)
    capsys.readouterr()
    assert main(["export", str(run), "--format", "diffusers-lora", "--out", str(tmp_path / "lora")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs a diffusers model" in err
    assert main(["export", str(run), "--format", "merged", "--out", str(tmp_path / "merged")]) == 0
    merged = load_model(str(tmp_path / "merged"))
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        ours = trainer.adapter.predict(x, t, trainer.adapter.encode(PROMPTS))
        theirs = merged.predict(x, t, merged.encode(PROMPTS))
        base = load_model(str(tmp_path / "tiny"))
        before = base.predict(x, t, base.encode(PROMPTS))
    assert float((ours - theirs).abs().max()) < 1e-5
    assert float((ours - before).abs().max()) > 1e-4


def test_export_refusals_are_one_line(tiny_flow_model, tmp_path, capsys):
    tiny_flow_model.save_pretrained(tmp_path / "tiny")
    run, _ = _train(tmp_path, str(tmp_path / "tiny"), "flow", iterations=1)

    def err_of(*args):
        capsys.readouterr()
        assert main(["export", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        return err

    err = err_of(str(run), "--format", "onnx", "--out", str(tmp_path / "x"))
    assert "'onnx'" in err and "accepted: diffusers-lora, merged" in err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert "not an empty folder" in err_of(str(run), "--format", "merged", "--out", str(tmp_path / "full"))
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"
    assert "no such run folder" in err_of(str(tmp_path / "nope"), "--format", "merged", "--out", str(tmp_path / "y"))
    assert "recipe.json" in err_of(str(tmp_path / "tiny"), "--format", "merged", "--out", str(tmp_path / "y"))
    (tmp_path / "empty").mkdir()  # an empty folder is accepted
    assert main(["export", str(run), "--format", "merged", "--out", str(tmp_path / "empty")]) == 0
    assert (tmp_path / "empty" / "model.safetensors").is_file()


def test_lora_on_non_attention_layers_loads_whole(tmp_path):
    """A LoRA on attention, feed-forward, conv and time-embedding layers (rank 2, alpha 6) loads entirely in
    plain diffusers (a half-renamed state dict would silently drop the attention layers)."""
    from diffusers import StableDiffusionPipeline

    from visalign import lora
    from visalign.models.diffusers_adapter import adapter_for
    from visalign.models.export import _write_diffusers_lora

    base_dir = save_tiny_pipeline("sd15", tmp_path / "base")
    adapter = adapter_for(StableDiffusionPipeline.from_pretrained(str(base_dir), local_files_only=True))
    lora.add_lora(adapter.module, 2, 6.0, ("to_q", "proj_in", "ff.net.2", "conv1", "time_emb_proj"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in adapter.module.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    _write_diffusers_lora(adapter, adapter.module, 2, 6.0, tmp_path / "lora")
    x, t = torch.randn(1, 4, 16, 16, generator=g), torch.tensor([500])
    with torch.no_grad():
        cond = adapter.encode(["a red circle"])
        ours = adapter.predict(x, t, cond)
        pipe = _plain("sd15", base_dir)
        base = pipe.unet(x, t, encoder_hidden_states=cond.embeds).sample
        pipe.load_lora_weights(str(tmp_path / "lora"))
        theirs = pipe.unet(x, t, encoder_hidden_states=cond.embeds).sample
    assert float((ours - theirs).abs().max()) < 1e-5
    assert float((ours - base).abs().max()) > 1e-2


# ------------------------------------------------------------------------------ the model card and peft config


def _card(folder) -> tuple[dict, str]:
    """(front matter, body) of an export's README.md."""
    import yaml

    _, head, body = (folder / "README.md").read_text().split("---\n", 2)
    return yaml.safe_load(head), body


def _score_row(body: str, key: str) -> list[str]:
    """The cells after the label of the score table's row for metrics key `key`."""
    line = next(line for line in body.splitlines() if f"(`{key}`)" in line)
    return [c.strip() for c in line.strip().strip("|").split("|")][1:]


def test_lora_export_card_and_adapter_config(tmp_path):
    """The card names the base, recipe and the run's own before/after numbers; adapter_config.json is the
    LoraConfig that, with the weight file, rebuilds the trained network in peft (and diffusers still loads
    the folder)."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    from visalign.metrics import read_metrics

    base_dir = save_tiny_pipeline("sd15", tmp_path / "base")
    run, trainer = _train(tmp_path, f"diffusers:{base_dir}", "diffusion")
    out = tmp_path / "lora"
    assert main(["export", str(run), "--format", "diffusers-lora", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json",
                                                      "pytorch_lora_weights.safetensors"]

    meta, body = _card(out)
    assert meta["library_name"] == "diffusers"
    assert meta["tags"] == ["visalign", "reinforcement-learning", "grpo", "lora", "text-to-image"]
    assert "base_model" not in meta and "license" not in meta  # a local folder without a card: neither is known
    assert f"`{base_dir}`" in body and "StableDiffusionPipeline" in body
    for text in ("| algorithm | `grpo` |", "| reward | `test_export_brightness` |", "| prompt set | `geneval-s` |",
                 "LoRA, rank 4, alpha 8.0, on `to_q`, `to_k`, `to_v`, `to_out`", "| learning rate | 0.05 ",
                 "| iterations | 2 trained", "4 images per iteration, groups of 2", "| seed | 0 |",
                 "6 held-out prompts (1 per category, evaluation seed 0)"):
        assert text in body, text
    evals = [r for r in read_metrics(run) if "eval_overall" in r]
    before, after = evals[0], evals[-1]
    assert (before["iteration"], after["iteration"]) == (0, 2)
    assert "before (iteration 0)" in body and "after (iteration 2)" in body
    for key in ("eval_overall", "eval_exact", "eval_extra", "eval_reward"):
        b, a = before[key], after[key]
        assert _score_row(body, key) == [f"{b:.3f}", f"{a:.3f}", f"{a - b:+.3f}"], key
    for spec, value in after["eval_judges"].items():
        assert _score_row(body, f"eval_judges.{spec}")[:2] == [f"{before['eval_judges'][spec]:.3f}", f"{value:.3f}"]
    colors = next(line for line in body.splitlines() if line.startswith("| colors |"))
    assert colors.split("|")[2:4] == [f" {before['eval_categories']['colors']:.3f} ",
                                      f" {after['eval_categories']['colors']:.3f} "]
    assert "pipe = DiffusionPipeline.from_pretrained(base)" in body and f'base = "{base_dir}"' in body
    assert f'pipe.load_lora_weights("{out}")' in body

    config = LoraConfig.from_pretrained(str(out))
    assert config.r == 4 and config.lora_alpha == 4  # the recipe's alpha / rank (8 / 4) is folded into lora_B
    assert set(config.target_modules) == {"to_q", "to_k", "to_v", "to_out.0"}  # peft's names for the recipe's
    assert "lora_alpha 8 (scale 2)" in body and "peft keys under `unet.`" in body

    x, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    with torch.no_grad():
        cond = trainer.adapter.encode(["a red circle"])
        ours = trainer.adapter.predict(x, t, cond)
        unet = StableDiffusionPipeline.from_pretrained(str(base_dir), local_files_only=True).unet
        inject_adapter_in_model(config, unet)
        weights = load_file(str(out / "pytorch_lora_weights.safetensors"))
        result = set_peft_model_state_dict(unet, {k.removeprefix("unet."): v for k, v in weights.items()})
        assert not result.unexpected_keys
        with_peft = unet(x, t, encoder_hidden_states=cond.embeds).sample
        pipe = _plain("sd15", base_dir)
        pipe.load_lora_weights(str(out))
        with_diffusers = pipe.unet(x, t, encoder_hidden_states=cond.embeds).sample
    assert float((with_peft - ours).abs().max()) < 1e-5
    assert float((with_diffusers - ours).abs().max()) < 1e-5


def test_merged_card_of_builtin_model(tiny_flow_model, tmp_path):
    """A merged built-in model's card: no diffusers metadata, no lora tag, loaded by visalign; a run whose
    metrics hold no evaluation gets a card that says so and shows no score."""
    tiny_flow_model.save_pretrained(tmp_path / "tiny")
    run, _ = _train(tmp_path, str(tmp_path / "tiny"), "flow", iterations=1)
    assert main(["export", str(run), "--format", "merged", "--out", str(tmp_path / "merged")]) == 0
    meta, body = _card(tmp_path / "merged")
    assert "library_name" not in meta and "lora" not in meta["tags"] and "grpo" in meta["tags"]
    assert f"visalign sample --model {tmp_path / 'merged'}" in body
    assert f'load_generator("{tmp_path / "merged"}")' in body
    assert "after (iteration 1)" in body and "(`eval_overall`)" in body

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    def keep_evals(keep):
        (run / "metrics.jsonl").write_text("".join(
            json.dumps({k: v for k, v in r.items() if keep(r) or not k.startswith("eval_")}) + "\n" for r in rows))

    keep_evals(lambda r: r["iteration"] == 0)  # evaluated before training only
    assert main(["export", str(run), "--format", "merged", "--out", str(tmp_path / "merged1")]) == 0
    _, body = _card(tmp_path / "merged1")
    assert "evaluated only before training" in body and "before (iteration 0)" in body and "after (" not in body
    keep_evals(lambda r: False)
    assert main(["export", str(run), "--format", "merged", "--out", str(tmp_path / "merged2")]) == 0
    _, body = _card(tmp_path / "merged2")
    assert "no held-out evaluation" in body and "(`eval_overall`)" not in body and "before (iteration" not in body


def test_bundled_base_card_names_the_package_folder():
    """A bundled base: its folder inside visalign and visalign's own license; a Hub id goes to base_model."""
    from visalign.models.model_card import describe_base, front_matter
    from visalign.testbed.models.registry import WEIGHTS_DIR

    base = describe_base("builtin:shapes-sd3")
    assert base.bundled == "builtin:shapes-sd3" and base.path == str(WEIGHTS_DIR / "shapes-sd3")
    assert base.license == "apache-2.0" and base.hub_id is None
    hub = describe_base("diffusers:stabilityai/stable-diffusion-3.5-medium?dtype=bfloat16")
    assert hub.hub_id == "stabilityai/stable-diffusion-3.5-medium" and hub.path is None
    assert "base_model: stabilityai/stable-diffusion-3.5-medium" in front_matter({"algorithm": "nft"}, hub, "merged")


# ------------------------------------------------------------------------------ --push-to-hub


@pytest.fixture
def hub_calls(monkeypatch):
    """HfApi.create_repo / upload_folder replaced by recorders (and what the folder held at upload time);
    online and logged in as far as visalign can tell."""
    from pathlib import Path

    import huggingface_hub
    from huggingface_hub import HfApi, constants

    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kw):
        files = sorted(p.name for p in Path(kw["folder_path"]).iterdir())
        calls.append(("upload_folder", kw["repo_id"], {**kw, "files": files}))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    return calls


def test_push_to_hub_only_when_asked(tiny_flow_model, tmp_path, hub_calls, capsys):
    tiny_flow_model.save_pretrained(tmp_path / "tiny")
    run, _ = _train(tmp_path, str(tmp_path / "tiny"), "flow", iterations=1)
    assert main(["export", str(run), "--format", "merged", "--out", str(tmp_path / "a")]) == 0
    assert hub_calls == []  # no flag, no upload

    out = tmp_path / "b"
    assert main(["export", str(run), "--format", "merged", "--out", str(out), "--push-to-hub", "me/shapes-grpo",
                 "--private"]) == 0
    assert [(c[0], c[1]) for c in hub_calls] == [("create_repo", "me/shapes-grpo"), ("upload_folder", "me/shapes-grpo")]
    assert hub_calls[0][2]["private"] is True and hub_calls[0][2]["exist_ok"] is True
    upload = hub_calls[1][2]
    assert upload["folder_path"] == str(out) and {"README.md", "model.safetensors"} <= set(upload["files"])
    assert "visalign sample --model DIR" in (out / "README.md").read_text()  # the card says how to get it from the Hub
    assert "hf download me/shapes-grpo" in (out / "README.md").read_text()
    assert "https://huggingface.co/me/shapes-grpo" in capsys.readouterr().out


def test_push_to_hub_failures_are_one_line(tiny_flow_model, tmp_path, hub_calls, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub import HfApi, constants

    tiny_flow_model.save_pretrained(tmp_path / "tiny")
    run, _ = _train(tmp_path, str(tmp_path / "tiny"), "flow", iterations=1)

    def err_of(out, *extra):
        capsys.readouterr()
        assert main(["export", str(run), "--format", "merged", "--out", str(tmp_path / out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        return err

    err = err_of("bad", "--push-to-hub", "not a repo!")
    assert "'not a repo!' is not a Hub repo id" in err and "OWNER/NAME" in err and not (tmp_path / "bad").exists()
    assert "--push-to-hub" in err_of("priv", "--private") and not (tmp_path / "priv").exists()

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    err = err_of("offline", "--push-to-hub", "me/x")
    assert "HF_HUB_OFFLINE" in err and f"the export is complete in {tmp_path / 'offline'}" in err
    assert (tmp_path / "offline" / "README.md").is_file()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert "no Hugging Face token" in err_of("notoken", "--push-to-hub", "me/x")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")

    def unreachable(self, repo_id, **kw):
        raise ConnectionError("Name or service not known\nretrying")

    monkeypatch.setattr(HfApi, "create_repo", unreachable)
    err = err_of("net", "--push-to-hub", "me/x")
    assert "ConnectionError: Name or service not known retrying" in err and "export is complete in" in err
    assert hub_calls == []  # nothing reached the upload
