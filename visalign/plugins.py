"""Plugins: modules that register models, rewards, prompt sets and pretraining kinds into the core's registries.

`load_plugins()` imports, once per process, the modules named by
- the `visalign.plugins` entry-point group of installed packages (the entry point's module is imported),
- the environment variable VISALIGN_PLUGINS: comma-separated module names, and
- DEFAULT_PLUGINS: the bundled GenEval-S testbed, `visalign.testbed` (the one place the core names it).
A name in VISALIGN_PLUGINS written `-module` is left out wherever it comes from: VISALIGN_PLUGINS=-visalign.testbed
runs the core alone (the registries then hold only what the core registers itself).

Every registry calls load_plugins() on its first lookup or listing (registry.py), so importing a plugin is never a
user's job; a module registers its names when it is imported. The core imports nothing from a plugin: a plugin
imports the core and registers into it (tests/unit/test_core_imports.py holds the core to that).
"""

from __future__ import annotations

import importlib
import os
import threading

DEFAULT_PLUGINS = ("visalign.testbed",)
ENTRY_POINT_GROUP = "visalign.plugins"
ENV = "VISALIGN_PLUGINS"

_lock = threading.RLock()
_state = {"done": False, "loading": False}
loaded: list[str] = []  # the plugin modules imported, in order


def plugin_names() -> list[str]:
    """The plugin modules load_plugins() imports: entry points, then VISALIGN_PLUGINS, then the defaults; a
    `-module` in VISALIGN_PLUGINS removes that module."""
    from importlib.metadata import entry_points

    env = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    removed = {n[1:].strip() for n in env if n.startswith("-")}
    names = [ep.value.split(":", 1)[0].strip() for ep in entry_points(group=ENTRY_POINT_GROUP)]
    names += [n for n in env if not n.startswith("-")] + list(DEFAULT_PLUGINS)
    return [n for n in dict.fromkeys(names) if n not in removed]


def load_plugins() -> None:
    """Import every plugin module once (idempotent and thread-safe; a call made while the plugins are being
    imported, by a registry the plugins register into, returns at once)."""
    if _state["done"]:
        return
    with _lock:
        if _state["done"] or _state["loading"]:
            return
        _state["loading"] = True
        try:
            for name in plugin_names():
                try:
                    importlib.import_module(name)
                except ImportError as e:
                    if e.name != name:  # the plugin is there but one of its imports fails: say so
                        raise
                    raise ImportError(f"visalign plugin '{name}' does not import ({e}); install it or remove it "
                                      f"from {ENV} (-{name} leaves out a default one)") from None
                loaded.append(name)
            _state["done"] = True
        finally:
            _state["loading"] = False
