"""The sweep analyses by name, and reading a sweep config (which needs them to check its tables)."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.presets import PRESETS, resolve, settings_for
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


def _defaults(cls: type) -> dict[str, Any]:
    """A config dataclass' fields with their defaults (required fields left out)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def apply_preset(name: str, analysis: Analysis, data_table: Mapping[str, Any], params_table: Mapping[str, Any],
                 source: str = "the sweep config") -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[str]]:
    """``[data]`` and ``[analysis]`` with preset ``name``'s settings for the keys they have, as
    :func:`emocircuits.base.presets.resolve` does for a command's flags: a key written in the file wins
    (with a note). Returns ``(data_table, params_table, settings, notes)``; refuses an unknown preset
    naming ``source``."""
    if name not in PRESETS:
        raise EmocircuitsError(f"{source}: key 'sweep.preset' names an unknown preset {name!r}; use one of "
                               f"{', '.join(PRESETS)}.")
    data_keys, params_keys = _defaults(DataConfig), _defaults(analysis.Params)
    flat = {**params_keys, **params_table, **data_keys, **data_table}
    explicit = set(data_table) | set(params_table)
    try:
        resolved, notes = resolve(name, flat, explicit, f"sweep {analysis.name}")
    except EmocircuitsError as exc:
        raise EmocircuitsError(f"{source}: {exc}") from None
    settings = dict(resolved["preset_settings"])
    data_out, params_out = dict(data_table), dict(params_table)
    for key, value in settings.items():
        (data_out if key in data_keys else params_out)[key] = value
    given = settings_for(name, f"sweep {analysis.name}")
    overrides = [f"preset {name}: {'data' if key in data_table else 'analysis'}.{key} = {value!r} in the file, "
                 f"overriding the preset's {given[key].value!r}"
                 for key, value in settings.items() if key in explicit and value != given[key].value]
    return data_out, params_out, settings, [notes[0], *overrides]


def from_dict(data: Mapping[str, Any], source: str = "the sweep config") -> SweepConfig:
    """Parse and validate a config dict (the content of a sweep TOML); loads no model. ``source`` names the
    file in refusals that are about the whole file (an unknown ``sweep.preset``)."""

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
    data_table, params_table = dict(data.get("data", {})), dict(data.get("analysis", {}))
    settings: dict[str, Any] = {}
    notes: list[str] = []
    if sweep.preset:
        data_table, params_table, settings, notes = apply_preset(sweep.preset, analysis, data_table, params_table,
                                                                 source)
    data_cfg = from_mapping(DataConfig, data_table, "data")
    choice("data.split", data_cfg.split, SPLITS)
    if data_cfg.limit_per_label < 0:
        raise EmocircuitsError(f"Key 'data.limit_per_label' has value {data_cfg.limit_per_label}; allowed: integers >= 0.")

    try:
        get_template(data_cfg.template)
    except EmocircuitsError as exc:
        raise EmocircuitsError(f"Key 'data.template': {exc}") from None
    params = from_mapping(analysis.Params, params_table, "analysis")
    grid = _parse_grid(analysis, data.get("grid", {}))
    executor = from_mapping(ExecutorConfig, data.get("executor", {}), "executor")
    _validate_executor(executor)
    cfg = SweepConfig(sweep=sweep, model=model, data=data_cfg, params=params, grid=grid, executor=executor,
                      preset_settings=settings, preset_notes=tuple(notes))
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
        return from_dict(data, source=f"Sweep config {str(path)!r}")
    except EmocircuitsError as exc:  # name the file: "sweep.toml: Key 'analysis.n_boot' has value 0; ..."
        if str(path) in str(exc):
            raise
        raise EmocircuitsError(f"{str(path)!r}: {exc}") from None


