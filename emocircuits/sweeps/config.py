"""Sweep configuration: a TOML file parsed into dataclasses, validated before any model loads.

Schema (every table but ``[grid]`` is optional; unknown keys are rejected with the allowed keys named)::

    [sweep]                      # analysis = name of a registered analysis (required)
    analysis = "neuron_masking"
    seed = 0                     # drives every random choice of every cell
    cells_per_task = 0           # cells per task sent to a worker; 0 = the analysis' default
    preset = ""                  # a paper's settings (tak2025 | lee2025 | wang2025) for the [data] and
                                 # [analysis] keys the analysis has; keys written in the file win, with a note

    [model]                      # passed to emocircuits.load_model
    spec = "default"
    dtype = "float32"
    device = "cpu"
    device_map = ""              # e.g. "auto": split a big model over several GPUs (device is then ignored)

    [data]                       # passed to emocircuits.load_data
    spec = "builtin:dialogues"
    split = "test"               # train | test | all
    limit_per_label = 0          # 0 = every example
    labels = []                  # [] = the dataset's default scheme
    template = "chat_short"

    [analysis]                   # the analysis' own parameters (see its Params dataclass)

    [grid]                       # axis = list of values; the cells are the Cartesian product
    emotion = ["anger", "disgust"]   # the axes are the analysis' Cell fields, or free (fill placeholders)

    [executor]                   # where cells run (not part of the results' identity)
    kind = "local"               # local | ray
    workers = 1
    address = ""                 # Ray cluster address ("" = RAY_ADDRESS or a local instance)
    cpus_per_worker = 1
    gpus_per_worker = 0
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from emocircuits.base.constants import DEFAULT_TEMPLATE, NUMBER_BOUNDS
from emocircuits.base.errors import EmocircuitsError
from emocircuits.data import load_data

EXECUTORS = ("local", "ray")
DTYPES = ("float32", "bfloat16", "float16")
SPLITS = ("train", "test", "all")


# ----------------------------------------------------------------------------- typed dataclass coercion


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict or tp is dict:
        return "a table"
    if tp is type(None):
        return "none"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` (int/float/str/bool, ``X | None``, ``list[X]``), or one sentence naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except EmocircuitsError:
                continue
        raise EmocircuitsError(f"Key {key!r} has value {value!r}; expected {_type_name(tp)}.")
    if origin in (list, tuple):
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        if not isinstance(value, list | tuple):
            raise EmocircuitsError(f"Key {key!r} has value {value!r}; expected {_type_name(tp)}.")
        items = [coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise EmocircuitsError(f"Key {key!r} must be a table ([{key}]), not {value!r}.")
        inner = (typing.get_args(tp) or (str, Any))[1]
        return {str(k): coerce(v, inner, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return json.loads(json.dumps(value))  # plain JSON-able data (TOML values are)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise EmocircuitsError(f"Key {key!r} must be a table ([{key}]), not {value!r}.")
        return from_mapping(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - programming error in an analysis' dataclass
        raise TypeError(f"unsupported config field type {tp!r} for {key}")
    raise EmocircuitsError(f"Key {key!r} has value {value!r}; expected {_type_name(tp)}.")


def from_mapping(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and coercing types.

    ``where`` prefixes key names in errors (``"data"`` -> ``data.split``).
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise EmocircuitsError(f"Unknown key {key!r}; allowed keys{' in [' + where + ']' if where else ''}: "
                               f"{', '.join(names)}.")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            key = f"{where}.{f.name}" if where else f.name
            kwargs[f.name] = in_range(f.name, coerce(data[f.name], hints[f.name], key), key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.init:
            key = f"{where}.{f.name}" if where else f.name
            raise EmocircuitsError(f"Missing required key {key!r} ({_type_name(hints[f.name])}).")
    return cls(**kwargs)


def in_range(name: str, value: Any, key: str) -> Any:
    """``value``, or one sentence naming ``key`` when it is a number outside the range of ``name``
    (:data:`NUMBER_BOUNDS`)."""
    bound = NUMBER_BOUNDS.get(name)
    if bound is None or isinstance(value, bool) or not isinstance(value, int | float):
        return value
    low, high, low_in = bound
    if (value < low if low_in else value <= low) or (high is not None and value > high):
        allowed = (f"numbers in ({low:g}, {high:g}]" if not low_in and high is not None else
                   f"numbers in [{low:g}, {high:g}]" if high is not None else f"numbers >= {low:g}")
        raise EmocircuitsError(f"Key {key!r} has value {value!r}; allowed: {allowed}.")
    return value


def as_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain JSON-able dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def at_least(section: str, params: Any, minimums: dict[str, int]) -> None:
    """Raise one sentence unless every ``params.<name>`` is an integer >= ``minimums[name]``."""
    for name, low in minimums.items():
        value = getattr(params, name)
        if value < low:
            raise EmocircuitsError(f"Key '{section}.{name}' has value {value}; allowed: integers >= {low}.")


def choice(key: str, value: Any, allowed: Sequence[Any]) -> None:
    """Raise one sentence unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise EmocircuitsError(f"Key {key!r} has value {value!r}; allowed values: {', '.join(map(str, allowed))}.")


