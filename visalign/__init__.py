"""visalign: reinforcement-learning fine-tuning of visual generative models (flow, diffusion, autoregressive)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("visalign")  # pyproject.toml's version, as installed
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
