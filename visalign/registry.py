"""One generic registry: names -> factories. Duplicate names are refused; an unknown name lists the known. A name
`package.module:Name` is not registered at all: it is imported (a user's reward, algorithm or model factory, without
editing visalign); `is_module_spec` gives the rule."""

from __future__ import annotations

import importlib
import re
from typing import Callable
from urllib.parse import parse_qsl

import yaml


class RegistryError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it one plain line
        return str(self.args[0])


# the parts before ':' that are spec prefixes, never Python modules: a model's `diffusers:<path-or-hub-id>` and
# `builtin:<name>`, and the words a future prefix may take (the oracle model, a hub or file prefix)
RESERVED_PREFIXES = frozenset({"diffusers", "builtin", "oracle", "hub", "file", "remote"})
_MODULE_SPEC = re.compile(r"(?P<module>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)"
                          r":(?P<attr>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)")


def is_module_spec(name: str) -> bool:
    """Whether a registry name (a spec's part before '?') names a Python object to import, `package.module:Name`:
    the whole name is MODULE:ATTR, MODULE a dotted path of Python identifiers (`mypkg.rewards`, or one identifier,
    `my_rewards`) whose first part is not a reserved spec prefix (RESERVED_PREFIXES: `diffusers:x` is a pipeline,
    `builtin:x` a bundled model), and ATTR a (dotted) identifier. So `builtin:shapes-flow`, `diffusers:org/model`,
    `diffusers:my_pipeline`, `./dir:x` and `C:/models` are not module specs, and `mypkg.models:make?steps=4` is one
    (options after '?' are split off first)."""
    m = _MODULE_SPEC.fullmatch(name) if isinstance(name, str) else None
    return m is not None and m["module"].split(".")[0] not in RESERVED_PREFIXES


def import_object(name: str, kind: str = "object"):
    """`package.module:Name` -> the object, imported; a missing module or attribute is one RegistryError line."""
    module, _, attr = name.partition(":")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise RegistryError(f"{kind} '{name}': cannot import '{module}': {e} (install the package or put its folder "
                            f"on PYTHONPATH)") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RegistryError(f"{kind} '{name}': module '{module}' has no '{attr}'")
        obj = getattr(obj, part)
    return obj


class Registry:
    """names -> factories. `check(obj) -> None | str` judges an imported `module:Name` object (what this registry
    holds: a Reward class or factory, an Algorithm class...): the string says what is wrong with it."""

    def __init__(self, kind: str, check: Callable[[object], str | None] | None = None):
        self.kind = kind
        self.check = check
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
        """The registered factory `name`, or the object a `package.module:Name` imports (is_module_spec), checked
        to be what this registry holds."""
        self._plugins()
        if name in self._items:
            return self._items[name]
        if is_module_spec(name):
            obj = import_object(name, self.kind)
            problem = self.check(obj) if self.check is not None else None
            if problem:
                raise RegistryError(f"{self.kind} '{name}' {problem}")
            return obj
        raise RegistryError(f"unknown {self.kind} '{name}'. Supported: {sorted(self._items)}, or "
                            f"package.module:Name of your own")

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