# ----------------------------------------------------------------------------- the config sections


@dataclass(frozen=True)
class SweepSection:
    """``[sweep]``: which analysis, the seed, and how many cells one task carries."""

    analysis: str
    seed: int = 0
    cells_per_task: int = 0
    description: str = ""
    preset: str = ""
    """A paper preset (emocircuits.base.presets) applied to [data] and [analysis]; "" = none."""


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: arguments of :func:`emocircuits.load_model`."""

    spec: str = "default"
    dtype: str = "float32"
    device: str = "cpu"
    device_map: str = ""


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: arguments of :func:`emocircuits.data.load_data` and the prompt template."""

    spec: str = "builtin:dialogues"
    split: str = "test"
    limit_per_label: int = 0
    labels: list[str] = field(default_factory=list)
    template: str = DEFAULT_TEMPLATE

    def load(self, seed: int = 0, split: str | None = None) -> Any:
        """The dataset (``split`` overrides ``self.split``; ``"all"`` = every example)."""

        s = split or self.split
        return load_data(self.spec, split=None if s == "all" else s, labels=self.labels or None,
                         limit_per_label=self.limit_per_label or None, seed=seed)


@dataclass(frozen=True)
class ExecutorConfig:
    """``[executor]``: where cells run. Not part of the results' identity."""

    kind: str = "local"
    workers: int = 1
    address: str = ""
    cpus_per_worker: int = 1
    gpus_per_worker: float = 0.0


@dataclass(frozen=True)
class SweepConfig:
    """A whole sweep: what to run (model, data, analysis parameters, grid) and where (executor).

    ``params`` is the analysis' own Params dataclass; ``grid`` maps each axis (a field of the
    analysis' Cell dataclass) to its values, in file order.
    """

    sweep: SweepSection
    model: ModelConfig
    data: DataConfig
    params: Any
    grid: dict[str, list[Any]]
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    preset_settings: dict[str, Any] = field(default_factory=dict, compare=False)
    """The settings ``sweep.preset`` resolved to (written into [data] / [analysis]; recorded per cell)."""
    preset_notes: tuple[str, ...] = field(default=(), compare=False)
    """What to print at the start: the preset and each key of the file that overrides it."""

    @property
    def analysis(self) -> str:
        return self.sweep.analysis

    @property
    def seed(self) -> int:
        return self.sweep.seed

    def to_dict(self, *, with_executor: bool = True) -> dict[str, Any]:
        """The config as the nested dict a TOML file would hold (``from_dict`` inverts it)."""
        out = {
            "sweep": as_dict(self.sweep),
            "model": as_dict(self.model),
            "data": as_dict(self.data),
            "analysis": as_dict(self.params),
            "grid": json.loads(json.dumps(self.grid)),
        }
        if with_executor:
            out["executor"] = as_dict(self.executor)
        return out

    def identity(self) -> dict[str, Any]:
        """What determines every cell's result besides the cell itself: model, data, analysis params, seed."""
        d = self.to_dict(with_executor=False)
        return {"analysis": self.analysis, "seed": self.seed, "model": d["model"], "data": d["data"],
                "params": d["analysis"]}

    def identity_hash(self) -> str:
        return _hash(self.identity())

    def with_executor(self, **changes: Any) -> SweepConfig:
        """A copy with some executor fields replaced (None values are ignored), validated."""
        ex = dataclasses.replace(self.executor, **{k: v for k, v in changes.items() if v is not None})
        _validate_executor(ex)
        return dataclasses.replace(self, executor=ex)

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


TOP_KEYS = ("sweep", "model", "data", "analysis", "grid", "executor")


