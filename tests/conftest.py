import os
import socket
from pathlib import Path

import cv2
import pytest
import torch

# The machine has 2 cores; oversubscribing them makes CPU runs ~10x slower. OpenCV has its own thread pool.
torch.set_num_threads(1)
cv2.setNumThreads(1)
os.environ.setdefault("VISALIGN_THREADS", "1")
# Nothing is downloaded in tests: the Hugging Face clients refuse the network.
os.environ["HF_HUB_OFFLINE"] = "1"

# Test tiers (markers registered in pyproject.toml): every test gets the tier of its directory; `make test-fast`
# runs -m "not integration and not slow". A test outside these directories stops the collection (it would
# otherwise fall through the tiers unseen).
TESTS = Path(__file__).parent
TIERS = {"unit": "unit", "policies": "policy", "integration": "integration"}
# Tests that take tens of seconds each on 2 cores (pytest --durations), by file and function: marked slow.
SLOW = {
    ("policies/test_bundled_finetuning.py", "test_low_signal_warning_fires_on_textbook_grpo_not_on_the_default"),
    ("policies/test_bundled_finetuning.py",
     "test_supervised_finetuning_at_the_rl_learning_rate_does_not_lower_the_score"),
}


def tier(path: Path) -> str | None:
    """The tier marker of a test file, by its directory under tests/ (None: outside every tier)."""
    try:
        parts = Path(path).resolve().relative_to(TESTS.resolve()).parts
    except ValueError:
        return None
    return TIERS.get(parts[0]) if len(parts) > 1 else None


def pytest_collection_modifyitems(config, items):
    lost = []
    for item in items:
        name = tier(item.path)
        if name is None:
            lost.append(item.nodeid)
            continue
        item.add_marker(name)
        rel = Path(item.path).resolve().relative_to(TESTS.resolve()).as_posix()
        if (rel, getattr(item, "originalname", item.name)) in SLOW:
            item.add_marker("slow")
    if lost:
        raise pytest.UsageError(f"tests outside the tiers {sorted(TIERS)} of tests/conftest.py: {', '.join(lost[:5])}; "
                                f"move them into one of those directories or add a tier")


def _tiny_model(prediction: str):
    from visalign.testbed.models.builtin import ShapesModel, ShapesModelConfig

    torch.manual_seed(0)
    model = ShapesModel(ShapesModelConfig(prediction=prediction, resolution=16, channels=(16, 32),
                                          attention=(False, True), text_dim=32, text_layers=1, heads=2))
    # The output layer starts at zero; perturb it so velocities (and log-probs) are not trivially 0.
    with torch.no_grad():
        for p in model.unet.out.parameters():
            p.normal_(0, 0.05)
    return model.eval()


@pytest.fixture
def tiny_flow_model():
    """A randomly initialised built-in flow model at 16x16 (no pretrained weights involved)."""
    return _tiny_model("velocity")


@pytest.fixture
def tiny_ddpm_model():
    """A randomly initialised built-in epsilon-prediction model at 16x16."""
    return _tiny_model("epsilon")


@pytest.fixture
def tiny_vpred_model():
    """A randomly initialised built-in v-prediction model at 16x16 (builtin:shapes-ddpm's kind)."""
    return _tiny_model("v_prediction")


@pytest.fixture
def free_port() -> int:
    """A loopback TCP port nothing listens on now (the OS picks it): the suite runs on several pytest-xdist
    workers, so no test may assume a fixed port is free."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
