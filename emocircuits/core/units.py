"""Model parts as value objects: NeuronSet, HeadSet, SublayerSet, and the save format every component shares (a JSON header with a safetensors file beside it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from emocircuits.base.constants import SUBLAYER_SITES
from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.io import write_json, write_tensors
from emocircuits.core.models import ModelSpec, spec_of

FORMAT = "emocircuits.component"


VERSION = 1


Store = dict[str, torch.Tensor]


_TYPES: dict[str, type[Component]] = {}


class Component:
    """Save/load shared by the component types; subclasses define ``to_dict`` and ``_from_doc``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _TYPES[cls.__name__] = cls

    def to_dict(self, store: Store | None = None) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _from_doc(cls, doc: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Component:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], tensors: Mapping[str, torch.Tensor] | None = None) -> Any:
        """Rebuild from ``to_dict``'s doc and its tensor store (any type when called on ``Component``)."""
        kind = doc.get("type")
        if kind not in _TYPES:
            raise EmocircuitsError(f"Unknown component type {kind!r}; known types are {sorted(_TYPES)}.")
        if cls is not Component and kind != cls.__name__:
            raise EmocircuitsError(f"This document holds a {kind}, not a {cls.__name__}; "
                                   f"read it with {kind}.from_dict or emocircuits.core.components.load.")
        return _TYPES[kind]._from_doc(doc, tensors or {})

    def save(self, path: str | Path) -> Path:
        """Write ``path.json`` and ``path.safetensors`` (atomically, tensors first); returns the JSON path."""
        store: Store = {}
        return write_value(path, type(self).__name__, self.to_dict(store), store)

    @classmethod
    def load(cls, path: str | Path) -> Any:
        """Read what ``save(path)`` wrote (``path`` with or without the ``.json`` suffix)."""
        return cls.from_dict(*read_value(path, "component"))


def write_value(path: str | Path, type_name: str, doc: Mapping[str, Any], store: Store) -> Path:
    """The one save format of value objects (components and interventions): ``path.json`` (the doc, where each
    tensor is a name) beside ``path.safetensors`` (the tensors), each written atomically, tensors first."""
    json_path, tensor_path = _paths(path)
    write_tensors(tensor_path, store, metadata={"format": FORMAT, "type": type_name})
    write_json(json_path, {"format": FORMAT, "version": VERSION, **doc, "tensors": tensor_path.name})
    return json_path


