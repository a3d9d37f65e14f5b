"""The RL core imports nothing from the GenEval-S testbed (docs/architecture.md#plugins): every module of
visalign/ outside visalign/testbed/ is parsed and any import of visalign.testbed, static or lazy (inside a
function), absolute or relative, fails the test. The testbed registers itself through visalign/plugins.py.
Nor do the core's packages (the name after `visalign.`: trainer, models, config, ...) import each other in a
cycle (docs/architecture.md, rules)."""

import ast
from collections import defaultdict
from pathlib import Path

import visalign

PACKAGE = Path(visalign.__file__).resolve().parent
TESTBED = "visalign.testbed"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, here: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in a file (module `here`, default: by its path), relative ones
    resolved, `from X import y` as X and X.y."""
    here = here or _module(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            out.append((node.lineno, str(node.args[0].value)))
    return out


def core_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if (PACKAGE / "testbed") not in p.parents)


def test_the_core_imports_nothing_from_the_testbed():
    files = core_files()
    assert len(files) > 50 and PACKAGE / "trainer" / "trainer.py" in files
    bad = [f"{p.relative_to(PACKAGE.parent)}:{line} imports {name}" for p in files for line, name in _imports(p)
           if name == TESTBED or name.startswith(TESTBED + ".")]
    assert not bad, "the core imports the testbed (register through visalign/plugins.py instead):\n" + "\n".join(bad)


def _package(module: str) -> str | None:
    """The core package a visalign module belongs to (visalign.trainer.ema -> trainer, visalign.config -> config);
    None for visalign itself, the testbed and names that are not modules of the core (an attribute imported)."""
    parts = module.split(".")
    if parts[0] != "visalign" or len(parts) < 2 or parts[1] == "testbed":
        return None
    return parts[1] if (PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file() else None


def package_graph() -> dict[str, dict[str, list[str]]]:
    """{package: {imported package: ['visalign/FILE.py:LINE', ...]}} over every static and lazy import of the core."""
    graph = defaultdict(lambda: defaultdict(list))
    for p in core_files():
        here = _package(_module(p))
        for line, name in _imports(p):
            there = _package(name)
            if here and there and there != here:
                where = f"{p.relative_to(PACKAGE.parent)}:{line}"
                if where not in graph[here][there]:
                    graph[here][there].append(where)
    return graph


def _cycle(graph) -> list[str] | None:
    """One cycle of packages [a, b, ..., a], or None (a depth-first search for a back edge)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_core_packages_import_each_other_without_cycles():
    graph = package_graph()
    assert "checkpoint" in graph["trainer"] and "config" in graph["models"]  # the graph sees the packages' imports
    cycle = _cycle(graph)
    edges = [f"{a} -> {b}: {', '.join(graph[a][b])}" for a, b in zip(cycle, cycle[1:])] if cycle else []
    assert not cycle, ("the core's packages import each other in a cycle (a lower layer must not import a higher "
                       "one; docs/architecture.md, rules):\n" + "\n".join(edges))


def test_the_cycle_check_finds_a_cycle():
    graph = {"a": {"b": ["x.py:1"]}, "b": {"c": ["y.py:2"]}, "c": {"a": ["z.py:3"]}, "d": {"a": ["w.py:4"]}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b": []}, "b": {}}) is None


def test_the_checker_sees_static_lazy_and_relative_imports(tmp_path):
    f = PACKAGE / "models" / "registry.py"  # a core file: its own imports resolve from visalign.models
    names = {name for _, name in _imports(f)}
    assert "visalign.registry" in names and "visalign.checkpoint" in names  # relative, and lazy in load_model
    src = "from ..testbed import world\n\ndef f():\n    from visalign.testbed.world import grammar\n    import visalign.testbed\n"
    probe = tmp_path / "probe.py"
    probe.write_text(src)
    found = [name for _, name in _imports(probe, "visalign.models.probe") if name.startswith(TESTBED)]
    assert {"visalign.testbed", "visalign.testbed.world", "visalign.testbed.world.grammar"} <= set(found)


def test_trainer_holds_the_rl_loop_only():
    assert sorted(p.name for p in (PACKAGE / "trainer").glob("*.py")) == [
        "__init__.py", "diagnostics.py", "ema.py", "memory.py", "trainer.py"]


def test_plugin_names_honour_the_environment(monkeypatch):
    from visalign import plugins

    monkeypatch.setenv(plugins.ENV, "")
    assert plugins.plugin_names()[-1] == "visalign.testbed"
    monkeypatch.setenv(plugins.ENV, "my_plugin, -visalign.testbed")
    names = plugins.plugin_names()
    assert "my_plugin" in names and "visalign.testbed" not in names
