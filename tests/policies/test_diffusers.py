"""Diffusers backends as policies, on tiny random pipelines (SD1.5, SDXL, SD3, FLUX at 32x32): ratio == 1
on-policy with gradients into the LoRA, the deterministic sampler == the diffusers pipeline's own output, the
prompt cache, and one-line errors for what cannot be loaded."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from visalign import lora
from visalign.models.diffusers_adapter import adapter_for
from visalign.models.registry import load_model
from visalign.models.tiny_diffusers import build_tiny_pipeline
from visalign.policies import DiffusionSampling, FlowSampling, make_policy

KINDS = ["sd15", "sdxl", "sd3", "flux"]
TARGETS = ("to_q", "to_k", "to_v", "to_out")  # the recipes' default; diffusers' to_out is a ModuleList
PROMPTS = ["a red circle", "two blue squares"]


def _adapter(kind):
    return adapter_for(build_tiny_pipeline(kind), resolution=32)


def _with_lora(adapter, seed=0):
    """LoRA (rank 4, alpha 8) with random B matrices, so it changes the output."""
    params = lora.add_lora(adapter.module, 4, 8.0, TARGETS)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in adapter.module.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return params


def _sampling(adapter, kind, steps, guidance):
    if adapter.family == "diffusion":
        return DiffusionSampling(steps=steps, kind=kind, eta=1.0, guidance_scale=guidance)
    return FlowSampling(steps=steps, kind=kind, guidance_scale=guidance, shift=adapter.default_shift)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("kind", KINDS)
def test_ratio_is_one_on_policy_with_lora_gradients(kind, guidance):
    adapter = _adapter(kind)
    assert adapter.family == ("diffusion" if kind in ("sd15", "sdxl") else "flow")
    params = _with_lora(adapter)
    s = _sampling(adapter, "ddim" if adapter.family == "diffusion" else "flow", 3, guidance)
    policy = make_policy(adapter, s)
    traj = policy.sample(PROMPTS, [11, 12])
    assert traj.images.shape == (2, 3, 32, 32) and traj.states.shape == (2, 4, *adapter.latent_shape)
    assert float(traj.images.min()) >= -1 and float(traj.images.max()) <= 1
    steps = [int(i) for i in torch.nonzero(traj.stochastic).flatten()]
    assert steps, "no stochastic step"
    for i in steps:
        lp = policy.log_prob(traj, i)
        assert torch.allclose(lp.log_prob, traj.log_probs[:, i], atol=1e-5, rtol=0), (i, lp.log_prob, traj.log_probs[:, i])
        assert lp.log_prob.requires_grad
        lp.log_prob.sum().backward()
    if guidance != 1.0:  # the same with the unconditional branch recomputed, not taken from the rollout
        plain = dataclasses.replace(traj, extras={"sampling": traj.extras["sampling"]})
        torch.testing.assert_close(policy.log_prob(plain, steps).log_prob.detach(), traj.log_probs[:, steps],
                                   atol=1e-5, rtol=0)
    grads = [p.grad for p in params]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert not any(p.requires_grad for p in adapter.pipe.vae.parameters())


def test_full_module_gets_gradients_without_lora():
    adapter = _adapter("sd15")
    policy = make_policy(adapter, _sampling(adapter, "ddim", 2, 2.0))
    traj = policy.sample(PROMPTS, [1, 2])
    policy.log_prob(traj, 0).log_prob.sum().backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in adapter.module.parameters())
    assert all(p.grad is None for p in adapter.pipe.text_encoder.parameters())


def _pipeline_output(adapter, kind, latents, steps, guidance, output_type):
    """The diffusers pipeline's own sampler from the same initial latents [B, C, h, w] -> output [B, ...]."""
    pipe = adapter.pipe
    kw = {"height": 32, "width": 32, "num_inference_steps": steps, "output_type": output_type}
    if kind == "flux":  # visalign's CFG on FLUX is the pipeline's true CFG; its distilled guidance is flux_guidance
        kw.update(latents=pipe._pack_latents(latents, latents.shape[0], *adapter.latent_shape),
                  guidance_scale=adapter.flux_guidance, true_cfg_scale=guidance,
                  negative_prompt=[""] * len(PROMPTS) if guidance > 1 else None)
    else:
        kw.update(latents=latents, guidance_scale=guidance)
    if kind == "sd3":  # SD3's pipeline starts from sigma_max < 1 by default; these sigmas give visalign's schedule
        kw["sigmas"] = list(np.linspace(1.0, 0.0, steps + 1)[:-1])
    out = pipe(PROMPTS, **kw).images
    if output_type == "latent" and kind == "flux":
        h, w = adapter.latent_shape[1:]
        b, _, c4 = out.shape
        out = out.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h, w)
    return out