def read_value(path: str | Path, what: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(doc, tensors)`` of a file :func:`write_value` wrote; one sentence when it is missing or not ours."""
    json_path, tensor_path = _paths(path)
    if not json_path.exists():
        raise EmocircuitsError(f"No {what} file at {json_path}; write one with .save(path) first.")
    try:
        doc = json.loads(json_path.read_text())
    except json.JSONDecodeError as exc:
        raise EmocircuitsError(f"{json_path} line {exc.lineno} is not valid JSON; save the {what} again.") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise EmocircuitsError(f"{json_path} is not an emocircuits {what} file (format {FORMAT} "
                               f"version {VERSION}); save the {what} again.")
    tensors: dict[str, torch.Tensor] = load_file(str(tensor_path)) if tensor_path.exists() else {}
    return doc, tensors


def _paths(path: str | Path) -> tuple[Path, Path]:
    base = Path(path)
    if base.suffix in (".json", ".safetensors"):
        base = base.with_suffix("")
    return base.parent / f"{base.name}.json", base.parent / f"{base.name}.safetensors"


def _as_spec(spec: Any) -> ModelSpec:
    return spec if isinstance(spec, ModelSpec) else spec_of(spec)


def _need_store(store: Store | None, owner: str) -> Store:
    if store is None:
        raise EmocircuitsError(f"{owner}.to_dict needs a tensor store: pass a dict and keep it beside the JSON "
                               "(or use .save(path)).")
    return store


def _put(store: Store, name: str, tensor: torch.Tensor) -> str:
    """Put a copy of ``tensor`` into ``store`` under a free key starting with ``name``; returns the key."""
    key, n = name, 1
    while key in store:
        key, n = f"{name}#{n}", n + 1
    store[key] = tensor.detach().cpu().clone().contiguous()  # clone: safetensors refuses shared storage
    return key


def _get(tensors: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in tensors:
        raise EmocircuitsError(f"Tensor {key!r} named in the JSON is missing from the tensor store; "
                               "the .json/.safetensors pair is incomplete, save the component again.")
    return tensors[key]


def _put_layers(store: Store, prefix: str, values: Mapping[int, torch.Tensor]) -> dict[str, str]:
    return {str(layer): _put(store, f"{prefix}/{layer}", t) for layer, t in values.items()}


def _get_layers(tensors: Mapping[str, torch.Tensor], names: Mapping[str, str]) -> dict[int, torch.Tensor]:
    return {int(layer): _get(tensors, key) for layer, key in names.items()}


def _jsonable(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(value or {})))
    except (TypeError, ValueError):
        raise EmocircuitsError(f"{what} must be JSON-able (strings, numbers, lists, dicts); "
                               "store tensors elsewhere and record their names.") from None


def _merged_provenance(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    return dict(a) if a == b else {"union": [dict(a), dict(b)]}


def _same_tensors(a: Mapping[Any, torch.Tensor], b: Mapping[Any, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _check_layers(layers: Iterable[int], n_layers: int, what: str) -> None:
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise EmocircuitsError(f"{what} layer {layer} is out of range; this model has layers 0..{n_layers - 1}.")


@dataclass(frozen=True)
class NeuronSet(Component):
    """MLP neurons as ``{layer: sorted unique neuron indices}``; hashable, printable, JSON-able."""

    layers: Mapping[int, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clean = {int(k): tuple(sorted({int(i) for i in v})) for k, v in self.layers.items() if len(v)}
        object.__setattr__(self, "layers", dict(sorted(clean.items())))

    @classmethod
    def from_pairs(cls, pairs: Iterable[Iterable[int]]) -> NeuronSet:
        out: dict[int, list[int]] = {}
        for pair in pairs:
            layer, index = (int(x) for x in pair)
            out.setdefault(layer, []).append(index)
        return cls(out)

    def pairs(self) -> list[list[int]]:
        """``[[layer, index], ...]`` in (layer, index) order: the schema of ``neurons.json``."""
        return [[layer, i] for layer, idx in self.layers.items() for i in idx]

    def __len__(self) -> int:
        return sum(len(v) for v in self.layers.values())

    def __hash__(self) -> int:
        return hash(tuple((k, v) for k, v in self.layers.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NeuronSet) and dict(self.layers) == dict(other.layers)

    def counts(self, n_layers: int | None = None) -> list[int]:
        """Neurons per layer, ``[n_layers]`` (up to the highest layer present when n_layers is None)."""
        n = n_layers if n_layers is not None else (max(self.layers) + 1 if self.layers else 0)
        return [len(self.layers.get(layer, ())) for layer in range(n)]

    def restrict(self, layers: Iterable[int]) -> NeuronSet:
        keep = set(layers)
        return NeuronSet({k: v for k, v in self.layers.items() if k in keep})

    def union(self, other: NeuronSet) -> NeuronSet:
        merged = {k: set(v) for k, v in self.layers.items()}
        for k, v in other.layers.items():
            merged.setdefault(k, set()).update(v)
        return NeuronSet({k: tuple(v) for k, v in merged.items()})

    def intersection(self, other: NeuronSet) -> NeuronSet:
        return NeuronSet({k: tuple(set(v) & set(other.layers.get(k, ()))) for k, v in self.layers.items()})

    def validate(self, spec: ModelSpec | Any, d_mlp: int | None = None) -> NeuronSet:
        """Check layers and indices against a ``ModelSpec`` (or the old form ``validate(n_layers, d_mlp)``)."""
        if isinstance(spec, int):
            n_layers, width = spec, int(d_mlp)  # type: ignore[arg-type]
        else:
            s = _as_spec(spec)
            n_layers, width = s.n_layers, s.d_mlp
        for layer, idx in self.layers.items():
            _check_layers([layer], n_layers, "Neuron")
            if idx and not (0 <= idx[0] and idx[-1] < width):
                bad = idx[-1] if idx[-1] >= width else idx[0]
                raise EmocircuitsError(
                    f"Neuron index {bad} in layer {layer} is out of range; this model has neurons 0..{width - 1}."
                )
        return self

    def to_dict(self, store: Store | None = None) -> dict[str, Any]:
        return {"type": "NeuronSet", "neurons": self.pairs()}

    @classmethod
    def _from_doc(cls, doc: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> NeuronSet:
        return cls.from_pairs(doc.get("neurons", []))

    def __repr__(self) -> str:
        return f"NeuronSet({len(self)} neurons over {len(self.layers)} layers)"


@dataclass(frozen=True)
class HeadSet(Component):
    """Attention (query) heads as sorted unique ``(layer, head)`` pairs."""

    heads: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(sorted({(int(a), int(b)) for a, b in self.heads})))

    def by_layer(self) -> dict[int, tuple[int, ...]]:
        out: dict[int, list[int]] = {}
        for layer, head in self.heads:
            out.setdefault(layer, []).append(head)
        return {k: tuple(v) for k, v in out.items()}

    def __len__(self) -> int:
        return len(self.heads)

    def restrict(self, layers: Iterable[int]) -> HeadSet:
        keep = set(layers)
        return HeadSet(tuple(h for h in self.heads if h[0] in keep))

    def union(self, other: HeadSet) -> HeadSet:
        return HeadSet(self.heads + other.heads)

    def validate(self, spec: ModelSpec | Any, n_heads: int | None = None) -> HeadSet:
        """Check layers and query-head indices against a ``ModelSpec`` (or ``validate(n_layers, n_heads)``)."""
        if isinstance(spec, int):
            n_layers, width = spec, int(n_heads)  # type: ignore[arg-type]
        else:
            s = _as_spec(spec)
            n_layers, width = s.n_layers, s.n_heads
        for layer, head in self.heads:
            _check_layers([layer], n_layers, "Head")
            if not 0 <= head < width:
                raise EmocircuitsError(
                    f"Head index {head} in layer {layer} is out of range; this model has query heads 0..{width - 1}."
                )
        return self

    def to_dict(self, store: Store | None = None) -> dict[str, Any]:
        return {"type": "HeadSet", "heads": [list(h) for h in self.heads]}

    @classmethod
    def _from_doc(cls, doc: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> HeadSet:
        return cls(tuple(tuple(h) for h in doc.get("heads", [])))

    def __repr__(self) -> str:
        return f"HeadSet({len(self)} heads over {len(self.by_layer())} layers)"




@dataclass(frozen=True)
class SublayerSet(Component):
    """Whole sublayers as sorted unique ``(layer, "attn" | "mlp")`` pairs (written at ``attn.out`` / ``mlp.out``)."""

    sublayers: tuple[tuple[int, str], ...] = ()

    def __post_init__(self) -> None:
        clean = {(int(layer), str(kind)) for layer, kind in self.sublayers}
        for layer, kind in sorted(clean):
            if kind not in SUBLAYER_SITES:
                raise EmocircuitsError(f"Unknown sublayer kind {kind!r} at layer {layer}; use 'attn' or 'mlp'.")
        object.__setattr__(self, "sublayers", tuple(sorted(clean)))

    def layers(self, kind: str) -> tuple[int, ...]:
        """Layers whose ``kind`` sublayer is in the set."""
        return tuple(layer for layer, k in self.sublayers if k == kind)

    def __len__(self) -> int:
        return len(self.sublayers)

    def restrict(self, layers: Iterable[int]) -> SublayerSet:
        keep = set(layers)
        return SublayerSet(tuple(s for s in self.sublayers if s[0] in keep))

    def union(self, other: SublayerSet) -> SublayerSet:
        return SublayerSet(self.sublayers + other.sublayers)

    def validate(self, spec: ModelSpec | Any) -> SublayerSet:
        _check_layers([layer for layer, _ in self.sublayers], _as_spec(spec).n_layers, "Sublayer")
        return self

    def to_dict(self, store: Store | None = None) -> dict[str, Any]:
        return {"type": "SublayerSet", "sublayers": [list(s) for s in self.sublayers]}

    @classmethod
    def _from_doc(cls, doc: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> SublayerSet:
        return cls(tuple(tuple(s) for s in doc.get("sublayers", [])))

    def __repr__(self) -> str:
        return f"SublayerSet(attn={list(self.layers('attn'))}, mlp={list(self.layers('mlp'))})"
