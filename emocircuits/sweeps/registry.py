"""The sweep analyses by name, and reading a sweep config (which needs them to check its tables)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.prompts import get_template
from emocircuits.sweeps.analyses.circuit_steering import CircuitSteering
from emocircuits.sweeps.analyses.component_validation import ComponentValidation
from emocircuits.sweeps.analyses.intervention import InterventionAnalysis
from emocircuits.sweeps.analyses.neuron_masking import NeuronMasking
from emocircuits.sweeps.base import Analysis
from emocircuits.sweeps.config import (
    DTYPES,
    SPLITS,
    TOP_KEYS,
    DataConfig,
    ExecutorConfig,
    ModelConfig,
    SweepConfig,
    SweepSection,
    _parse_grid,
    _validate_executor,
    choice,
    expand_cells,
    from_mapping,
)

ANALYSES: dict[str, type[Analysis]] = {cls.name: cls for cls in (
    InterventionAnalysis, NeuronMasking, ComponentValidation, CircuitSteering)}


def register_analysis(cls: type[Analysis]) -> type[Analysis]:
    """Make a user's own analysis known by its ``name`` (use as a class decorator); returns the class."""
    if not cls.name:
        raise EmocircuitsError(f"Analysis {cls.__name__} has no name; set the class attribute name = '...'.")
    ANALYSES[cls.name] = cls
    return cls


def analysis_names() -> list[str]:
    return sorted(ANALYSES)


def get_analysis(name: str) -> Analysis:
    """An instance of the analysis registered as ``name``, or one sentence listing the known ones."""
    if name not in ANALYSES:
        raise EmocircuitsError(f"Key 'sweep.analysis' has value {name!r}; allowed values: {', '.join(analysis_names())}.")
    return ANALYSES[name]()


def from_dict(data: Mapping[str, Any]) -> SweepConfig:
    """Parse and validate a config dict (the content of a sweep TOML); loads no model."""

    if not isinstance(data, Mapping):
        raise EmocircuitsError("A sweep config must be a table of tables ([sweep], [model], [data], [analysis], [grid]).")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise EmocircuitsError(f"Unknown table [{unknown[0]}]; allowed tables: {', '.join(TOP_KEYS)}.")
    for key in TOP_KEYS:
        if key in data and not isinstance(data[key], Mapping):
            raise EmocircuitsError(f"Key {key!r} must be a table ([{key}]), not {type(data[key]).__name__}.")
    if "sweep" not in data or "analysis" not in data["sweep"]:

        raise EmocircuitsError(f"Missing required key 'sweep.analysis'; allowed values: {', '.join(analysis_names())}.")
    sweep = from_mapping(SweepSection, data["sweep"], "sweep")
    analysis = get_analysis(sweep.analysis)
    if sweep.cells_per_task < 0:
        raise EmocircuitsError(f"Key 'sweep.cells_per_task' has value {sweep.cells_per_task}; allowed: integers >= 0.")
    model = from_mapping(ModelConfig, data.get("model", {}), "model")
    choice("model.dtype", model.dtype, DTYPES)
    data_cfg = from_mapping(DataConfig, data.get("data", {}), "data")
    choice("data.split", data_cfg.split, SPLITS)
    if data_cfg.limit_per_label < 0:
        raise EmocircuitsError(f"Key 'data.limit_per_label' has value {data_cfg.limit_per_label}; allowed: integers >= 0.")

    try:
        get_template(data_cfg.template)
    except EmocircuitsError as exc:
        raise EmocircuitsError(f"Key 'data.template': {exc}") from None
    params = from_mapping(analysis.Params, data.get("analysis", {}), "analysis")
    grid = _parse_grid(analysis, data.get("grid", {}))
    executor = from_mapping(ExecutorConfig, data.get("executor", {}), "executor")
    _validate_executor(executor)
    cfg = SweepConfig(sweep=sweep, model=model, data=data_cfg, params=params, grid=grid, executor=executor)
    analysis.validate(cfg)
    return cfg


def expand(cfg: SweepConfig) -> list[Any]:
    """The cells of a config: the Cartesian product of the grid axes in file order (last axis fastest)."""

    return expand_cells(cfg, get_analysis(cfg.analysis))


def load_config(path: str | Path) -> SweepConfig:
    """Read and validate a sweep TOML file (no model is loaded)."""
    path = Path(path)
    if not path.is_file():
        raise EmocircuitsError(f"Sweep config {str(path)!r} does not exist; pass a .toml file.")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark (Windows editors) is tolerated
    except UnicodeDecodeError as exc:
        raise EmocircuitsError(f"Sweep config {str(path)!r} is not UTF-8 text (byte {exc.start}); re-save it as "
                               "UTF-8.") from None
    except OSError as exc:
        raise EmocircuitsError(f"Sweep config {str(path)!r} cannot be read ({exc.strerror or type(exc).__name__}); "
                               "check its permissions.") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EmocircuitsError(f"{str(path)!r} is not valid TOML ({exc}).") from None
    try:
        return from_dict(data)
    except EmocircuitsError as exc:  # name the file: "sweep.toml: Key 'analysis.n_boot' has value 0; ..."
        if str(path) in str(exc):
            raise
        raise EmocircuitsError(f"{str(path)!r}: {exc}") from None


