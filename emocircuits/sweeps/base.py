"""The analysis protocol every sweep plugs into, its registry, and stable cell ids.

An analysis is a class with two dataclasses and four methods::

    class MyAnalysis(Analysis):
        name = "my_analysis"
        Params = MyParams          # [analysis] table: fixed for the whole sweep
        Cell = MyCell              # one grid point; its fields are the allowed [grid] axes

        def validate(self, cfg): ...             # before any model loads; raise EmocircuitsError
        def prepare(self, cfg, shared): ...      # once per worker: model load, tokenisation, clean pass
        def run(self, state, cells): ...         # -> one metrics dict per cell (or an exception)

``setup(cfg, run_dir)`` is an optional step run once in the driver before cells are dispatched (e.g.
finding neurons on a train split); it returns a JSON-able dict handed to every ``prepare``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from emocircuits.errors import EmocircuitsError

_ANALYSES: dict[str, type[Analysis]] = {}
_BUILTIN_MODULES = {
    "head_scaling": "emocircuits.sweeps.analyses.head_scaling",
    "neuron_masking": "emocircuits.sweeps.analyses.neuron_masking",
}


class Analysis:
    """Base class of sweep analyses (see the module docstring)."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = object
    Cell: ClassVar[type] = object
    #: True when ``run`` evaluates its cells stacked in one batch, so a cell's numbers could depend (at
    #: float rounding level) on which cells share its task; the engine then re-runs whole tasks on resume.
    stacks_cells: ClassVar[bool] = False
    #: Cells per task when the config says 0.
    default_cells_per_task: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            _ANALYSES[cls.name] = cls

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

    def run(self, state: Any, cells: Sequence[Any]) -> list[dict[str, Any] | BaseException]:
        """Metrics for each cell, in order: a flat dict of scalars, or the exception that cell raised.

        A key ``"__arrays__"`` may hold ``{name: ndarray}`` saved as ``arrays/<cell_id>.safetensors``.
        """
        raise NotImplementedError


def analysis_names() -> list[str]:
    return sorted(set(_ANALYSES) | set(_BUILTIN_MODULES))


def get_analysis(name: str) -> Analysis:
    """An instance of the analysis registered as ``name``, or one sentence listing the known ones."""
    if name not in _ANALYSES and name in _BUILTIN_MODULES:
        import importlib

        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in _ANALYSES:
        raise EmocircuitsError(f"Key 'sweep.analysis' has value {name!r}; allowed values: {', '.join(analysis_names())}.")
    return _ANALYSES[name]()


def cell_dict(cell: Any) -> dict[str, Any]:
    """A cell as a plain JSON-able dict."""
    return json.loads(json.dumps(dataclasses.asdict(cell)))


def cell_id(identity_hash: str, cell: Any) -> str:
    """Stable id of a cell: sha256 of (the sweep's identity hash, the cell's fields), 16 hex digits.

    The identity covers model, data, analysis parameters and seed, so a cell result from a different
    sweep never stands in for this one.
    """
    payload = json.dumps({"identity": identity_hash, "cell": cell_dict(cell)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def derive_seed(seed: int, *parts: Any) -> int:
    """A 31-bit seed from a base seed and any JSON-able parts (order-independent of the sweep's schedule)."""
    payload = json.dumps([seed, *parts], sort_keys=True, default=str)
    return int(hashlib.sha256(payload.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF
