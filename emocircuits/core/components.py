"""Value types naming model components and what analyses find about them.

``NeuronSet`` (MLP neurons), ``HeadSet`` (query heads), ``SublayerSet`` (whole attention/MLP sublayers),
``Direction`` (one named direction per site and layer) and ``Circuit`` (an emotion's neurons and heads
with their steering shifts) share one protocol:

* ``to_dict(store)`` → a JSON-able doc; tensors go into ``store`` (``{name: Tensor}``) and the doc
  names them, never inlines them; ``Cls.from_dict(doc, tensors)`` inverts it.
* ``save(path)`` writes ``path.json`` and ``path.safetensors`` beside it, each atomically;
  ``Cls.load(path)`` reads them back (``emocircuits.core.components.load(path)`` for whichever type).
* ``validate(spec)`` checks against a ``ModelSpec`` and raises one sentence naming the valid range.
* ``union(other)``, ``restrict(layers)``; ``intervention(component, kind, **kw)`` → the matching
  intervention value object (``Direction`` and ``Circuit`` also have it as a method).

JSON schema (``path.json``)::

    {"format": "emocircuits.component", "version": 1, "type": "Circuit", "tensors": "<name>.safetensors",
     ...fields of the type; a tensor appears as its name in the safetensors file}

``NeuronSet``: ``{"neurons": [[layer, index], ...]}``; ``HeadSet``: ``{"heads": [[layer, head], ...]}``;
``SublayerSet``: ``{"sublayers": [[layer, "attn" | "mlp"], ...]}``; ``Direction``: ``{"name", "provenance",
"vectors": {site: {layer: tensor name}}}``; ``Circuit``: ``{"emotion", "neurons": <NeuronSet doc>, "heads":
<HeadSet doc>, "neuron_shift": {layer: name}, "head_shift": {layer: name}, "scores": null | {"neurons" |
"heads": {layer: name}}, "provenance"}``.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emocircuits.base.constants import SUBLAYER_SITES
from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.interventions import (
    AddDirection,
    AddToHeads,
    AddToNeurons,
    Compose,
    ScaleHeads,
    ScaleNeurons,
    ScaleSite,
    ZeroHeads,
    ZeroNeurons,
)
from emocircuits.core.models import ModelSpec
from emocircuits.core.sites import SITES, site_info
from emocircuits.core.units import (
    Component,
    HeadSet,
    NeuronSet,
    Store,
    SublayerSet,
    _as_spec,
    _check_layers,
    _get_layers,
    _jsonable,
    _merged_provenance,
    _need_store,
    _put_layers,
    _same_tensors,
)


def load(path: str | Path) -> Any:
    """Read any component saved with ``save(path)``: NeuronSet, HeadSet, SublayerSet, Direction or Circuit."""
    return Component.load(path)


def from_dict(doc: Mapping[str, Any], tensors: Mapping[str, torch.Tensor] | None = None) -> Any:
    """Rebuild any component from its ``to_dict`` doc and tensor store."""
    return Component.from_dict(doc, tensors)


def _sum(items: list[Any]) -> Any:
    return functools.reduce(operator.add, items) if items else Compose(())


_SET_KINDS = {"zero": {"positions", "rows"}, "scale": {"factor", "positions", "rows"}}


def _check_kind(component: Any, kind: str, kw: Mapping[str, Any], kinds: Mapping[str, set[str]],
                required: tuple[str, ...] = ()) -> None:
    name = type(component).__name__
    if kind not in kinds:
        raise EmocircuitsError(f"Unknown intervention kind {kind!r} for a {name}; choose one of {sorted(kinds)}.")
    extra = sorted(set(kw) - kinds[kind])
    if extra:
        raise EmocircuitsError(f"Unknown option(s) {extra} for a {name}'s {kind!r} intervention; "
                               f"allowed options are {sorted(kinds[kind])}.")
    missing = [k for k in required if k not in kw]
    if missing:
        raise EmocircuitsError(f"A {name}'s {kind!r} intervention needs {', '.join(f'{k}=' for k in missing)}; "
                               "pass it as a keyword.")


def intervention(component: Any, kind: str, **kw: Any) -> Any:
    """The intervention value object of any component.

    ``NeuronSet`` / ``HeadSet``: ``"zero"`` → ZeroNeurons / ZeroHeads, ``"scale"`` (needs ``factor``) →
    ScaleNeurons / ScaleHeads; ``SublayerSet``: ``"zero"`` / ``"scale"`` → ScaleSite on ``attn.out`` and
    ``mlp.out``, composed; all three also take ``positions`` and ``rows``. ``Direction`` and ``Circuit``:
    their own ``.intervention(kind, ...)``.
    """
    if isinstance(component, (Direction, Circuit)):
        return component.intervention(kind, **kw)
    if not isinstance(component, (NeuronSet, HeadSet, SublayerSet)):
        raise EmocircuitsError(f"{type(component).__name__} is not a component; pass a NeuronSet, HeadSet, "
                               "SublayerSet, Direction or Circuit.")
    _check_kind(component, kind, kw, _SET_KINDS, ("factor",) if kind == "scale" else ())
    if isinstance(component, NeuronSet):
        return ZeroNeurons(component, **kw) if kind == "zero" else ScaleNeurons(component, **kw)
    if isinstance(component, HeadSet):
        return ZeroHeads(component, **kw) if kind == "zero" else ScaleHeads(component, **kw)
    factor = float(kw.pop("factor", 0.0))
    return _sum([ScaleSite(site=site, layers=component.layers(part), factor=factor, **kw)
                 for part, site in SUBLAYER_SITES.items() if component.layers(part)])


def _direction_site(site: str) -> str:
    info = site_info(site)
    ok = [s for s, i in SITES.items() if len(i.shape) == 3 and "{L}" in i.gated_hook]
    if info.name not in ok:
        raise EmocircuitsError(f"Site {info.name!r} holds no per-layer [batch, pos, width] vector; "
                               f"directions live at one of {ok}.")
    return info.name


@dataclass(frozen=True, eq=False)
class Direction(Component):
    """One named direction (e.g. an emotion) over sites and layers: ``vectors[site][layer]`` is ``[d_model]``.

    ``provenance`` is a JSON-able dict (model id, weights hash, method, data, counts...).
    """

    vectors: Mapping[str, Mapping[int, torch.Tensor]] = field(default_factory=dict)
    name: str = ""
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clean: dict[str, dict[int, torch.Tensor]] = {}
        for site, layers in self.vectors.items():
            key = _direction_site(site)
            for layer, vec in sorted(layers.items(), key=lambda kv: int(kv[0])):
                v = torch.as_tensor(vec).detach()
                if v.ndim != 1:
                    raise EmocircuitsError(f"Direction vector at {key} layer {layer} has shape {tuple(v.shape)}; "
                                           "give one 1-D [d_model] vector per site and layer.")
                clean.setdefault(key, {})[int(layer)] = v
        object.__setattr__(self, "vectors", dict(sorted(clean.items())))
        object.__setattr__(self, "name", str(self.name))
        object.__setattr__(self, "provenance", _jsonable(self.provenance, "Direction provenance"))

    def sites(self) -> list[str]:
        return list(self.vectors)

    def layers(self, site: str) -> list[int]:
        return list(self.vectors.get(_direction_site(site), {}))

    def vector(self, site: str, layer: int) -> torch.Tensor:
        """The ``[d_model]`` vector at ``site`` and ``layer``."""
        key = _direction_site(site)
        if layer not in self.vectors.get(key, {}):
            have = {s: list(v) for s, v in self.vectors.items()}
            raise EmocircuitsError(f"Direction {self.name!r} has no vector at {key} layer {layer}; it has {have}.")
        return self.vectors[key][layer]

    def unit(self) -> Direction:
        """A copy with every vector normalised to length 1."""
        vectors = {s: {layer: v / v.norm().clamp_min(1e-12) for layer, v in per.items()} for s, per in self.vectors.items()}
        return Direction(vectors, self.name, {**self.provenance, "unit": True})

    def cosine(self, other: Direction, site: str, layer: int) -> float:
        """Cosine similarity of this direction and ``other`` at ``site`` and ``layer`` (computed in float64)."""
        a, b = self.vector(site, layer).double(), other.vector(site, layer).double()
        if a.shape != b.shape:
            raise EmocircuitsError(f"Directions {self.name!r} and {other.name!r} have widths {a.shape[0]} and "
                                   f"{b.shape[0]} at {site} layer {layer}; compare directions of one model.")
        return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-24))

    def restrict(self, layers: Iterable[int]) -> Direction:
        keep = set(layers)
        vectors = {s: {layer: v for layer, v in per.items() if layer in keep} for s, per in self.vectors.items()}
        return Direction({s: per for s, per in vectors.items() if per}, self.name, self.provenance)

    def union(self, other: Direction) -> Direction:
        """Vectors of both (same name); a (site, layer) present in both must hold the same vector."""
        if self.name != other.name:
            raise EmocircuitsError(f"Cannot unite directions {self.name!r} and {other.name!r}; "
                                   "union joins the sites and layers of one direction.")
        merged = {s: dict(per) for s, per in self.vectors.items()}
        for s, per in other.vectors.items():
            for layer, v in per.items():
                old = merged.setdefault(s, {}).get(layer)
                if old is not None and not torch.equal(old, v):
                    raise EmocircuitsError(f"Directions {self.name!r} disagree at {s} layer {layer}; "
                                           "unite directions computed from the same data.")
                merged[s][layer] = v
        return Direction(merged, self.name, _merged_provenance(self.provenance, other.provenance))

    def validate(self, spec: ModelSpec | Any) -> Direction:
        """Check layers and vector widths (``d_model`` for residual sites) against a ``ModelSpec``."""
        s = _as_spec(spec)
        for site, per in self.vectors.items():
            dim = site_info(site).shape[-1]
            width = int(getattr(s, dim))
            _check_layers(per, s.n_layers, f"Direction {self.name!r} at {site}:")
            for layer, v in per.items():
                if v.shape[0] != width:
                    raise EmocircuitsError(f"Direction {self.name!r} at {site} layer {layer} has width {v.shape[0]}; "
                                           f"this model needs {dim} = {width}.")
        return self

    def to_dict(self, store: Store | None = None) -> dict[str, Any]:
        store = _need_store(store, "Direction")
        prefix = self.name or "direction"
        return {"type": "Direction", "name": self.name, "provenance": dict(self.provenance),
                "vectors": {s: _put_layers(store, f"{prefix}/{s}", per) for s, per in self.vectors.items()}}

    @classmethod
    def _from_doc(cls, doc: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Direction:
        vectors = {s: _get_layers(tensors, names) for s, names in doc.get("vectors", {}).items()}
        return cls(vectors, doc.get("name", ""), doc.get("provenance", {}))

    def _kinds(self) -> dict[str, set[str]]:
        return {"add": {"site", "layers", "scale", "positions", "rms_scaled", "unit", "rows"}}

    def intervention(self, kind: str = "add", **kw: Any) -> Any:
        """``"add"`` → AddDirection of this direction at ``site`` (default: the only site) and ``layers``
        (default: all of that site's), with ``scale``, ``positions``, ``rms_scaled``, ``unit``, ``rows``."""

        _check_kind(self, kind, kw, self._kinds())
        site = kw.pop("site", None)
        if site is None:
            if len(self.vectors) != 1:
                raise EmocircuitsError(f"Direction {self.name!r} has vectors at {self.sites()}; pass site=... to choose.")
            site = self.sites()[0]
        site = _direction_site(site)
        layers = tuple(int(x) for x in kw.pop("layers", None) or self.layers(site))
        return AddDirection(direction={layer: self.vector(site, layer) for layer in layers}, site=site,
                            layers=layers, **kw)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Direction) and self.name == other.name and self.provenance == other.provenance
                and self.vectors.keys() == other.vectors.keys()
                and all(_same_tensors(self.vectors[s], other.vectors[s]) for s in self.vectors))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        where = ", ".join(f"{s}: {len(per)} layers" for s, per in self.vectors.items())
        width = next((v.shape[0] for per in self.vectors.values() for v in per.values()), 0)
        return f"Direction({self.name!r}, {where or 'empty'}, width={width})"


