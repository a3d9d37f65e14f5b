"""The README and docs/ hold together: relative links resolve (files and #anchors), every documented `visalign`
command parses and names an existing recipe, `make` targets mentioned exist, the README stays a manual
(<= 250 lines), and the generated reference pages equal a fresh generation (docs/gen_reference.py)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import unicodedata
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
README_MAX_LINES = 250

FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|!\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXPLICIT_ID = re.compile(r"\{\s*#([\w-]+)[^}]*\}\s*$")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def split_fences(text: str) -> tuple[list[tuple[int, str]], list[tuple[str, list[tuple[int, str]]]]]:
    """-> (prose lines outside fences, fenced blocks as (language, lines)); lines as (line number, text)."""
    prose, blocks, current, lang, marker = [], [], None, "", ""
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if current is None and m:
            current, lang, marker = [], m.group(3).lower(), m.group(2)
        elif current is not None and line.strip().startswith(marker[:3]) and line.strip().strip(marker[0]) == "":
            blocks.append((lang, current))
            current = None
        elif current is not None:
            current.append((n, line))
        else:
            prose.append((n, line))
    return prose, blocks


def slugify(text: str) -> str:
    """The anchor Python-Markdown's toc extension (mkdocs' default) gives a heading."""
    text = re.sub(r"`([^`]*)`", r"\1", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


@lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset[str]:
    prose, _ = split_fences(path.read_text())
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose:
        m = HEADING.match(line)
        if not m:
            continue
        explicit = EXPLICIT_ID.search(m.group(2))
        slug = explicit.group(1) if explicit else slugify(m.group(2))
        if slug in seen:  # toc de-duplicates as slug_1, slug_2, ...
            seen[slug] += 1
            slug = f"{slug}_{seen[slug]}"
        else:
            seen[slug] = 0
        out.add(slug)
    return frozenset(out)


def links(path: Path):
    prose, _ = split_fences(path.read_text())
    for n, line in prose:
        line = re.sub(r"`[^`]*`", "", line)  # code spans are not links
        for m in LINK.finditer(line):
            yield n, m.group(1) or m.group(2)


def test_readme_is_a_manual_of_at_most_250_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}: move " \
                                           f"measurements to docs/results/ and details to docs/"


def test_readme_refers_to_nothing_the_repository_lacks():
    text = README.read_text()
    for pattern in (r"\bissue\s*#?\d", r"\bDESIGN\b", r"\bgoal\b"):
        assert not re.search(pattern, text, re.I), f"README.md mentions {pattern!r}: a document it does not have"


def test_code_refers_to_the_architecture_page_not_to_design_notes():
    for sub in ("visalign", "benchmarks", "tests"):
        for path in (ROOT / sub).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                assert not re.search(r"\bDESIGN \d", line), f"{_rel(path)}:{n}: 'DESIGN x.y' names notes the " \
                                                            f"repository does not have; use docs/architecture.md#..."
                for anchor in re.findall(r"docs/architecture\.md#([\w-]+)", line):
                    assert anchor in anchors(DOCS / "architecture.md"), f"{_rel(path)}:{n}: no #{anchor} in " \
                                                                        f"docs/architecture.md"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page: Path):
    bad = []
    for n, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = page if path == "" else (page.parent / path)
        if not dest.exists():
            bad.append(f"{_rel(page)}:{n}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.resolve()):
            bad.append(f"{_rel(page)}:{n}: {target} (no heading with anchor #{anchor})")
    assert not bad, "\n".join(bad)


def documented_commands():
    """(page, line, the words of a `visalign ...` command) from every fenced bash block."""
    for page in PAGES:
        _, blocks = split_fences(page.read_text())
        for lang, lines in blocks:
            if lang not in ("bash", "sh", "shell", "console"):
                continue
            joined, start = "", None
            for n, line in lines:  # join backslash continuations
                start = n if not joined else start
                if line.rstrip().endswith("\\"):
                    joined += line.rstrip()[:-1] + " "
                    continue
                joined += line
                for words in shell_commands(joined):
                    if words[:1] == ["visalign"]:
                        yield page, start, words[1:]
                joined = ""


def shell_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line (split at ;, &&, ||, |, &; quotes kept; # comments dropped)."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    commands, words = [], []
    for token in lex:
        if token and set(token) <= set(";&|"):
            commands.append(words)
            words = []
        else:
            words.append(token)
    return [c for c in commands + [words] if c]


COMMANDS = list(documented_commands())


def test_the_docs_show_commands():
    assert len(COMMANDS) > 40
    assert {page for page, _, _ in COMMANDS} >= {README, DOCS / "getting-started.md"}


@pytest.mark.parametrize("page,line,argv", COMMANDS, ids=[f"{_rel(p)}:{n}" for p, n, _ in COMMANDS])
def test_documented_commands_parse_and_name_existing_recipes(page: Path, line: int, argv: list[str], monkeypatch):
    import torch

    from visalign.cli import parse_args
    from visalign.config import recipe_names

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # GPU commands parse as on a GPU machine
    where = f"{_rel(page)}:{line}: visalign {shlex.join(argv)}"
    try:
        args = parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: does not parse")
    recipe = getattr(args, "recipe", None)
    if recipe is not None:
        assert recipe in recipe_names() or (recipe.endswith(".yaml") and "/" not in recipe), \
            f"{where}: no recipe '{recipe}'"
    for override in getattr(args, "overrides", []):
        assert "=" in override, f"{where}: '{override}' is not key=value"


def test_mentioned_make_targets_exist():
    targets = set(re.findall(r"^([\w.-]+)\s*:", (ROOT / "Makefile").read_text(), re.M))
    missing = []
    for page in PAGES:
        prose, blocks = split_fences(page.read_text())
        code = [(n, line.strip()) for _, lines in blocks for n, line in lines]  # fenced: `make X` opens a line
        code += [(n, span) for n, line in prose for span in re.findall(r"`([^`]*)`", line)]  # inline: `make X ...`
        for n, text in code:
            m = re.match(r"make ([a-z][\w-]*)", text)
            if m and m.group(1) not in targets:
                missing.append(f"{_rel(page)}:{n}: make {m.group(1)}")
    assert not missing, f"not Makefile targets ({sorted(targets)}):\n" + "\n".join(missing)


def test_generated_reference_pages_are_up_to_date():
    # a fresh process: other tests register test-only rewards and models into the registries of this one
    res = subprocess.run([sys.executable, str(DOCS / "gen_reference.py"), "--check"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, f"{res.stdout}{res.stderr}".strip()


def test_mkdocs_nav_names_existing_pages():
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python/name:", ""))
    pages = []

    def walk(node):
        if isinstance(node, str):
            pages.append(node)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)

    walk(config["nav"])
    missing = [p for p in pages if not p.startswith("http") and not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml nav names pages that do not exist: {missing}"
