"""Video pipelines through `diffusers:` (WanPipeline, LTXPipeline; tiny random ones at 9 frames of 32x32): they load
from a saved folder, visalign's deterministic sampler equals the pipeline's own output from the same latents, the
PPO ratio is 1 on-policy, decode / encode_images are each other's inverse through the VAE, `visalign sample`
writes a GIF grid and a PNG strip, and a Wan LoRA exported as diffusers-lora loads in plain diffusers."""

import json

import numpy as np
import pytest
import torch

from visalign import lora
from visalign.models.diffusers_adapter import adapter_for
from visalign.models.registry import load_generator, load_model, model_family
from visalign.models.tiny_diffusers import VIDEO_SAMPLING, build_tiny_pipeline, save_tiny_pipeline
from visalign.policies import FlowSampling, make_policy

PROMPTS = ["a red circle", "two blue squares"]
TARGETS = ("to_q", "to_k", "to_v", "to_out")
PIPELINES = {"wan": "WanPipeline", "ltx": "LTXPipeline"}
LATENT = (8, 3, 8, 8)  # the tiny VAEs: 8 channels, 9 frames -> 3, 32 px -> 8


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    return {kind: save_tiny_pipeline(kind, root / kind) for kind in PIPELINES}


def _adapter(kind, pipe=None, **options):
    return adapter_for(pipe if pipe is not None else build_tiny_pipeline(kind), num_frames=9, resolution=32,
                       max_sequence_length=16, **options)


def _with_lora(adapter, seed=0):
    """LoRA (rank 4, alpha 8) with random B matrices, so it changes the output."""
    params = lora.add_lora(adapter.module, 4, 8.0, TARGETS)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in adapter.module.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return params


def _euler_sigmas(pipe, steps):
    """WanPipeline's __call__ takes no sigmas: its FlowMatchEulerDiscreteScheduler is given visalign's
    (linspace(1, 0, T + 1)[:-1], then shifted by the scheduler), as the SD3 test passes `sigmas`."""
    orig = type(pipe.scheduler).set_timesteps.__get__(pipe.scheduler)
    pipe.scheduler.set_timesteps = lambda n, device=None, **kw: orig(
        sigmas=list(np.linspace(1.0, 0.0, n + 1)[:-1]), device=device)


def _pipeline_output(kind, pipe, latents, steps, guidance, output_type, prompts=PROMPTS):
    """The diffusers pipeline's own sampler from latents [B, C, F, h, w] -> latents [B, C, F, h, w] or videos
    [B, F, 3, H, W] in [0, 1]."""
    if kind == "wan":
        _euler_sigmas(pipe, steps)
    start = latents if kind == "wan" else pipe._pack_latents(latents, 1, 1)  # LTX's pipeline takes packed tokens
    out = pipe(prompts, num_frames=9, height=32, width=32, num_inference_steps=steps, guidance_scale=guidance,
               latents=start, output_type=output_type, max_sequence_length=16).frames
    if output_type == "latent" and kind == "ltx":
        out = pipe._unpack_latents(out, *latents.shape[2:], 1, 1)
    return out


def _visalign(adapter, latents, steps, guidance, prompts=PROMPTS):
    s = FlowSampling(steps=steps, kind="ode", guidance_scale=guidance)  # the adapter's own shift (default_shift)
    with torch.no_grad():
        return make_policy(adapter).sample(prompts, list(range(len(prompts))), s, latents=latents)


# ------------------------------------------------------------------------------------------------ loading