@pytest.mark.parametrize("guidance", [1.0, 4.0])
@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_sampler_equals_the_pipeline(kind, guidance):
    adapter = _adapter(kind)
    policy = make_policy(adapter)
    s = policy.eval_sampling(steps=3, guidance=guidance)
    if adapter.family == "flow":
        s = FlowSampling(steps=3, kind="ode", guidance_scale=guidance, shift=adapter.default_shift)
    latents = torch.randn(2, *adapter.latent_shape, generator=torch.Generator().manual_seed(5))
    traj = policy.sample(PROMPTS, [1, 2], s, latents=latents)
    pipe_latents = _pipeline_output(adapter, kind, latents, 3, guidance, "latent")
    pipe_images = _pipeline_output(adapter, kind, latents, 3, guidance, "pt")
    assert float((traj.states[:, -1] - pipe_latents.float()).abs().max()) < 1e-4
    assert float(((traj.images + 1) / 2 - pipe_images).abs().max()) < 1e-4
    # not trivially equal: the prompts and the start change the result
    assert float((traj.states[0, -1] - traj.states[1, -1]).abs().max()) > 1e-3
    assert float((traj.states[:, -1] - latents).abs().max()) > 1e-2


def test_guidance_changes_the_sample():
    adapter = _adapter("sd15")
    policy = make_policy(adapter)
    latents = torch.randn(2, *adapter.latent_shape, generator=torch.Generator().manual_seed(5))
    a, b = (policy.sample(PROMPTS, [1, 2], policy.eval_sampling(3, g), latents=latents).states[:, -1] for g in (1.0, 4.0))
    assert float((a - b).abs().max()) > 1e-3


def test_schedules_follow_the_pipelines_schedulers():
    from diffusers import DDIMScheduler

    sd = _adapter("sd15")
    ts, ab = sd.schedule(4)
    ref = DDIMScheduler.from_config(sd.pipe.scheduler.config)
    ref.set_timesteps(4)
    assert ts.tolist() == ref.timesteps.tolist() == [751, 501, 251, 1]
    assert torch.equal(ab[:-1], ref.alphas_cumprod[ref.timesteps])
    assert float(ab[-1]) == float(ref.alphas_cumprod[0])  # set_alpha_to_one False: final_alpha_cumprod
    t, a = sd.forward_noise(torch.tensor([0.0005, 0.5, 0.9995]))
    assert t.tolist() == [0, 500, 999] and torch.equal(a, ref.alphas_cumprod[t])
    assert sd.prediction_type == "epsilon" and sd.clip_sample is None
    assert sd.default_steps == 50 and sd.default_guidance == 7.5 and sd.latent_shape == (4, 16, 16)
    sd3 = _adapter("sd3")
    assert sd3.default_shift == 3.0
    # a flow sampler that names no shift uses the model's own (SD3: 3), one that names one uses it
    from visalign.math.sde import sigma_schedule

    sched = make_policy(sd3).schedule
    assert torch.equal(sched(FlowSampling(steps=4))["sigmas"], sigma_schedule(4, 3.0))
    assert torch.equal(sched(FlowSampling(steps=4, shift=1.0))["sigmas"], sigma_schedule(4, 1.0))
    flux = _adapter("flux")  # dynamic shifting: exp(mu) at 8 x 8 = 64 image tokens
    m = (1.15 - 0.5) / (4096 - 256)
    assert flux.default_shift == pytest.approx(np.exp(64 * m + 0.5 - m * 256))


