"""The folders are the layers, and imports only run down the table (the README's architecture section)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "emocircuits"

# Each layer (a folder of the package) and the layers it may import; a layer may always import itself.
LAYERS: dict[str, set[str]] = {
    "base": set(),
    "data": {"base"},
    "core": {"base", "data"},
    "runs": {"base", "data", "core"},
    "viz": {"base", "data", "core", "runs"},
    "judges": {"base", "data", "core"},
    "methods": {"base", "data", "core", "judges", "viz"},
    "jobs": {"base", "data", "core", "runs", "viz", "judges", "methods"},
    "sweeps": {"base", "data", "core", "runs", "viz", "judges", "methods", "jobs"},
    "cli": {"base", "data", "core", "runs", "viz", "judges", "methods", "jobs", "sweeps"},
}
# Where an import inside a function is allowed, and why: the CLI loads a command's job (torch, pandas,
# TransformerLens) only when that command runs, so `--help` and refusals that need no model answer at once.
LAZY_ALLOWED = {"cli"}
# Libraries no module below the CLI may import.
CLI_LIBRARIES = ("typer", "click")


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "emocircuits" else None


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(imported module, inside a function)`` for every import of the file."""
    tree = ast.parse(path.read_text(), str(path))
    funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    inside = {id(m) for f in funcs for m in ast.walk(f)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in inside) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: use absolute imports"
            out.append((node.module, id(node) in inside))
    return out


FILES = [p for p in sorted(PKG.rglob("*.py")) if p.parent != PKG]


def test_every_module_sits_in_a_layer():
    assert {p.relative_to(PKG).parts[0] for p in FILES} == set(LAYERS)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_only_run_down(path):
    here = _layer(_module(path))
    for module, lazy in _imports(path):
        there = _layer(module)
        if module.split(".")[0] in CLI_LIBRARIES:
            assert here == "cli", f"{path.relative_to(PKG)} imports {module}: only the CLI may"
        if there is None:
            continue
        assert there == here or there in LAYERS[here], f"{path.relative_to(PKG)} ({here}) imports up into {module}"
        assert not lazy or here in LAZY_ALLOWED, (
            f"{path.relative_to(PKG)} imports {module} inside a function; import it at the top")


def test_no_import_circles():
    graph = {}
    for path in FILES:
        graph[_module(path)] = {m for m, lazy in _imports(path) if m.startswith("emocircuits.") and not lazy}
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert circles == []


def test_no_module_loads_modules_by_name():
    offenders = [str(p.relative_to(PKG)) for p in FILES
                 if "import_module" in p.read_text() or "__import__(" in p.read_text()]
    assert offenders == []


def test_the_checker_sees_lazy_imports(tmp_path):
    sample = tmp_path / "probe.py"
    sample.write_text("import os\n\ndef f():\n    from emocircuits.cli import app\n")
    assert _imports(sample) == [("os", False), ("emocircuits.cli", True)]


def test_importing_the_cli_loads_no_torch():
    code = "import sys, emocircuits.cli; print(sorted(m for m in ('torch', 'pandas', 'transformer_lens') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