@pytest.mark.parametrize("kind", list(PIPELINES))
def test_saved_video_pipeline_loads_through_diffusers_spec(kind, folders):
    import diffusers

    folder = folders[kind]
    assert json.loads((folder / "sampling.json").read_text()) == VIDEO_SAMPLING
    plain = getattr(diffusers, PIPELINES[kind]).from_pretrained(str(folder), local_files_only=True)
    assert type(plain).__name__ == PIPELINES[kind]
    assert model_family(f"diffusers:{folder}") == "flow"
    adapter = load_model(f"diffusers:{folder}")
    assert adapter.family == "flow" and adapter.is_video and type(adapter.pipe).__name__ == PIPELINES[kind]
    assert (adapter.frames, adapter.height, adapter.width) == (9, 32, 32)  # from sampling.json
    assert adapter.latent_shape == LATENT and adapter.resolution == 32
    assert adapter.default_steps == 50 and adapter.default_guidance == (5.0 if kind == "wan" else 3.0)
    if kind == "wan":
        assert adapter.default_shift == 3.0 and adapter.shift_terminal is None
    else:  # exp(mu) at 3 x 8 x 8 latent tokens, LTX's base/max shift 0.95/2.05 over 1024..4096 tokens
        m = (2.05 - 0.95) / (4096 - 1024)
        assert adapter.default_shift == pytest.approx(np.exp(192 * m + 0.95 - 1024 * m))
        assert adapter.shift_terminal == 0.1
    five = load_model(f"diffusers:{folder}?num_frames=5&height=64&max_sequence_length=8")
    assert five.frames == 5 and five.latent_shape == (8, 2, 16, 8) and five.resolution is None
    assert five.max_sequence_length == 8 and five.encode(["a cat"]).embeds.shape[1] == 8


def test_video_options_are_checked_in_one_line(folders):
    for spec, needle in [
        (f"diffusers:{folders['wan']}?num_frames=10", "num_frames 10 is not accepted for this WanPipeline: it must "
                                                      "be 1 + k x 4"),
        (f"diffusers:{folders['ltx']}?height=34", "height 34 must be a multiple of 4"),
        (f"diffusers:{folders['wan']}?frame_rate=24", "frame_rate applies to LTXPipeline"),
        (f"diffusers:{folders['ltx']}?num_frames=0", "num_frames=0 is not accepted"),
        (f"diffusers:{folders['ltx']}?flux_guidance=2", "flux_guidance applies to FluxPipeline"),
    ]:
        with pytest.raises(ValueError) as info:
            load_model(spec)
        assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)
    with pytest.raises(ValueError, match="apply to video pipelines"):
        adapter_for(build_tiny_pipeline("sd15"), num_frames=9)
    from diffusers import UniPCMultistepScheduler, WanPipeline

    pipe = build_tiny_pipeline("wan")
    # the scheduler Wan's checkpoints ship: its flow_shift is the shift
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    assert _adapter("wan", pipe).default_shift == 5.0
    two = WanPipeline(**{**build_tiny_pipeline("wan").components, "transformer_2": pipe.transformer},
                      boundary_ratio=0.9)
    with pytest.raises(ValueError, match="transformer_2"):
        _adapter("wan", two)


# ---------------------------------------------------------------------------------- sampling == diffusers


@pytest.mark.parametrize("guidance", [1.0, 4.0])
@pytest.mark.parametrize("kind", list(PIPELINES))
def test_deterministic_sampler_equals_the_pipeline(kind, guidance):
    adapter = _adapter(kind)
    latents = torch.randn(2, *adapter.latent_shape, generator=torch.Generator().manual_seed(5))
    traj = _visalign(adapter, latents, 3, guidance)
    assert traj.states.shape == (2, 4, *LATENT) and traj.images.shape == (2, 9, 3, 32, 32)
    with torch.no_grad():
        pipe_latents = _pipeline_output(kind, adapter.pipe, latents, 3, guidance, "latent")
        pipe_videos = _pipeline_output(kind, adapter.pipe, latents, 3, guidance, "pt")
    assert pipe_videos.shape == (2, 9, 3, 32, 32)
    assert float((traj.states[:, -1] - pipe_latents.float()).abs().max()) < 1e-4
    assert float(((traj.images + 1) / 2 - pipe_videos).abs().max()) < 1e-4
    # not trivially equal: the prompts, the start and the frames differ
    assert float((traj.states[0, -1] - traj.states[1, -1]).abs().max()) > 1e-2
    assert float((traj.states[:, -1] - latents).abs().max()) > 1e-2
    assert float((traj.images[:, 0] - traj.images[:, -1]).abs().max()) > 1e-3


def test_flow_schedule_follows_the_ltx_scheduler_with_shift_terminal():
    adapter = _adapter("ltx")
    sched = adapter.pipe.scheduler
    policy = make_policy(adapter)
    for steps in (2, 5, 12):
        sched.set_timesteps(steps, sigmas=np.linspace(1.0, 1 / steps, steps), mu=float(np.log(adapter.default_shift)))
        ours = policy.schedule(FlowSampling(steps=steps))["sigmas"]
        assert float((ours - sched.sigmas).abs().max()) < 1e-6 and float(ours[-2]) == pytest.approx(0.1)