def _validate_executor(ex: ExecutorConfig) -> None:
    choice("executor.kind", ex.kind, EXECUTORS)
    if ex.workers < 1:
        raise EmocircuitsError(f"Key 'executor.workers' has value {ex.workers}; allowed values: integers >= 1.")
    if ex.cpus_per_worker < 1:
        raise EmocircuitsError(f"Key 'executor.cpus_per_worker' has value {ex.cpus_per_worker}; allowed: integers >= 1.")
    if ex.gpus_per_worker < 0:
        raise EmocircuitsError(f"Key 'executor.gpus_per_worker' has value {ex.gpus_per_worker}; allowed: numbers >= 0.")




GRID_VALUE = int | float | str | bool | list[int]
"""What a free grid axis may hold: a scalar, or a list of integers (e.g. explicit layers)."""


def _grid_value(value: Any, key: str) -> Any:
    """A free axis value as TOML gave it (a float stays a float), or one sentence if it is not allowed."""
    scalar = isinstance(value, int | float | str | bool) and not (isinstance(value, float) and not math.isfinite(value))
    ints = isinstance(value, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
    if not (scalar or ints):
        raise EmocircuitsError(f"Key {key!r} has value {value!r}; expected {_type_name(GRID_VALUE)}.")
    return list(value) if ints else value


def _axis_name_ok(axis: str) -> bool:
    return axis.isidentifier() and axis == axis.lower()


def _parse_free_grid(analysis: Any, grid: Mapping[str, Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for axis, values in grid.items():
        if not _axis_name_ok(axis):
            raise EmocircuitsError(f"Grid axis 'grid.{axis}' is not a valid name; use lower-case letters, digits "
                                   "and underscores (it fills the placeholder {" + axis + "}).")
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise EmocircuitsError(f"Grid axis 'grid.{axis}' is empty; give at least one value.")
        coerced = [_grid_value(v, f"grid.{axis}") for v in values]
        dupes = [v for i, v in enumerate(coerced) if v in coerced[:i]]
        if dupes:
            raise EmocircuitsError(f"Grid axis 'grid.{axis}' repeats the value {dupes[0]!r}; list each value once.")
        out[axis] = coerced
    return out


def _parse_grid(analysis: Any, grid: Mapping[str, Any]) -> dict[str, list[Any]]:
    if analysis.free_axes:
        return _parse_free_grid(analysis, grid)
    cell_cls = analysis.Cell
    hints = typing.get_type_hints(cell_cls)
    names = [f.name for f in dataclasses.fields(cell_cls)]
    out: dict[str, list[Any]] = {}
    for axis, values in grid.items():
        if axis not in names:
            raise EmocircuitsError(f"Unknown grid axis 'grid.{axis}'; allowed axes for analysis "
                                   f"{analysis.name!r}: {', '.join(names)}.")
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise EmocircuitsError(f"Grid axis 'grid.{axis}' is empty; give at least one value.")
        coerced = [coerce(v, hints[axis], f"grid.{axis}") for v in values]
        dupes = [v for i, v in enumerate(coerced) if v in coerced[:i]]
        if dupes:
            raise EmocircuitsError(f"Grid axis 'grid.{axis}' repeats the value {dupes[0]!r}; list each value once.")
        out[axis] = coerced
    missing = [f.name for f in dataclasses.fields(cell_cls)
               if f.name not in out and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise EmocircuitsError(f"Missing grid axis 'grid.{missing[0]}'; analysis {analysis.name!r} needs "
                               f"values for: {', '.join(missing)}.")
    return out






# ----------------------------------------------------------------------------- a small TOML writer


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):  # an inline table (e.g. a template inside a list)
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def dumps_toml(data: Mapping[str, Mapping[str, Any]]) -> str:
    """Write a two-level dict (tables of scalars/lists; nested tables as ``[a.b]``) as TOML; None is omitted."""
    lines: list[str] = []

    def table(name: str, body: Mapping[str, Any]) -> None:
        lines.append(f"[{name}]")
        subs = []
        for k, v in body.items():
            if v is None:
                continue
            if isinstance(v, Mapping):
                subs.append((k, v))
            else:
                lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        lines.append("")
        for k, v in subs:
            table(f"{name}.{_toml_key(k)}", v)

    for name, body in data.items():
        table(name, body)
    return "\n".join(lines)


def expand_cells(cfg: SweepConfig, analysis: Any) -> list[Any]:
    """The cells of a config for ``analysis``: the Cartesian product of the grid axes in file order (last
    axis fastest)."""
    axes = list(cfg.grid)
    return [analysis.Cell(**dict(zip(axes, combo, strict=True)))
            for combo in itertools.product(*(cfg.grid[a] for a in axes))]
