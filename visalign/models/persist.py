"""How the bundled networks (generators, tokenizer, learned reward) are stored: a directory with config.json
(the frozen config dataclass) and model.safetensors (no pickle anywhere), each file written to a temp file
and renamed, so a crash never leaves half a checkpoint. Floating weights may be stored at a lower precision
(fp16 halves the bundle); they load back into the fp32 network."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


CLASS_DTYPE = "class"  # save_pretrained's default: the class's save_dtype


class CheckpointError(RuntimeError):
    """A model directory that cannot be loaded (message is one line)."""


def atomic_file(target: Path, write) -> None:
    """Call write(tmp_path), then rename tmp_path to target, so a crash never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class Pretrained:
    """save_pretrained / from_pretrained for an nn.Module built as `cls(config)` from a frozen dataclass.

    Subclasses set `config_cls` and may override `config_from_dict` (e.g. to turn JSON lists into tuples
    or to check the values); `kind_label` names the model in errors ("model", "reward model", ...)."""

    config_cls: type = None
    kind_label: str = "model"
    save_dtype: torch.dtype | None = None  # the storage precision when save_pretrained is given none
    save_metadata: dict = {}

    @classmethod
    def config_from_dict(cls, d: dict):
        fields = cls.config_cls.__dataclass_fields__
        return cls.config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields})

    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype | None | str = CLASS_DTYPE) -> None:
        """Write config.json and model.safetensors; `dtype` is the storage precision of floating weights
        (None: as they are; by default the class's save_dtype)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        dtype = self.save_dtype if dtype == CLASS_DTYPE else dtype
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        meta = {"format": "pt", **self.save_metadata}
        atomic_file(path / WEIGHTS_NAME, lambda f: save_file(state, f, metadata=meta))
        atomic_file(path / CONFIG_NAME, lambda f: Path(f).write_text(json.dumps(asdict(self.config), indent=2)))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu"):
        """Load a directory written by save_pretrained -> the fp32 network in eval mode. Raises CheckpointError
        (one line) naming the file that is missing or corrupt, or the first missing / unexpected keys."""
        path, what = Path(path), cls.kind_label
        cfg_file, w_file = path / CONFIG_NAME, path / WEIGHTS_NAME
        for f in (cfg_file, w_file):
            if not f.is_file():
                raise CheckpointError(f"{what} file {f} is missing; a {what} directory holds {CONFIG_NAME} and "
                                      f"{WEIGHTS_NAME}")
        try:
            config = cls.config_from_dict(json.loads(cfg_file.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{what} config {cfg_file} is corrupt: {e}") from None
        try:
            state = load_file(str(w_file), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{what} weights {w_file} are corrupt or not safetensors: {e}") from None
        model = cls(config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f"{what} weights {w_file} do not match the config: first missing keys "
                                  f"{missing[:3]}, first unexpected keys {unexpected[:3]}")
        bad = [f"{k} {tuple(v.shape)} != {expected[k]}" for k, v in state.items() if tuple(v.shape) != expected[k]]
        if bad:
            raise CheckpointError(f"{what} weights {w_file} have wrong shapes: {'; '.join(bad[:3])}")
        model.load_state_dict(state)  # copies into the fp32 tensors (fp16 files load back as fp32)
        return model.to(device).eval()
