"""benchmarks/gpu_scale.py: the published configs it builds are the published models, and its arms run through
the Trainer at tiny size on CPU (the GPU figures need a GPU)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_scale  # noqa: E402


def _elements(module) -> int:
    """Weights as the checkpoint holds them: parameters and persistent buffers (SD3's position table)."""
    return sum(t.numel() for t in module.state_dict().values())


@pytest.mark.parametrize("cls, config, expected", [
    ("SD3Transformer2DModel", gpu_scale.SD35_MEDIUM, 2.47e9),   # SD3.5-Medium: "2.5B parameters"
    ("FluxTransformer2DModel", gpu_scale.FLUX_DEV, 11.90e9),    # FLUX.1-dev: "12B"
    ("UNet2DConditionModel", gpu_scale.SD15_UNET, 0.8595e9),    # SD1.5's UNet: 859.5M
])
def test_published_configs_have_the_published_sizes(cls, config, expected):
    import diffusers

    with torch.device("meta"):  # shapes only: no memory, no init
        model = getattr(diffusers, cls)(**config)
    assert _elements(model) == pytest.approx(expected, rel=0.005)


def test_tiny_arms_run_through_the_trainer(tmp_path, capsys):
    assert gpu_scale.main(["--tiny", "--models", "sd35-medium", "sd15", "--doc", str(tmp_path / "doc.md")]) == 0
    rows = [line for line in (tmp_path / "doc.md").read_text().splitlines() if line.startswith("| sd")]
    assert len(rows) == 8  # 2 models x (LoRA, full) x checkpointing (off, on)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        rollout, reward, update, iteration = map(float, cells[4:8])
        assert rollout > 0 and update > 0 and iteration >= rollout + update - 0.011  # the stages fit (2 decimals)
    assert "iteration s" in capsys.readouterr().out


def test_without_a_gpu_the_full_size_arms_refuse_in_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu_scale.main(["--models", "sd15"]) == 2
    assert "--tiny" in capsys.readouterr().err