def test_prompt_encodings_are_cached():
    adapter = _adapter("sdxl")
    cond = adapter.encode(["a red circle", "", "a red circle"])
    assert len(adapter._cache) == 2
    assert torch.equal(cond.embeds[0], cond.embeds[2]) and not torch.equal(cond.embeds[0], cond.embeds[1])
    assert float(cond.embeds[1].abs().max()) == 0 and float(cond.pooled[1].abs().max()) == 0  # SDXL zeroes ""
    assert cond.time_ids.tolist()[0] == [32, 32, 0, 0, 32, 32]
    again = adapter.encode(["a red circle"])
    assert torch.equal(again.embeds[0], cond.embeds[0]) and not again.embeds.requires_grad
    joined = type(cond).cat([cond[[0]], cond[1:]])
    assert torch.equal(joined.embeds, cond.embeds) and torch.equal(joined.time_ids, cond.time_ids)


def test_load_from_a_saved_directory(tmp_path):
    from visalign.models.tiny_diffusers import main

    assert main(["sd3", str(tmp_path / "sd3")]) == 0
    adapter = load_model(f"diffusers:{tmp_path / 'sd3'}?dtype=float32&resolution=32&max_sequence_length=16")
    assert adapter.family == "flow" and adapter.latent_shape == (4, 16, 16) and adapter.to("cpu") is adapter
    cond = adapter.encode(["a red circle"])
    assert cond.embeds.shape[1] == 77 + 16  # CLIP tokens then T5 tokens
    v = adapter.predict(torch.randn(1, 4, 16, 16), torch.tensor([0.5]), cond)
    assert v.shape == (1, 4, 16, 16)
    bf16 = load_model(f"diffusers:{tmp_path / 'sd3'}?dtype=bfloat16&resolution=32")
    assert bf16.dtype == torch.bfloat16 and bf16.predict(torch.randn(1, 4, 16, 16), torch.tensor([0.5]),
                                                          bf16.encode(["a"])).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------- errors


def _one_line_error(spec):
    with pytest.raises(ValueError) as info:
        load_model(spec)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_hub_id_that_is_not_cached_is_one_line():
    msg = _one_line_error("diffusers:no/such-model")
    assert "no/such-model" in msg and "offline" in msg and "?local_files_only=false" in msg and "no network" not in msg


def test_missing_local_path_is_one_line(tmp_path):
    msg = _one_line_error(f"diffusers:{tmp_path / 'missing'}")
    assert "no such directory" in msg and "no network" not in msg
    msg = _one_line_error(f"diffusers:{tmp_path}")
    assert "model_index.json" in msg


def test_unsupported_pipeline_class_names_the_supported(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    msg = _one_line_error(f"diffusers:{tmp_path}")
    assert "KandinskyPipeline" in msg
    for name in ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline", "FluxPipeline"):
        assert name in msg


def test_bad_options_are_one_line(tmp_path):
    assert "accepted: dtype, resolution" in _one_line_error(f"diffusers:{tmp_path}?nope=1")
    assert "accepted: float32, bfloat16, float16" in _one_line_error(f"diffusers:{tmp_path}?dtype=int8")
    with pytest.raises(ValueError, match="resolution 33 must be a positive multiple of 2"):
        adapter_for(build_tiny_pipeline("sd15"), resolution=33)


def test_cli_prints_one_line_for_an_unloadable_model(capsys):
    from visalign.cli import main

    assert main(["sample", "--model", "diffusers:no/such-model", "--prompt", "a red circle"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "local_files_only=false" in err and "Traceback" not in err


def test_missing_lora_target_names_existing_modules():
    adapter = _adapter("sd15")
    with pytest.raises(ValueError) as info:
        lora.add_lora(adapter.module, 4, 4.0, ("to_q", "qkv"))
    msg = str(info.value)
    assert "['qkv']" in msg and "to_q" in msg and "to_out.0" in msg and "\n" not in msg


def test_diffusers_style_lora_targets():
    adapter = _adapter("sd15")
    lora.add_lora(adapter.module, 2, 2.0, ("to_out.0", "attn2.to_k"))
    names = {n.rsplit(".lora_A", 1)[0] for n, _ in adapter.module.named_parameters() if ".lora_A." in n}
    assert names and all(n.endswith(("to_out.0", "attn2.to_k")) for n in names)
    assert any(n.endswith("attn1.to_out.0") for n in names) and not any("attn1.to_k" in n for n in names)
