"""A folder of circuits: one component file per emotion.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from emocircuits.core.components import Circuit
from emocircuits.runs.rundir import read_manifest


def save_circuits(circuits: Mapping[str, Circuit], directory: str | Path) -> dict[str, str]:
    """Write ``<directory>/<emotion>.json|.safetensors`` per circuit; returns ``{emotion: json path}``."""
    return {e: str(c.save(Path(directory) / e)) for e, c in circuits.items()}


def read_circuits(path: Path | str) -> dict[str, Circuit]:
    """``{emotion: Circuit}`` of an assemble run."""

    manifest = read_manifest(path)
    return {e: Circuit.load(Path(path) / f[: -len(".json")] if f.endswith(".json") else Path(path) / f)
            for e, f in manifest.get("circuits", {}).items()}