def _aligned(what: str, values: Mapping[int, Any], index: Mapping[int, tuple[int, ...]], ndim: int
             ) -> dict[int, torch.Tensor]:
    """Per-layer tensors whose first dim follows ``index[layer]`` (sorted components); ``{}`` = none given."""
    out = {int(k): torch.as_tensor(v).detach() for k, v in values.items()}
    if out and set(out) != set(index):
        raise EmocircuitsError(f"{what} has layers {sorted(out)} but the components sit in layers {sorted(index)}; "
                               "give one tensor per component layer (or none at all).")
    for layer, t in out.items():
        k = len(index[layer])
        if t.ndim != ndim or t.shape[0] != k:
            want = f"[{k}]" if ndim == 1 else f"[{k}, d_head]"
            raise EmocircuitsError(f"{what}[{layer}] has shape {list(t.shape)}; it needs {want}, one row per "
                                   f"component of layer {layer} in sorted index order.")
    return dict(sorted(out.items()))


def _merge_aligned(what: str, a: Mapping[int, torch.Tensor], ia: Mapping[int, tuple[int, ...]],
                   b: Mapping[int, torch.Tensor], ib: Mapping[int, tuple[int, ...]],
                   out: Mapping[int, tuple[int, ...]]) -> dict[int, torch.Tensor]:
    """Merge two aligned per-layer tensors onto the index ``out``; ``{}`` unless both sides have them."""
    if not ((a or not ia) and (b or not ib)):
        return {}
    items = {(layer, i): a[layer][j] for layer, idx in ia.items() for j, i in enumerate(idx)}
    for layer, idx in ib.items():
        for j, i in enumerate(idx):
            old = items.setdefault((layer, i), b[layer][j])
            if not torch.equal(old, b[layer][j]):
                raise EmocircuitsError(f"The circuits disagree on the {what} of component ({layer}, {i}); "
                                       "unite circuits computed from the same data.")
    return {layer: torch.stack([items[(layer, i)] for i in idx]) for layer, idx in out.items()}


