"""One generic registry: names -> factories. Duplicate names are refused; an unknown name lists the known."""

from __future__ import annotations

from typing import Callable
from urllib.parse import parse_qsl

import yaml


class RegistryError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it one plain line
        return str(self.args[0])


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, doc: str = ""):
        def deco(fn):
            if name in self._items:
                raise RegistryError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = fn
            self._docs[name] = doc or (fn.__doc__ or "").strip().split("\n")[0]
            return fn

        return deco

    def _plugins(self) -> None:
        """Let the plugins register (visalign/plugins.py) before the first lookup or listing."""
        from .plugins import load_plugins

        load_plugins()

    def get(self, name: str) -> Callable:
        self._plugins()
        if name not in self._items:
            raise RegistryError(f"unknown {self.kind} '{name}'. Supported: {sorted(self._items)}")
        return self._items[name]

    def names(self) -> list[str]:
        self._plugins()
        return sorted(self._items)

    def doc(self, name: str) -> str:
        self._plugins()
        return self._docs[name]

    def __contains__(self, name: str) -> bool:
        self._plugins()
        return name in self._items


def _typed(value: str):
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def split_spec(spec: str) -> tuple[str, dict]:
    """'name?key=value&key=value' -> (name, {key: value}), values typed as YAML scalars (1 -> int, true -> bool):
    the option syntax of model and reward specs."""
    if not isinstance(spec, str):
        raise TypeError(f"a spec is a string 'name?key=value&...', got {type(spec).__name__} {spec!r}")
    name, _, query = spec.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    twice = sorted({k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i])})
    if twice:  # the last one would silently win
        raise ValueError(f"'{spec}' gives option(s) {twice} more than once; give each once")
    return name, {k: _typed(v) for k, v in pairs}
