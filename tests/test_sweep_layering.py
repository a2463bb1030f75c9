"""Imports run one way (library below commands below cli), and `rerun` works without the CLI."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "emocircuits"
FRONT = ("emocircuits.commands", "emocircuits.cli")


def _imports(path: Path, package: str | None = None) -> set[str]:
    """Every module a file imports, lazy ones included (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), str(path))
    package = package or ".".join(path.relative_to(PKG.parent).with_suffix("").parts[:-1])
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def _library_files() -> list[Path]:
    return [p for p in sorted(PKG.rglob("*.py")) if "commands" not in p.parts and p.name != "cli.py"]


def _hits(imports: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in imports if any(m == p or m.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(PKG)))
def test_library_modules_never_import_the_cli_or_commands(path):
    assert not _hits(_imports(path), FRONT), f"{path.relative_to(PKG)} imports upward"


def test_viz_takes_layer_spans_as_data_not_from_sites():
    for path in sorted((PKG / "viz").rglob("*.py")):
        assert not _hits(_imports(path), ("emocircuits.sites",)), f"{path.relative_to(PKG)} imports sites"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    sample = tmp_path / "probe.py"
    sample.write_text("def f():\n    from ..commands import sweep\n    import emocircuits.cli\n")
    assert _hits(_imports(sample, "emocircuits.sweeps"), FRONT) == ["emocircuits.cli", "emocircuits.commands",
                                                                    "emocircuits.commands.sweep"]


def test_one_source_for_shared_constants():
    """The emotion labels, layer-range names and masking metric names are spelled once."""
    from emocircuits import neurons, sites
    from emocircuits.data import EKMAN6
    from emocircuits.viz import colors

    assert colors.EMOTIONS is EKMAN6 and neurons.LAYER_RANGES is sites.LAYER_RANGES
    spelled = '"anger", "disgust", "fear"'
    offenders = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
                 if spelled in p.read_text() and p.relative_to(PKG).parts[0] != "data"]
    assert offenders == []
    for name in ("LAYER_NAMES", "_SWEEP_METRICS", "_METRICS", "control_seed"):
        pattern = re.compile(rf"(?<![A-Za-z_])({name} = |def {name}\()")
        assert not any(pattern.search(p.read_text()) for p in PKG.rglob("*.py")), name


def test_derive_seed_keeps_the_control_seeds(tmp_path):
    """One seed function; the masking controls keep the seeds they had (sha256 of 'seed|emotion|...|k')."""
    import hashlib

    from emocircuits.runs import derive_seed
    from emocircuits.sweeps import derive_seed as sweeps_seed

    old = int.from_bytes(hashlib.sha256(b"3|fear|top|0.02|truncate|1").digest()[:8], "little")
    assert derive_seed(3, "fear", "top", 0.02, "truncate", 1) == old and sweeps_seed is derive_seed


def test_rerun_of_classify_works_without_importing_the_cli(tmp_path):
    from emocircuits.jobs import run_classify

    config = {"model": "tiny-llama", "data": "builtin:dialogues", "split": "test", "limit_per_label": 1,
              "template": "raw", "scoring": "first_token", "calibrate": False, "seed": 0}
    first = run_classify(config, tmp_path / "a", quiet=True)
    code = ("import sys, json; from emocircuits.runs import rerun; m = rerun(sys.argv[1], sys.argv[2]); "
            "print(json.dumps({'accuracy': m['accuracy'], 'front': sorted(k for k in sys.modules "
            "if k.startswith(('emocircuits.cli', 'emocircuits.commands')))}))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a"), str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == {"accuracy": first["accuracy"], "front": []}
    assert (tmp_path / "b" / "predictions.parquet").is_file()
