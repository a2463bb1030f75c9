"""The analysis protocol every sweep plugs into, its registry, and stable cell ids.

An analysis is a class with two dataclasses and a few methods::

    class MyAnalysis(Analysis):
        name = "my_analysis"
        Params = MyParams          # [analysis] table: fixed for the whole sweep
        Cell = MyCell              # one grid point; its fields are the allowed [grid] axes

        def validate(self, cfg): ...             # before any model loads; raise EmocircuitsError
        def setup(self, cfg, run_dir): ...       # optional, once in the driver: artifacts for every worker
        def prepare(self, cfg, shared): ...      # once per worker: model load, tokenisation, clean pass
        def check_cell(self, cfg, spec, cell):   # optional: a cell against the ModelSpec dict, before it runs
        def run(self, state, cells): ...         # -> one metrics dict per cell (or an exception)

``setup(cfg, run_dir)`` returns a JSON-able dict handed to every ``prepare`` (e.g. artifacts found on a
train split, see :mod:`emocircuits.sweeps.artifacts`). An analysis with ``free_axes = True`` takes any
grid axis (its ``Cell`` is then a mapping class, e.g. :class:`TemplateCell`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from emocircuits.base.seeds import derive_seed


class TemplateCell(dict):
    """A grid point of an analysis with free axes: ``{axis: value}`` (hashable, JSON-able)."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(json.dumps(self, sort_keys=True))


class Analysis:
    """Base class of sweep analyses (see the module docstring)."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = object
    Cell: ClassVar[type] = object
    #: True: any grid axis is allowed (the analysis checks them in ``validate``); cells are ``TemplateCell``.
    free_axes: ClassVar[bool] = False
    #: Cells per task when the config says 0.
    default_cells_per_task: ClassVar[int] = 1

    def validate(self, cfg: Any) -> None:
        """Check the config's allowed values without loading a model; raise ``EmocircuitsError``."""

    def setup(self, cfg: Any, run_dir: Path, *, progress: bool = True) -> dict[str, Any]:
        """Optional once-per-sweep step in the driver; returns a JSON-able dict for ``prepare``."""
        return {}

    def prepare(self, cfg: Any, shared: dict[str, Any], *, progress: bool = False) -> Any:
        """Once per worker: load the model, tokenise, run the clean pass. Returns the worker state."""
        raise NotImplementedError

    def model_spec(self, state: Any) -> dict[str, Any] | None:
        """The ModelSpec dict of the worker's model (for the manifest)."""
        spec = getattr(state, "spec", None)
        return spec.to_dict() if hasattr(spec, "to_dict") else spec

    def check_cell(self, cfg: Any, spec: Mapping[str, Any], cell: Any) -> None:
        """Check one cell against the model (``spec``: the ModelSpec dict) before it runs; raise
        ``EmocircuitsError`` (the cell is then recorded as failed with that sentence)."""

    def run(self, state: Any, cells: Sequence[Any]) -> list[dict[str, Any] | BaseException]:
        """Metrics for each cell, in order: a flat dict of scalars, or the exception that cell raised.

        A key ``"__arrays__"`` may hold ``{name: ndarray}`` saved as ``arrays/<cell_id>.safetensors``.
        """
        raise NotImplementedError


def cell_dict(cell: Any) -> dict[str, Any]:
    """A cell as a plain JSON-able dict."""
    data = dict(cell) if isinstance(cell, Mapping) else dataclasses.asdict(cell)
    return json.loads(json.dumps(data))


def cell_id(identity_hash: str, cell: Any) -> str:
    """Stable id of a cell: sha256 of (the sweep's identity hash, the cell's fields), 16 hex digits.

    The identity covers model, data, analysis parameters and seed, so a cell result from a different
    sweep never stands in for this one.
    """
    payload = json.dumps({"identity": identity_hash, "cell": cell_dict(cell)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


__all__ = ["Analysis", "TemplateCell", "cell_dict", "cell_id", "derive_seed"]
