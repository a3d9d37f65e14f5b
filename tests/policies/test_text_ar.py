"""The bundled token model of the text task: builtin:text-vq keeps what tesseract reads and builtin:text-ar loads
(its seeded sampling, the refusal of a prompt outside the OCR alphabet and its partly legible held-out words:
test_text_flow.py, for both text models)."""

import shutil

import numpy as np
import pytest
import torch

from visalign.images import images_to_tensor
from visalign.testbed.models.registry import WEIGHTS_DIR
from visalign.models.registry import load_model
from visalign.testbed.models.vq import VQVAE
from visalign.testbed.world import text

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None, reason="the tesseract binary is absent "
                                     "(Debian package tesseract-ocr; `make test` and .ci/run install it)")


def test_text_ar_is_bundled_small_fp16():
    from safetensors import safe_open

    for name, limit in (("text-vq", 0.8), ("text-ar", 1.8)):
        files = {p.name: p.stat().st_size for p in (WEIGHTS_DIR / name).iterdir()}
        assert {"config.json", "model.safetensors"} <= files.keys() and sum(files.values()) < limit * 2**20, name
        with safe_open(str(WEIGHTS_DIR / name / "model.safetensors"), "pt") as f:
            assert {str(f.get_tensor(k).dtype) for k in f.keys()} <= {"torch.float16", "torch.int64"}, name
    adapter = load_model("builtin:text-ar")
    assert adapter.config.task == "text" and adapter.gen_length == 128 and adapter.plan_length == 0


@needs_tesseract
def test_tokenizer_round_trip_keeps_what_tesseract_reads():
    vq = VQVAE.from_pretrained(WEIGHTS_DIR / "text-vq")
    assert vq.config.grid == (8, 16) and vq.config.task == "text"
    rng = np.random.default_rng(0)
    words = text.split_words("eval")[::2]
    renders = images_to_tensor(np.stack([text.render(w, rng) for w in words]))
    with torch.no_grad():
        round_trip = vq.decode(vq.encode(renders))
    from visalign.rewards import load_reward

    prompts = [text.TextSpec(w).prompt for w in words]
    assert load_reward("ocr")(round_trip, prompts).scores.mean().item() >= 0.95