def test_wan_expand_timesteps_equals_the_pipeline():
    """Wan 2.2 TI2V's expand_timesteps: every latent token gets the step's timestep, as the pipeline gives it."""
    from diffusers import WanPipeline

    pipe = WanPipeline(**build_tiny_pipeline("wan").components, expand_timesteps=True)
    pipe.set_progress_bar_config(disable=True)
    adapter = _adapter("wan", pipe)
    latents = torch.randn(2, *adapter.latent_shape, generator=torch.Generator().manual_seed(3))
    traj = _visalign(adapter, latents, 2, 3.0)
    with torch.no_grad():
        theirs = _pipeline_output("wan", pipe, latents, 2, 3.0, "latent")
    assert float((traj.states[:, -1] - theirs).abs().max()) < 1e-4


# --------------------------------------------------------------------------------------------- the policy


@pytest.mark.parametrize("kind", list(PIPELINES))
def test_ratio_is_one_on_policy_with_lora_gradients(kind):
    adapter = _adapter(kind)
    params = _with_lora(adapter)
    policy = make_policy(adapter, FlowSampling(steps=3, kind="flow", guidance_scale=3.0))
    traj = policy.sample(PROMPTS, [11, 12])
    assert traj.states.shape == (2, 4, *LATENT) and traj.images.shape == (2, 9, 3, 32, 32)
    steps = [int(i) for i in torch.nonzero(traj.stochastic).flatten()]
    assert steps == [0, 1, 2]
    lp = policy.log_prob(traj, steps)
    torch.testing.assert_close(lp.log_prob.detach(), traj.log_probs[:, steps], atol=1e-5, rtol=0)
    assert lp.mean.shape == (2, 3, *LATENT) and lp.std.shape == (2, 3, 1, 1, 1, 1)
    lp.log_prob.sum().backward()
    assert sum(float(p.grad.abs().sum()) for p in params if p.grad is not None) > 0
    assert not any(p.requires_grad for p in adapter.pipe.vae.parameters())
    x_t, t, target = policy.noised_sample(traj, 0)  # the forward process on 5-D latents
    assert x_t.shape == target.shape == (2, *LATENT) and t.shape == (2,)


