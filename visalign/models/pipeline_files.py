"""What a diffusers pipeline folder may carry beside diffusers' own files, and quiet loading: `sampling.json`
(the sampling defaults a pipeline was trained with; the bundled pipelines carry one) read by the diffusers adapter
and kept by export and model cards."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

SAMPLING_NAME = "sampling.json"


@contextmanager
def quiet():
    """diffusers and transformers at error level: no progress bars, no "text_encoder_3=None cannot be saved",
    no safety-checker notice (the shapes world has nothing to filter)."""
    from diffusers.utils import logging as dlogging
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as tlogging

    levels = dlogging.get_verbosity(), tlogging.get_verbosity()
    dlogging.set_verbosity_error()
    tlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()
    disable_progress_bars()
    try:
        yield
    finally:
        dlogging.set_verbosity(levels[0])
        tlogging.set_verbosity(levels[1])
        dlogging.enable_progress_bar()
        tlogging.enable_progress_bar()
        enable_progress_bars()


def read_sampling(path: str | Path) -> dict:
    """sampling.json of a pipeline folder ({} when it has none: a user's pipeline)."""
    f = Path(path) / SAMPLING_NAME
    return json.loads(f.read_text()) if f.is_file() else {}