_SCORE_KEYS = ("neurons", "heads")


@dataclass(frozen=True, eq=False)
class Circuit(Component):
    """An emotion's circuit: neurons and query heads, with the shifts that steer them.

    ``neuron_shift[layer]`` is ``[k_layer]`` (aligned with the layer's sorted neuron indices),
    ``head_shift[layer]`` is ``[h_layer, d_head]`` (aligned with the layer's sorted heads); both may be
    empty (a circuit to ablate, not to steer). ``scores`` optionally holds ``{"neurons": {layer: [k_layer]},
    "heads": {layer: [h_layer]}}`` aligned the same way; ``provenance`` is a JSON-able dict.
    """

    emotion: str
    neurons: NeuronSet = field(default_factory=NeuronSet)
    heads: HeadSet = field(default_factory=HeadSet)
    neuron_shift: Mapping[int, torch.Tensor] = field(default_factory=dict)
    head_shift: Mapping[int, torch.Tensor] = field(default_factory=dict)
    scores: Mapping[str, Mapping[int, torch.Tensor]] | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        neurons = self.neurons if isinstance(self.neurons, NeuronSet) else NeuronSet(dict(self.neurons))
        heads = self.heads if isinstance(self.heads, HeadSet) else HeadSet(tuple(self.heads))
        index = {"neurons": neurons.layers, "heads": heads.by_layer()}
        set_ = object.__setattr__
        set_(self, "emotion", str(self.emotion))
        set_(self, "neurons", neurons)
        set_(self, "heads", heads)
        set_(self, "neuron_shift", _aligned("neuron_shift", self.neuron_shift, index["neurons"], 1))
        set_(self, "head_shift", _aligned("head_shift", self.head_shift, index["heads"], 2))
        if self.scores is not None:
            unknown = sorted(set(self.scores) - set(_SCORE_KEYS))
            if unknown:
                raise EmocircuitsError(f"Unknown score groups {unknown}; circuit scores are keyed by {list(_SCORE_KEYS)}.")
            set_(self, "scores", {k: _aligned(f"scores[{k!r}]", self.scores[k], index[k], 1)
                                  for k in _SCORE_KEYS if k in self.scores})
        set_(self, "provenance", _jsonable(self.provenance, "Circuit provenance"))

    @property
    def steerable(self) -> bool:
        """True when every component has a shift (so ``intervention("steer")`` works)."""
        return (bool(self.neuron_shift) or not self.neurons) and (bool(self.head_shift) or not self.heads)

    def layers(self) -> list[int]:
        """Layers holding any neuron or head of the circuit."""
        return sorted(set(self.neurons.layers) | set(self.heads.by_layer()))

    def validate(self, spec: ModelSpec | Any) -> Circuit:
        """Check layers, neuron and head indices, and the head shifts' width ``d_head`` against a ``ModelSpec``."""
        s = _as_spec(spec)
        self.neurons.validate(s)
        self.heads.validate(s)
        for layer, t in self.head_shift.items():
            if t.shape[1] != s.d_head:
                raise EmocircuitsError(f"head_shift[{layer}] has width {t.shape[1]}; this model's heads have "
                                       f"d_head = {s.d_head}.")
        return self

    def restrict(self, layers: Iterable[int]) -> Circuit:
        keep = set(layers)

        def sub(values: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
            return {layer: v for layer, v in values.items() if layer in keep}

        scores = None if self.scores is None else {k: sub(v) for k, v in self.scores.items()}
        return Circuit(self.emotion, self.neurons.restrict(keep), self.heads.restrict(keep), sub(self.neuron_shift),
                       sub(self.head_shift), scores, self.provenance)

    def union(self, other: Circuit) -> Circuit:
        """Components of both circuits of one emotion; shared components must agree on shifts and scores."""
        if self.emotion != other.emotion:
            raise EmocircuitsError(f"Cannot unite circuits of {self.emotion!r} and {other.emotion!r}; "
                                   "union joins circuits of one emotion.")
        neurons, heads = self.neurons.union(other.neurons), self.heads.union(other.heads)
        index = {"neurons": (self.neurons.layers, other.neurons.layers, neurons.layers),
                 "heads": (self.heads.by_layer(), other.heads.by_layer(), heads.by_layer())}
        ia, ib, io = index["neurons"]
        neuron_shift = _merge_aligned("neuron shift", self.neuron_shift, ia, other.neuron_shift, ib, io)
        ha, hb, ho = index["heads"]
        head_shift = _merge_aligned("head shift", self.head_shift, ha, other.head_shift, hb, ho)
        scores = None
        if self.scores is not None and other.scores is not None:
            scores = {k: _merge_aligned(f"{k} score", self.scores[k], index[k][0], other.scores[k], index[k][1],
                                        index[k][2])
                      for k in _SCORE_KEYS if k in self.scores and k in other.scores}
        return Circuit(self.emotion, neurons, heads, neuron_shift, head_shift, scores,
                       _merged_provenance(self.provenance, other.provenance))

    def to_dict(self, store: Store | None = None) -> dict[str, Any]:
        store = _need_store(store, "Circuit")
        prefix = self.emotion or "circuit"
        scores = None if self.scores is None else {
            k: _put_layers(store, f"{prefix}/scores/{k}", v) for k, v in self.scores.items()}
        return {"type": "Circuit", "emotion": self.emotion, "neurons": self.neurons.to_dict(),
                "heads": self.heads.to_dict(),
                "neuron_shift": _put_layers(store, f"{prefix}/neuron_shift", self.neuron_shift),
                "head_shift": _put_layers(store, f"{prefix}/head_shift", self.head_shift),
                "scores": scores, "provenance": dict(self.provenance)}

    @classmethod
    def _from_doc(cls, doc: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Circuit:
        scores = doc.get("scores")
        return cls(doc["emotion"], NeuronSet.from_dict(doc.get("neurons", {"type": "NeuronSet"})),
                   HeadSet.from_dict(doc.get("heads", {"type": "HeadSet"})),
                   _get_layers(tensors, doc.get("neuron_shift", {})), _get_layers(tensors, doc.get("head_shift", {})),
                   None if scores is None else {k: _get_layers(tensors, v) for k, v in scores.items()},
                   doc.get("provenance", {}))

    def _kinds(self) -> dict[str, set[str]]:
        return {"zero": {"positions", "rows"}, "scale": {"factor", "positions", "rows"},
                "steer": {"scale", "neuron_positions", "head_positions", "rows"}}

    def intervention(self, kind: str, **kw: Any) -> Any:
        """``"zero"`` / ``"scale"`` (needs ``factor``): its neurons and heads; ``"steer"``: add ``scale·Δμ``
        (default 1) to the neurons at ``neuron_positions`` (default ``"last"``) and the heads at
        ``head_positions`` (default ``"all"``). Returns ``neurons_part + heads_part``."""

        _check_kind(self, kind, kw, self._kinds(), ("factor",) if kind == "scale" else ())
        if kind != "steer":
            return intervention(self.neurons, kind, **kw) + intervention(self.heads, kind, **kw)
        if not self.steerable:
            raise EmocircuitsError(f"Circuit {self.emotion!r} has no shift vectors to steer with; build it with "
                                   "neuron_shift and head_shift (the mean activation differences Δμ).")
        scale, rows = float(kw.get("scale", 1.0)), kw.get("rows")
        return (AddToNeurons(self.neurons, self.neuron_shift, scale, kw.get("neuron_positions", "last"), rows)
                + AddToHeads(self.heads, self.head_shift, scale, kw.get("head_positions", "all"), rows))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Circuit):
            return False
        same_scores = (self.scores is None) == (other.scores is None) and (
            self.scores is None or (self.scores.keys() == other.scores.keys()  # type: ignore[union-attr]
                                    and all(_same_tensors(self.scores[k], other.scores[k])  # type: ignore[index]
                                            for k in self.scores)))
        return (self.emotion == other.emotion and self.neurons == other.neurons and self.heads == other.heads
                and _same_tensors(self.neuron_shift, other.neuron_shift)
                and _same_tensors(self.head_shift, other.head_shift) and same_scores
                and self.provenance == other.provenance)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Circuit({self.emotion!r}, {len(self.neurons)} neurons + {len(self.heads)} heads over "
                f"{len(self.layers())} layers, steerable={self.steerable})")
