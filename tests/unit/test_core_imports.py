"""The RL core imports nothing from the GenEval-S testbed (docs/architecture.md#plugins): every module of
visalign/ outside visalign/testbed/ is parsed and any import of visalign.testbed, static or lazy (inside a
function), absolute or relative, fails the test. The testbed registers itself through visalign/plugins.py."""

import ast
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


def test_the_checker_sees_static_lazy_and_relative_imports(tmp_path):
    f = PACKAGE / "models" / "registry.py"  # a core file: its own imports resolve from visalign.models
    names = {name for _, name in _imports(f)}
    assert "visalign.registry" in names and "visalign.trainer.checkpoint" in names  # relative, and lazy in load_model
    src = "from ..testbed import world\n\ndef f():\n    from visalign.testbed.world import grammar\n    import visalign.testbed\n"
    probe = tmp_path / "probe.py"
    probe.write_text(src)
    found = [name for _, name in _imports(probe, "visalign.models.probe") if name.startswith(TESTBED)]
    assert {"visalign.testbed", "visalign.testbed.world", "visalign.testbed.world.grammar"} <= set(found)


def test_trainer_holds_the_rl_loop_only():
    assert sorted(p.name for p in (PACKAGE / "trainer").glob("*.py")) == [
        "__init__.py", "checkpoint.py", "diagnostics.py", "ema.py", "logging.py", "memory.py", "trainer.py"]


def test_plugin_names_honour_the_environment(monkeypatch):
    from visalign import plugins

    monkeypatch.setenv(plugins.ENV, "")
    assert plugins.plugin_names()[-1] == "visalign.testbed"
    monkeypatch.setenv(plugins.ENV, "my_plugin, -visalign.testbed")
    names = plugins.plugin_names()
    assert "my_plugin" in names and "visalign.testbed" not in names