@pytest.mark.parametrize("kind", list(PIPELINES))
def test_decode_and_encode_images_invert_the_normalisation(kind):
    adapter = _adapter(kind)
    vae = adapter.pipe.vae
    latents = torch.randn(2, *LATENT, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        videos = adapter.decode(latents)
        assert videos.shape == (2, 9, 3, 32, 32) and float(videos.min()) >= -1 and float(videos.max()) <= 1
        z = adapter.encode_images(videos)
        assert z.shape == (2, *LATENT)
        raw = vae.encode(videos.permute(0, 2, 1, 3, 4)).latent_dist.mean  # [B, C, F, h, w] unnormalised
        if kind == "wan":
            mean, std = torch.tensor(vae.config.latents_mean), torch.tensor(vae.config.latents_std)
            expected = (raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
        else:
            expected = adapter.pipe._normalize_latents(raw, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        torch.testing.assert_close(z, expected, atol=1e-5, rtol=1e-5)
        # decode(encode_images(v)) is the VAE's own reconstruction of v: the normalisation cancels
        direct = vae.decode(raw, return_dict=False)[0].clamp(-1, 1).permute(0, 2, 1, 3, 4)
        torch.testing.assert_close(adapter.decode(z), direct, atol=1e-5, rtol=1e-5)
    traj = make_policy(adapter).from_images(videos, PROMPTS, [0, 1])
    assert traj.states.shape == (2, 1, *LATENT)


# ---------------------------------------------------------------------------------------------- outputs


def test_generate_and_cli_sample_write_videos(folders, tmp_path, capsys):
    from PIL import Image

    from visalign.cli import main

    videos = load_generator(f"diffusers:{folders['wan']}?steps=2").generate(["a cat", "a dog"], [0, 1])
    assert videos.dtype == np.uint8 and videos.shape == (2, 9, 32, 32, 3)
    out = tmp_path / "grid.png"
    assert main(["sample", "--model", f"diffusers:{folders['wan']}?steps=2", "--prompt", "a cat", "--n", "2",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    gif = tmp_path / "grid.gif"
    assert str(gif) in printed and str(out) in printed and "2 videos of 9 frames" in printed
    with Image.open(gif) as im:  # 2 videos side by side, 4x upscaled with 2 px gaps; one GIF frame per frame
        assert im.format == "GIF" and im.n_frames == 9 and im.size == (2 * (32 * 4 + 2) + 2, 32 * 4 + 4)
        first = np.asarray(im.convert("RGB"))
        im.seek(8)
        last = np.asarray(im.convert("RGB"))
    assert np.abs(first.astype(int) - last.astype(int)).max() > 0  # it moves
    with Image.open(out) as im:  # a row per video, its 9 frames left to right
        assert im.format == "PNG" and im.size == (9 * (32 * 4 + 2) + 2, 2 * (32 * 4 + 2) + 2)
        strip = np.asarray(im.convert("RGB"))
    assert np.array_equal(strip[2 : 2 + 128 : 4, 2 : 2 + 128 : 4], videos[0, 0])  # the CLI's seeds are 0, 1
    assert not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------------ export


@pytest.mark.parametrize("kind", list(PIPELINES))
def test_lora_exports_to_plain_diffusers(kind, folders, tmp_path):
    """A LoRA injected as the trainer injects it, saved as a run's checkpoint: `visalign export --format
    diffusers-lora` loads in a plain WanPipeline / LTXPipeline (WanLoraLoaderMixin, LTXVideoLoraLoaderMixin) and
    gives visalign's video with the LoRA active; the merged export gives it too."""
    import diffusers

    from visalign.checkpoint import save_checkpoint
    from visalign.cli import main

    cls = getattr(diffusers, PIPELINES[kind])
    spec = f"diffusers:{folders[kind]}?max_sequence_length=16"  # as _pipeline_output calls the pipeline
    adapter = load_model(spec)
    _with_lora(adapter)
    run = tmp_path / "run"
    recipe = {"kind": "train", "model": spec, "algorithm": "grpo", "reward": "test_reward",
              "train": {"finetune": "lora", "lora_rank": 4, "lora_alpha": 8.0, "lora_targets": list(TARGETS)}}
    run.mkdir()
    (run / "recipe.json").write_text(json.dumps(recipe))
    save_checkpoint(run, 1, lora.lora_state_dict(adapter.module), {},
                    {"recipe": recipe, "nfe": 0, "wall_s": 0.0, "bad_updates": 0, "algorithm": {}})
    assert main(["export", str(run), "--format", "diffusers-lora", "--out", str(tmp_path / "lora")]) == 0
    assert main(["export", str(run), "--format", "merged", "--out", str(tmp_path / "merged")]) == 0

    latents = torch.randn(2, *LATENT, generator=torch.Generator().manual_seed(7))
    ours = (_visalign(adapter, latents, 3, 2.0).images + 1) / 2
    pipe = cls.from_pretrained(str(folders[kind]), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        base = _pipeline_output(kind, pipe, latents, 3, 2.0, "pt")
        pipe.load_lora_weights(str(tmp_path / "lora"))
        with_lora = _pipeline_output(kind, pipe, latents, 3, 2.0, "pt")
        merged = cls.from_pretrained(str(tmp_path / "merged"), local_files_only=True)
        merged.set_progress_bar_config(disable=True)
        from_merged = _pipeline_output(kind, merged, latents, 3, 2.0, "pt")
    assert float((with_lora - ours).abs().max()) < 1e-4
    assert float((from_merged - ours).abs().max()) < 1e-4
    assert float((base - ours).abs().max()) > 1e-3  # the LoRA is not a no-op
    assert json.loads((tmp_path / "merged" / "sampling.json").read_text()) == VIDEO_SAMPLING
    for out in ("lora", "merged"):  # the model card says what a video pipeline returns
        card = (tmp_path / out / "README.md").read_text()
        assert "pipeline_tag: text-to-video" in card and ").frames[0]" in card and ".images[0]" not in card
