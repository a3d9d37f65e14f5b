"""The bundled autoregressive family: builtin:shapes-vq keeps what the verifier checks, builtin:shapes-ar loads,
samples deterministically, writes plans that parse, and draws shapes the verifier accepts."""

import numpy as np
import pytest
import torch

from visalign.testbed.evaluate import evaluate
from visalign.images import images_to_tensor, tensor_to_images
from visalign.testbed.models.registry import WEIGHTS_DIR, OracleGenerator
from visalign.models.registry import load_generator, load_model
from visalign.testbed.models.vq import VQVAE
from visalign.testbed.world import grammar, plan, verify


class RoundTrip:
    """The oracle's renders through the tokenizer: encode to 8x8 ids, decode back."""

    def __init__(self, vq):
        self.vq = vq

    def generate(self, prompts, seeds):
        images = OracleGenerator().generate(prompts, seeds)
        with torch.no_grad():
            return tensor_to_images(self.vq.decode(self.vq.encode(images_to_tensor(images))))


def test_tokenizer_round_trip_keeps_what_the_verifier_checks():
    vq = VQVAE.from_pretrained(WEIGHTS_DIR / "shapes-vq")
    assert vq.config.grid == (8, 8) and vq.config.codebook_size == 512
    res = evaluate(RoundTrip(vq), per_category=20, seed=0)
    assert res["overall"] >= 0.95, res["categories"]


@pytest.fixture(scope="module")
def adapter():
    return load_model("builtin:shapes-ar")


def test_bundled_ar_samples_deterministically_with_plans_that_parse(adapter):
    from visalign.policies import make_policy

    assert adapter.family == "autoregressive" and sum(p.numel() for p in adapter.module.parameters()) < 1.5e6
    policy = make_policy(adapter)
    prompts = ["a red circle", "three stars", "a circle left of a square"]
    a, b = policy.sample(prompts, [1, 2, 3]), policy.sample(prompts, [1, 2, 3])
    assert torch.equal(a.states, b.states) and a.images.shape == (3, 3, 32, 32)
    for text in adapter.plans(a.states):
        assert plan.parse_plan(text)


def test_bundled_ar_draws_recognisable_shapes():
    gen = load_generator("builtin:shapes-ar")
    prompts = [p for p in grammar.prompts("single_object", "train") for _ in range(4)]
    images = gen.generate(prompts, list(range(len(prompts))))
    ok = [verify.verify(img, grammar.parse_prompt(p)).correct for img, p in zip(images, prompts)]
    assert np.mean(ok) >= 0.5, ok


@pytest.mark.parametrize("option, limit", [("top_k=0", "top_k must be >= 1"), ("temperature=0", "temperature must be > 0"),
                                           ("plan=maybe", "plan")])
def test_cli_bad_sampling_options_are_one_line_errors(option, limit, capsys):
    from visalign.cli import main

    assert main(["eval", "--model", f"builtin:shapes-ar?{option}", "--per-category", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert limit in err and "\n" not in err


def test_cli_draws_a_given_plan_and_refuses_one_that_does_not_parse(tmp_path, capsys):
    from visalign.cli import main

    model = "builtin:shapes-ar?plan=red circle @ left ; blue square @ right"
    assert main(["sample", "--model", model, "--prompt", "a red circle and a blue square", "--n", "2",
                 "--out", str(tmp_path / "g.png")]) == 0
    assert main(["sample", "--model", "builtin:shapes-ar?plan=red circle left", "--prompt", "a red circle"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not 'COLOR SHAPE @ CELL'" in err and "\n" not in err
