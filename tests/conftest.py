import os
import socket

import pytest
import torch

# The machine has 2 cores; oversubscribing them makes CPU runs ~10x slower.
torch.set_num_threads(1)
os.environ.setdefault("VISALIGN_THREADS", "1")
# Nothing is downloaded in tests: the Hugging Face clients refuse the network.
os.environ["HF_HUB_OFFLINE"] = "1"


def _tiny_model(prediction: str):
    from visalign.models.builtin import ShapesModel, ShapesModelConfig

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
