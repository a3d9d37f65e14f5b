"""The bundled builtin:text-flow weights: they load, sample deterministically at 32x64 (as builtin:text-ar does),
refuse a prompt outside the OCR alphabet, and draw words that tesseract partly reads (held-out words, never
trained on). Sampling and the held-out words are checked for builtin:text-ar too."""

import shutil

import numpy as np
import pytest

from visalign.images import images_to_tensor
from visalign.testbed.models.registry import WEIGHTS_DIR
from visalign.models.registry import load_generator, load_model
from visalign.testbed.world import text
from visalign.testbed.world.grammar import PromptError


def test_text_flow_is_bundled_small_fp16():
    from safetensors import safe_open

    files = {p.name: p.stat().st_size for p in (WEIGHTS_DIR / "text-flow").iterdir()}
    assert {"config.json", "model.safetensors"} <= files.keys() and sum(files.values()) < 1.6 * 2**20
    with safe_open(str(WEIGHTS_DIR / "text-flow" / "model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} <= {"torch.float16", "torch.int64"}
    adapter = load_model("builtin:text-flow")
    assert adapter.latent_shape == (3, 32, 64) and adapter.model.config.task == "text"


@pytest.mark.parametrize("model", ["builtin:text-flow?steps=10", "builtin:text-ar"])
def test_samples_deterministically_and_refuses_bad_text(model):
    """Both bundled text models (the flow UNet and the token GPT)."""
    generator = load_generator(model)
    prompts = [text.TextSpec(w).prompt for w in ("CAT", "Q", "JAZZ")]
    a, b = generator.generate(prompts, [1, 2, 3]), generator.generate(prompts, [1, 2, 3])
    assert a.shape == (3, 32, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a[0], generator.generate(prompts[:1], [4])[0])
    with pytest.raises(PromptError, match="outside the OCR alphabet"):
        generator.generate(['a sign that says "cat"'], [0])


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="the tesseract binary is absent (Debian package "
                    "tesseract-ocr; `make test` and .ci/run install it)")
@pytest.mark.parametrize("model", ["builtin:text-flow?steps=10", "builtin:text-ar"])
def test_base_model_partly_draws_held_out_words(model):
    from visalign.rewards import load_reward

    generator = load_generator(model)
    prompts = text.prompts("eval")[::2]  # 32 held-out words
    images = generator.generate(prompts, list(range(len(prompts))))
    score = load_reward("ocr")(images_to_tensor(images), prompts).scores.mean().item()
    assert 0.1 < score < 0.9, score  # legible in part: room for OCR RL
