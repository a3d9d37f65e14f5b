"""The bundled learned GenEval-S reward (visalign/weights/geneval-s-reward): small fp16 safetensors, registered,
and it agrees with the verifier on held-out renders (so broken weights fail here)."""

import numpy as np
import torch

from visalign.images import images_to_tensor
from visalign.rewards import REWARDS, load_reward
from visalign.testbed.rewards.learned import DEFAULT_DIR
from visalign.testbed.pretrain.reward_pretrain import heldout_renders
from visalign.testbed.world import grammar, verify


def test_bundled_weights_are_small_fp16_safetensors():
    files = {p.name: p.stat().st_size for p in DEFAULT_DIR.iterdir() if p.is_file()}
    assert {"config.json", "model.safetensors", "pretrain_log.jsonl"} <= files.keys()
    assert files["model.safetensors"] <= 2**20  # <= 1 MiB
    from safetensors import safe_open

    with safe_open(str(DEFAULT_DIR / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert "geneval_s_learned" in REWARDS.names()


def test_bundled_reward_agrees_with_the_verifier_on_heldout_renders():
    # 6 categories x 5 held-out items x (the prompt's render, an edited render shown with the prompt) = 60
    images, prompts, cats = heldout_renders(per_category=5, seed=1)
    labels = np.array([verify.verify(im, grammar.parse_prompt(p)).correct for im, p in zip(images, prompts)])
    reward = load_reward("geneval_s_learned")
    with torch.no_grad():
        scores = reward(images_to_tensor(images), prompts).scores.numpy()
    assert len(prompts) == 60 and 0.3 < labels.mean() < 0.7
    acc = float(((scores >= 0.5) == labels).mean())
    assert acc >= 0.8, acc
    assert scores[labels].mean() > scores[~labels].mean() + 0.3


def test_a_gradient_step_on_the_image_raises_the_bundled_score():
    images, prompts, _ = heldout_renders(per_category=1, seed=2)
    reward = load_reward("geneval_s_learned")
    x = images_to_tensor(images).requires_grad_(True)
    before = reward(x, prompts).scores
    before.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in reward.net.parameters())
    with torch.no_grad():
        after = reward(x + 1e-3 * x.grad / x.grad.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None],
                       prompts).scores
    assert (after >= before.detach() - 1e-6).all() and (after > before.detach()).any()
