"""Interventions: small value objects that read or write sites through hooks.

This is the only module that registers hooks. An intervention is data — print it, compare it, save it
with ``to_dict`` — and ``apply(model)`` is a context manager that attaches its hooks and always removes
them on exit, exceptions included. ``a + b`` composes.

Positions are absolute token positions of each row's own sequence: ``"all"``, ``"last"`` (each row's last
token; while generating, the prompt's last token and then every new token), ``"prompt"``,
``"prompt_last"``, ``"generated"``, or a tuple of integers (negative = counted back from each row's last
token). They stay right however the runner batches, pads or shares a prompt prefix: the runner sets a
:class:`BatchInfo` for every forward pass (``batch_context``). ``rows`` restricts a write to some examples
of a pass (their index in the list the runner was given).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.models import spec_of
from emocircuits.core.sites import SITES, hook_name, neuron_write_site, reading_fn, site_info
from emocircuits.core.units import HeadSet, NeuronSet, Store, _get, _put, read_value, write_value

Positions = str | tuple[int, ...]


HookFn = Callable[[torch.Tensor], torch.Tensor | None]


POSITION_NAMES = ("all", "last", "prompt", "prompt_last", "generated")


"""Named positions. ``all``: every position. ``last``: each row's last token so far (the prompt's last
token, then every generated token while decoding). ``prompt``: every prompt token. ``prompt_last``: the
prompt's last token only. ``generated``: every generated token (none outside generation)."""


class PrefixUnsafe(Exception):
    """Raised by a write whose effect on the shared prefix differs between rows; the runner then runs
    that pass without sharing the prefix. Never reaches users."""


@dataclass(frozen=True)
class BatchInfo:
    """Where the columns of the current forward pass sit in each row's sequence (set by the runner).

    ``abs_pos [b, n]``: absolute token position of every column (``[1, n]`` broadcasts);
    ``prompt_len [b]``: prompt tokens per row; ``seq_len [b]``: tokens so far per row (prompt plus
    generated, this forward included); ``rows [b]``: each row's index in the pass (what ``rows=`` and
    per-example patch sources refer to); ``keys [b]``: a stable key of each row's prompt (seeds
    per-row noise); ``shared``: this forward is the shared-prefix pass, one physical row standing for
    all ``b`` rows; ``generating``: positions past the prompt are generated tokens, not errors.
    """

    abs_pos: torch.Tensor
    prompt_len: torch.Tensor
    seq_len: torch.Tensor
    rows: torch.Tensor
    keys: torch.Tensor
    shared: bool = False
    generating: bool = False

    @property
    def n_rows(self) -> int:
        return int(self.prompt_len.shape[0])

    def last_column(self) -> torch.Tensor:
        """``[b]`` column of each row's last token in this forward (may be out of range when absent)."""
        return self.seq_len - 1 - self.abs_pos[:, 0].expand(self.n_rows)


_BATCH: contextvars.ContextVar[BatchInfo | None] = contextvars.ContextVar("emocircuits_batch", default=None)


def plain_batch(last_index: torch.Tensor, n_pos: int | None = None) -> BatchInfo:
    """The batch info of a right-padded batch run from position 0: ``last_index [b]`` (``n_pos`` None:
    whatever length the forward pass has)."""
    last = torch.as_tensor(last_index, dtype=torch.long)
    b = last.shape[0]
    cols = torch.arange(n_pos if n_pos is not None else 0)[None, :]
    return BatchInfo(cols, last + 1, last + 1, torch.arange(b), torch.zeros(b, dtype=torch.long))


@contextlib.contextmanager
def batch_context(info: BatchInfo | torch.Tensor, n_pos: int | None = None) -> Iterator[BatchInfo]:
    """Tell position-aware hooks where each row's tokens are, for the forward passes inside the block.

    Takes a :class:`BatchInfo` (what the runner sets) or, for a hand-run right-padded batch,
    ``last_index [b]`` together with the padded length ``n_pos``.
    """
    if not isinstance(info, BatchInfo):
        info = plain_batch(info, n_pos)
    token = _BATCH.set(info)
    try:
        yield info
    finally:
        _BATCH.reset(token)


def current_batch() -> BatchInfo | None:
    """The batch info of the forward pass running now (None outside the runner)."""
    return _BATCH.get()


def _info(batch: int, n_pos: int) -> BatchInfo:
    info = _BATCH.get()
    if info is None:  # a bare forward: rows unpadded, starting at position 0
        full = torch.full((batch,), n_pos, dtype=torch.long)
        return BatchInfo(torch.arange(n_pos)[None, :], full, full, torch.arange(batch), torch.zeros(batch, dtype=torch.long))
    if info.abs_pos.shape[1] == 0 and n_pos:  # a hand-made context that did not fix the length
        info = dataclasses.replace(info, abs_pos=torch.arange(n_pos)[None, :])
    physical = 1 if info.shared else info.n_rows
    if physical != batch or info.abs_pos.shape[1] != n_pos:
        raise EmocircuitsError(
            f"The batch context describes {physical} rows x {info.abs_pos.shape[1]} positions but the forward pass "
            f"has {batch} x {n_pos}; run batches through emocircuits.core.runner so the context matches."
        )
    return info


def _check_explicit(positions: tuple[int, ...], info: BatchInfo) -> None:
    shortest = int(info.prompt_len.min())
    for p in positions:
        if p >= shortest or p < -shortest:
            raise EmocircuitsError(
                f"Position {p} is outside a prompt of {shortest} tokens; valid positions are 0..{shortest - 1} "
                f"or -{shortest}..-1 (counted back from the last token)."
            )


def position_mask(positions: Positions, batch: int, n_pos: int, device: torch.device,
                  rows: Sequence[int] | None = None, *, row_dependent: bool = False) -> torch.Tensor | None:
    """Bool ``[batch, pos]`` of where a write applies in the current forward, or None for everywhere.

    Positions are absolute in each row's sequence, whatever prefix the runner shares or pads it adds.
    In the shared-prefix pass the mask of every row must agree (and ``row_dependent`` writes, whose
    values differ per row, must not touch the prefix); otherwise :class:`PrefixUnsafe` is raised.
    """
    if positions == "all" and rows is None and not row_dependent:
        return None
    info = _info(batch, n_pos)
    pos = info.abs_pos.to(device)
    seq = info.seq_len.to(device)[:, None]
    prompt = info.prompt_len.to(device)[:, None]
    if positions == "all":
        mask = pos < seq
    elif positions == "last":  # while generating (or teacher-forcing a continuation): the prompt's last token on
        mask = (pos >= prompt - 1) & (pos < seq) if info.generating else pos == seq - 1
    elif positions == "prompt":
        mask = pos < prompt
    elif positions == "prompt_last":
        mask = pos == prompt - 1
    elif positions == "generated":
        mask = (pos >= prompt) & (pos < seq)
    else:
        if not info.generating and not info.shared:
            _check_explicit(positions, info)
        mask = torch.zeros(torch.broadcast_shapes(pos.shape, seq.shape), dtype=torch.bool, device=device)
        for p in positions:
            mask |= pos == (p if p >= 0 else seq + p)
    mask = mask.expand(info.n_rows, pos.shape[1])
    if rows is not None:
        keep = torch.isin(info.rows.to(device), torch.as_tensor(list(rows), dtype=torch.long, device=device))
        mask = mask & keep[:, None]
    if info.shared:
        if not mask.any():
            return mask[:1].clone()
        if row_dependent or not bool((mask == mask[:1]).all()):
            raise PrefixUnsafe
        return mask[:1].clone()
    return mask


def first_changed(positions: Positions, rows: Sequence[int] | None, info: BatchInfo) -> torch.Tensor:
    """``[b]`` the first absolute position of each row that a write at ``positions`` (restricted to ``rows``)
    can change in a pass described by ``info``; a row it never touches gets its length. Everything before
    it is the clean computation, so the runner may reuse clean keys/values there."""
    seq, prompt = info.seq_len.long(), info.prompt_len.long()
    if positions in ("all", "prompt"):
        first = torch.zeros_like(seq)
    elif positions == "last":
        first = prompt - 1 if info.generating else seq - 1
    elif positions == "prompt_last":
        first = prompt - 1
    elif positions == "generated":
        first = prompt.clone()
    else:
        first = torch.stack([torch.full_like(seq, p) if p >= 0 else seq + p for p in positions]).min(0).values
    first = first.clamp(min=0)
    if rows is not None:
        keep = torch.isin(info.rows, torch.as_tensor(list(rows), dtype=torch.long))
        first = torch.where(keep, first, seq)
    return first


def _check_positions(positions: Any) -> Positions:
    if positions in POSITION_NAMES:
        return positions
    if isinstance(positions, int):
        return (positions,)
    try:
        return tuple(int(p) for p in positions)
    except (TypeError, ValueError):
        raise EmocircuitsError(
            f"Invalid positions {positions!r}; use one of {', '.join(POSITION_NAMES)}, or a list of integer positions."
        ) from None


_REGISTRY: dict[str, type[Intervention]] = {}


@dataclass(frozen=True, eq=False)
class Intervention:
    """Base class: subclasses return ``(hook_name, fn)`` pairs from ``hooks(model)``."""

    kind: ClassVar[str] = "intervention"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def hooks(self, model: Any) -> list[tuple[str, HookFn]]:
        raise NotImplementedError

    def first_position(self, info: BatchInfo) -> torch.Tensor | None:
        """``[b]`` the first position of each row this intervention may change (:func:`first_changed`), or
        None when that is not known (the runner then computes every position)."""
        positions = getattr(self, "positions", None)
        if positions is None:
            return None
        return first_changed(positions, getattr(self, "rows", None), info)

    @contextlib.contextmanager
    def apply(self, model: Any) -> Iterator[Intervention]:
        """Attach the hooks for the duration of the block; they are removed even on exceptions."""
        pairs = self.hooks(model)  # validates before anything is attached
        with attached(model, [(name, _wrap(fn)) for name, fn in pairs], first=self.first_position):
            yield self

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_dict() == other.to_dict()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __add__(self, other: Intervention) -> Compose:
        left = self.items if isinstance(self, Compose) else (self,)
        right = other.items if isinstance(other, Compose) else (other,)
        return Compose(tuple(left) + tuple(right))

    def to_dict(self, store: Store | None = None) -> dict[str, Any]:
        """A JSON-able doc; tensors go into ``store`` (``{name: Tensor}``) and the doc names them, or, without
        a store, are written inline as nested lists."""
        out: dict[str, Any] = {"type": type(self).__name__}
        for f in fields(self):
            out[f.name] = _encode(getattr(self, f.name), store, f.name)
        return out

    @staticmethod
    def from_dict(data: Mapping[str, Any], tensors: Mapping[str, torch.Tensor] | None = None) -> Intervention:
        data = {k: v for k, v in data.items() if k not in ("format", "version", "tensors")}
        name = data.pop("type", None)
        if name not in _REGISTRY:
            raise EmocircuitsError(f"Unknown intervention type {name!r}; known types are {sorted(_REGISTRY)}.")
        cls = _REGISTRY[name]
        return cls(**{k: _decode(v, tensors or {}) for k, v in data.items()})

    def save(self, path: str | Path) -> Path:
        """Write ``path.json`` and ``path.safetensors``, the same format components use; returns the JSON path."""
        store: Store = {}
        return write_value(path, type(self).__name__, self.to_dict(store), store)

    @staticmethod
    def load(path: str | Path) -> Intervention:
        """Read what ``save(path)`` wrote."""
        return Intervention.from_dict(*read_value(path, "intervention"))


def _wrap(fn: HookFn) -> Callable[..., torch.Tensor | None]:
    def hook(x: torch.Tensor, hook: Any = None) -> torch.Tensor | None:
        return fn(x)

    return hook


def _encode(value: Any, store: Store | None, name: str) -> Any:
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        if store is None:
            return {"__tensor__": value.detach().cpu().tolist(), "dtype": dtype}
        return {"__tensor__": _put(store, name, value), "dtype": dtype}
    if isinstance(value, NeuronSet):
        return {"__neurons__": value.pairs()}
    if isinstance(value, HeadSet):
        return {"__heads__": [list(h) for h in value.heads]}
    if isinstance(value, Intervention):
        return value.to_dict(store)
    if isinstance(value, tuple | list):
        return [_encode(v, store, f"{name}.{i}") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _encode(v, store, f"{name}.{k}") for k, v in value.items()}
    return value


def _decode(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, Mapping):
        if "__tensor__" in value:
            if isinstance(value["__tensor__"], str):  # a name in the tensor store
                return _get(tensors, value["__tensor__"])
            return torch.tensor(value["__tensor__"], dtype=getattr(torch, value["dtype"]))
        if "__neurons__" in value:
            return NeuronSet.from_pairs(value["__neurons__"])
        if "__heads__" in value:
            return HeadSet(tuple(tuple(h) for h in value["__heads__"]))
        if "type" in value and value["type"] in _REGISTRY:
            return Intervention.from_dict(value, tensors)
        return {(int(k) if str(k).lstrip("-").isdigit() else k): _decode(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_decode(v, tensors) for v in value)
    return value


@dataclass(frozen=True, eq=False)
class Compose(Intervention):
    """Several interventions applied together, in order."""

    items: tuple[Intervention, ...] = ()

    def hooks(self, model: Any) -> list[tuple[str, HookFn]]:
        return [pair for item in self.items for pair in item.hooks(model)]

    def first_position(self, info: BatchInfo) -> torch.Tensor | None:
        firsts = [item.first_position(info) for item in self.items]
        if any(f is None for f in firsts):
            return None
        return torch.stack(firsts).min(0).values if firsts else info.seq_len.clone()

    def __repr__(self) -> str:
        return " + ".join(repr(i) for i in self.items) or "Compose()"


def _as_neuron_set(neurons: NeuronSet | Mapping[int, Sequence[int]]) -> NeuronSet:
    return neurons if isinstance(neurons, NeuronSet) else NeuronSet(dict(neurons))


@dataclass(frozen=True, eq=False)
class ScaleNeurons(Intervention):
    """Multiply MLP neuron values (the down-projection input) by ``factor`` at ``positions``."""

    neurons: NeuronSet = field(default_factory=NeuronSet)
    factor: float = 0.0
    positions: Positions = "all"
    rows: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "neurons", _as_neuron_set(self.neurons))
        object.__setattr__(self, "positions", _check_positions(self.positions))

    def hooks(self, model: Any) -> list[tuple[str, HookFn]]:
        spec = spec_of(model)
        self.neurons.validate(spec.n_layers, spec.d_mlp)
        return [(hook_name(model, neuron_write_site(), layer), self._fn(idx))
                for layer, idx in self.neurons.layers.items()]

    def _fn(self, idx: tuple[int, ...]) -> HookFn:
        index = torch.tensor(idx, dtype=torch.long)
        factor, positions, rows = float(self.factor), self.positions, self.rows

        def fn(x: torch.Tensor) -> torch.Tensor:  # x: [batch, pos, d_mlp]
            where = position_mask(positions, x.shape[0], x.shape[1], x.device, rows)
            out = x.clone()
            ix = index.to(x.device)
            if where is None:
                out[..., ix] = x[..., ix] * factor
            else:
                sel = x[..., ix]
                out[..., ix] = torch.where(where[..., None], sel * factor, sel)
            return out

        return fn

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.neurons!r}, factor={self.factor}, positions={self.positions!r})"


@dataclass(frozen=True, eq=False)
class ZeroNeurons(ScaleNeurons):
    """Set MLP neuron values to 0 (the emotion-neurons paper's masking)."""

    factor: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.factor != 0.0:
            raise EmocircuitsError("ZeroNeurons always uses factor 0; use ScaleNeurons for other factors.")


@dataclass(frozen=True, eq=False)
class ScaleHeads(Intervention):
    """Multiply query heads' outputs (``head.z``, the output-projection input slice) by ``factor``."""

    heads: HeadSet = field(default_factory=HeadSet)
    factor: float = 0.0
    positions: Positions = "all"
    rows: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.heads, HeadSet):
            object.__setattr__(self, "heads", HeadSet(tuple(self.heads)))
        object.__setattr__(self, "positions", _check_positions(self.positions))

    def hooks(self, model: Any) -> list[tuple[str, HookFn]]:
        spec = spec_of(model)
        self.heads.validate(spec.n_layers, spec.n_heads)
        return [(hook_name(model, "head.z", layer), self._fn(heads)) for layer, heads in self.heads.by_layer().items()]

    def _fn(self, heads: tuple[int, ...]) -> HookFn:
        index = torch.tensor(heads, dtype=torch.long)
        factor, positions, rows = float(self.factor), self.positions, self.rows

        def fn(z: torch.Tensor) -> torch.Tensor:  # z: [batch, pos, n_heads, d_head]
            where = position_mask(positions, z.shape[0], z.shape[1], z.device, rows)
            out = z.clone()
            ix = index.to(z.device)
            sel = z[:, :, ix, :]
            out[:, :, ix, :] = sel * factor if where is None else torch.where(where[..., None, None], sel * factor, sel)
            return out

        return fn

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self.heads.heads)}, factor={self.factor}, positions={self.positions!r})"


@dataclass(frozen=True, eq=False)
class ZeroHeads(ScaleHeads):
    """Zero query heads' outputs (ablation)."""

    factor: float = 0.0


def _site_hooks(model: Any, site: str, layers: Sequence[int], make: Callable[[int], HookFn]) -> list[tuple[str, HookFn]]:
    info = site_info(site)
    if not info.writable:
        raise EmocircuitsError(f"Site {info.name!r} cannot be written; writable sites: "
                               f"{[s for s, i in _writable().items()]}.")
    return [(hook_name(model, info.name, layer), make(layer)) for layer in layers]


def _writable() -> dict[str, Any]:

    return {s: i for s, i in SITES.items() if i.writable}


@dataclass(frozen=True, eq=False)
class AddDirection(Intervention):
    """Add ``scale * direction`` to a site (default ``resid.post``) at ``layers`` and ``positions``.

    ``direction`` is ``[width]`` or ``{layer: [width]}`` (then ``layers`` defaults to its keys). With
    ``rms_scaled`` the added vector is also multiplied by the RMS of the activation it is added to (per row
    and position), as in the emotion-circuits residual steering baseline (``α·RMS(h)·v``). ``unit``
    normalises the direction first.
    """

    direction: torch.Tensor | Mapping[int, torch.Tensor] = field(default_factory=lambda: torch.zeros(0))
    site: str = "resid.post"
    layers: tuple[int, ...] = ()
    scale: float = 1.0
    positions: Positions = "all"
    rms_scaled: bool = False
    unit: bool = False
    rows: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        layers = self.layers or (sorted(int(k) for k in self.direction) if isinstance(self.direction, Mapping) else ())
        object.__setattr__(self, "layers", tuple(int(x) for x in layers))
        object.__setattr__(self, "positions", _check_positions(self.positions))

    def _vector(self, layer: int) -> torch.Tensor:
        vec = self.direction[layer] if isinstance(self.direction, Mapping) else self.direction
        if self.unit:
            vec = vec / vec.norm().clamp_min(1e-12)
        return vec

    def hooks(self, model: Any) -> list[tuple[str, HookFn]]:
        if isinstance(self.direction, Mapping):
            missing = [layer for layer in self.layers if layer not in self.direction]
            if missing:
                raise EmocircuitsError(f"AddDirection has no direction for layers {missing}; give one per layer.")
        width = spec_of(model).d_model if site_info(self.site).shape[-1] == "d_model" else None
        for layer in self.layers:
            if width is not None and self._vector(layer).shape[-1] != width:
                raise EmocircuitsError(
                    f"Direction for layer {layer} has size {self._vector(layer).shape[-1]}; site {self.site} needs {width}."
                )
        return _site_hooks(model, self.site, self.layers, self._fn)

    def _fn(self, layer: int) -> HookFn:
        vec, scale, rms, positions, rows = self._vector(layer), float(self.scale), self.rms_scaled, self.positions, self.rows

        def fn(x: torch.Tensor) -> torch.Tensor:  # x: [batch, pos, width]
            add = scale * vec.to(device=x.device, dtype=x.dtype)
            delta = add.expand_as(x)
            if rms:
                delta = delta * x.pow(2).mean(-1, keepdim=True).sqrt()
            where = position_mask(positions, x.shape[0], x.shape[1], x.device, rows)
            if where is not None:
                delta = delta * where[..., None].to(x.dtype)
            return x + delta

        return fn

    def __repr__(self) -> str:
        return (f"AddDirection(site={self.site!r}, layers={list(self.layers)}, scale={self.scale}, "
                f"positions={self.positions!r}, rms_scaled={self.rms_scaled})")


@dataclass(frozen=True, eq=False)
class ScaleSite(Intervention):
    """Multiply a whole site (e.g. ``attn.out``) by ``factor`` at ``layers`` and ``positions``; 0 = knockout."""

    site: str = "attn.out"
    layers: tuple[int, ...] = ()
    factor: float = 0.0
    positions: Positions = "all"
    rows: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        object.__setattr__(self, "positions", _check_positions(self.positions))

    def hooks(self, model: Any) -> list[tuple[str, HookFn]]:
        return _site_hooks(model, self.site, self.layers, lambda _layer: self._fn())

    def _fn(self) -> HookFn:
        factor, positions, rows = float(self.factor), self.positions, self.rows

        def fn(x: torch.Tensor) -> torch.Tensor:
            where = position_mask(positions, x.shape[0], x.shape[1], x.device, rows)
            if where is None:
                return x * factor
            shape = where.shape + (1,) * (x.ndim - 2)
            return torch.where(where.view(shape), x * factor, x)

        return fn


@dataclass(frozen=True, eq=False)
class PatchFrom(Intervention):
    """Replace a site's activation with values captured from another run.

    ``source[layer]`` is indexed by each row's example index in the pass (``BatchInfo.rows``; the batch
    row without a runner): ``[n_examples, *site_shape_without_pos]`` with ``positions="last"`` (one
    value per example, written at its last token), else ``[n_examples, n_pos, ...]`` by absolute
    position, written at the chosen positions.
    """

    site: str = "resid.post"
    source: Mapping[int, torch.Tensor] = field(default_factory=dict)
    positions: Positions = "last"
    rows: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", _check_positions(self.positions))

    def hooks(self, model: Any) -> list[tuple[str, HookFn]]:
        return _site_hooks(model, self.site, list(self.source), self._fn)

    def _fn(self, layer: int) -> HookFn:
        src, positions, rows = self.source[layer], self.positions, self.rows
        per_example = positions in ("last", "prompt_last")

        def fn(x: torch.Tensor) -> torch.Tensor:
            where = position_mask(positions, x.shape[0], x.shape[1], x.device, rows, row_dependent=True)
            if not where.any():
                return x
            info = _info(x.shape[0], x.shape[1])
            ex = info.rows
            if int(ex.max()) >= src.shape[0]:
                raise EmocircuitsError(
                    f"PatchFrom source for layer {layer} has {src.shape[0]} examples but the pass reaches example "
                    f"{int(ex.max())}; capture the source from the same examples."
                )
            s = src[ex].to(device=x.device, dtype=x.dtype)  # [b, ...] or [b, P, ...]
            if per_example:
                s = s.unsqueeze(1).expand(x.shape[0], x.shape[1], *s.shape[1:])
            else:
                cols = info.abs_pos.expand(x.shape[0], -1).clamp(max=s.shape[1] - 1).to(x.device)
                s = torch.gather(s, 1, cols.view(*cols.shape, *([1] * (s.ndim - 2))).expand(-1, -1, *s.shape[2:]))
            shape = where.shape + (1,) * (x.ndim - 2)
            return torch.where(where.view(shape), s, x)

        return fn

    def __repr__(self) -> str:
        return f"PatchFrom(site={self.site!r}, layers={sorted(self.source)}, positions={self.positions!r})"


def _noise_seed(seed: int, layer: int, key: int) -> int:
    return (int(seed) * 1_000_003 + int(layer) * 7_919 + int(key)) & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True, eq=False)
class Noise(Intervention):
    """Replace a site's activation with Gaussian noise of the same L2 norm (per row and position).

    The noise at a position depends only on (seed, layer, the row's prompt, the position), never on
    which other prompts share the batch, so batched runs equal one-at-a-time runs.
    """

    site: str = "attn.out"
    layers: tuple[int, ...] = ()
    positions: Positions = "last"
    seed: int = 0
    rows: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        object.__setattr__(self, "positions", _check_positions(self.positions))

    def hooks(self, model: Any) -> list[tuple[str, HookFn]]:
        return _site_hooks(model, self.site, self.layers, self._fn)

    def _fn(self, layer: int) -> HookFn:
        positions, rows, seed = self.positions, self.rows, self.seed

        def fn(x: torch.Tensor) -> torch.Tensor:
            where = position_mask(positions, x.shape[0], x.shape[1], x.device, rows, row_dependent=True)
            if not where.any():
                return x
            info = _info(x.shape[0], x.shape[1])
            pos = info.abs_pos.expand(x.shape[0], -1)
            out = x.clone()
            for r in torch.nonzero(where.any(1)).flatten().tolist():
                cols = torch.nonzero(where[r]).flatten()
                at = pos[r, cols.cpu()]
                gen = torch.Generator().manual_seed(_noise_seed(seed, layer, int(info.keys[r])))
                z = torch.randn(int(at.max()) + 1, *x.shape[2:], generator=gen)[at].to(device=x.device, dtype=x.dtype)
                target = x[r, cols]
                scale = target.flatten(1).norm(dim=-1) / z.flatten(1).norm(dim=-1)
                out[r, cols] = z * scale.view(-1, *([1] * (z.ndim - 1)))
            return out

        return fn


FirstPosition = Callable[[BatchInfo], "torch.Tensor | None"]


@contextlib.contextmanager
def attached(model: Any, pairs: Sequence[tuple[str, HookFn]], *, first: FirstPosition | None = None) -> Iterator[None]:
    """The one place hooks are attached: ``(hook name, fn)`` pairs for the duration of the block, removed in
    reverse order on exit, exceptions included.

    ``first(info) -> [b]``: the first position of each row the hooks change or read (see
    :func:`first_changed`); None = unknown, which keeps the runner from reusing clean keys/values.
    """
    handles = []
    entry = (len(pairs), first)
    footprints = model.__dict__.setdefault("_emocircuits_footprints", [])
    footprints.append(entry)
    try:
        for name, fn in pairs:
            point = model.hook_dict[name]
            handles.append((point, point.add_hook(fn)))
        yield
    finally:
        for point, handle in reversed(handles):
            handle.hook.remove()
            if handle in point.fwd_hooks:
                point.fwd_hooks.remove(handle)
        footprints.remove(entry)


def first_position_attached(model: Any, info: BatchInfo) -> torch.Tensor | None:
    """``[b]`` the first position of each row that the hooks attached now may change or read (a row's
    length when nothing touches it), or None when any hook's footprint is unknown, including hooks attached
    by hand rather than through :func:`attached`."""
    footprints = model.__dict__.get("_emocircuits_footprints", [])
    if sum(n for n, _ in footprints) != active_hook_count(model):
        return None
    first = info.seq_len.long().clone()
    for n, fn in footprints:
        if not n:
            continue
        got = fn(info) if fn is not None else None
        if got is None:
            return None
        first = torch.minimum(first, got.long())
    return first


@contextlib.contextmanager
def observe(model: Any, site: str, layers: Sequence[int], callback: Callable[[int, torch.Tensor], None], *,
            first: FirstPosition | None = None) -> Iterator[None]:
    """Call ``callback(layer, value)`` with the site's reading on every forward pass; stores nothing.

    ``value`` is ``[batch, pos, ...]`` after the site's reading transform (e.g. act(gate) for
    ``neuron.silu_only``). Hooks are removed on exit.
    """
    read = reading_fn(model, site)

    def reader(layer: int) -> HookFn:
        def fn(x: torch.Tensor, hook: Any = None) -> None:
            callback(layer, read(x))
        return fn

    with attached(model, [(hook_name(model, site, layer), reader(layer)) for layer in layers], first=first):
        yield


@contextlib.contextmanager
def capture(model: Any, site: str, layers: Sequence[int], positions: Positions = "last") -> Iterator[dict[int, list]]:
    """Collect a site's readings: yields ``{layer: [tensor per forward pass]}``.

    With ``positions="last"`` each tensor is ``[batch, ...]`` (each row's last token), else the full
    ``[batch, pos, ...]`` by absolute position (a prefix the runner shared is put back in front).
    Rows come in the runner's batch order; :meth:`emocircuits.core.runner.Runner.capture` returns them in input
    order. Meant for small sets (directions, patching sources), not whole datasets.
    """
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    prefix: dict[int, torch.Tensor] = {}

    def keep(layer: int, value: torch.Tensor) -> None:
        info = _BATCH.get()
        if info is not None and info.shared:
            prefix[layer] = value.detach().clone()
            return
        if positions == "last":
            last = _info(value.shape[0], value.shape[1]).last_column().to(value.device)
            value = value[torch.arange(value.shape[0], device=value.device), last]
        elif info is not None and int(info.abs_pos[0, 0]) > 0 and layer in prefix:
            value = torch.cat([prefix[layer].expand(value.shape[0], *prefix[layer].shape[1:]), value], dim=1)
        out[layer].append(value.detach().clone())

    with observe(model, site, layers, keep, first=(lambda info: info.seq_len.long() - 1) if positions == "last" else None):
        yield out


def active_hook_count(model: Any) -> int:
    """Number of forward hooks attached to the model's hook points (0 when nothing is applied)."""
    points = {id(point): point for point in model.hook_dict.values()}  # aliases share one hook point
    return sum(len(point.fwd_hooks) for point in points.values())


class _ForwardStopped(Exception):
    """Raised inside a hook to end a forward pass early; never escapes ``run_until``."""


def run_until(model: Any, model_input: torch.Tensor, site: str, layer: int | None, **forward_kwargs: Any) -> None:
    """Run the model forward only as far as ``site`` at ``layer``, then stop (hooks attached still fire).

    For passes that read activations and need no logits: skips the later layers and the unembedding
    (about a fifth of a small model's FLOPs per token). ``forward_kwargs`` go to the model's forward
    (e.g. ``past_key_values``).
    """
    name = hook_name(model, site, layer)

    def stop(x: torch.Tensor, hook: Any = None) -> None:
        raise _ForwardStopped

    with attached(model, [(name, stop)]):  # attached last, so it runs after every other hook on this point
        try:
            model(model_input, **forward_kwargs)
        except _ForwardStopped:
            pass


_BLOCK_OUTPUT_IS_TUPLE: dict[type, bool] = {}
"""Per decoder-layer class: whether its forward returns a tuple (learned from one real call)."""


@contextlib.contextmanager
def blocks_skipped(model: Any, start: int) -> Iterator[None]:
    """Blocks ``0 .. start-1`` hand their input on unchanged for the forward passes inside the block.

    For a forward with ``start_at_layer=start``: the bridge still calls every block below ``start``
    (block ``start`` then swaps the caller's residual in), so without this a pass from layer ``start``
    costs as much as a full one. Sites below ``start`` are not computed in such a pass; their hooks
    see the value handed on. The first call on a layer class runs its block 0 for real once, to learn
    whether the layer returns a tensor or a tuple.
    """
    blocks = list(getattr(model, "blocks", []))[:max(0, int(start))]
    layers = [b.original_component for b in blocks if getattr(b, "original_component", None) is not None]
    if not layers:
        yield
        return
    kind = type(layers[0])
    learn = kind not in _BLOCK_OUTPUT_IS_TUPLE

    def learner(layer: Any) -> Callable[..., Any]:
        real = layer.forward

        def fn(*args: Any, **kwargs: Any) -> Any:
            out = real(*args, **kwargs)
            _BLOCK_OUTPUT_IS_TUPLE[kind] = isinstance(out, tuple)
            return out
        return fn

    def passthrough(*args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) if _BLOCK_OUTPUT_IS_TUPLE.get(kind) else hidden

    try:
        for i, layer in enumerate(layers):
            layer.forward = learner(layer) if (learn and i == 0) else passthrough
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)


def _shift_map(shift: Mapping[int, Any]) -> dict[int, torch.Tensor]:
    return {int(k): torch.as_tensor(v).detach() for k, v in sorted(shift.items(), key=lambda kv: int(kv[0]))}


def _check_shift(owner: str, index: Mapping[int, tuple[int, ...]], shift: Mapping[int, torch.Tensor],
                 width: int | None) -> None:
    """Every layer of ``index`` has a ``[k_layer]`` (width None) or ``[k_layer, width]`` shift, and no other layer."""
    extra = sorted(set(shift) - set(index))
    if extra:
        raise EmocircuitsError(f"{owner} has shifts for layers {extra} that hold none of its components; "
                               f"give shifts for layers {sorted(index)} only.")
    for layer, idx in index.items():
        want = (len(idx),) if width is None else (len(idx), width)
        got = tuple(shift[layer].shape) if layer in shift else None
        if got != want:
            raise EmocircuitsError(f"{owner} shift for layer {layer} has shape {got}; it needs {list(want)}, one row "
                                   "per component of that layer in sorted index order.")


@dataclass(frozen=True, eq=False)
class AddToNeurons(Intervention):
    """Add ``scale * shift[layer]`` to MLP neuron values (``neuron.gated``, the down-projection input).

    ``shift[layer]`` is ``[k_layer]``, aligned with the layer's sorted neuron indices (circuit steering
    adds ``s·Δμ`` this way).
    """

    neurons: NeuronSet = field(default_factory=NeuronSet)
    shift: Mapping[int, torch.Tensor] = field(default_factory=dict)
    scale: float = 1.0
    positions: Positions = "all"
    rows: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "neurons", _as_neuron_set(self.neurons))
        object.__setattr__(self, "shift", _shift_map(self.shift))
        object.__setattr__(self, "positions", _check_positions(self.positions))

    def hooks(self, model: Any) -> list[tuple[str, HookFn]]:
        spec = spec_of(model)
        self.neurons.validate(spec.n_layers, spec.d_mlp)
        _check_shift("AddToNeurons", self.neurons.layers, self.shift, None)
        return [(hook_name(model, neuron_write_site(), layer), self._fn(idx, self.shift[layer]))
                for layer, idx in self.neurons.layers.items()]

    def _fn(self, idx: tuple[int, ...], shift: torch.Tensor) -> HookFn:
        index = torch.tensor(idx, dtype=torch.long)
        add, positions, rows = float(self.scale) * shift, self.positions, self.rows

        def fn(x: torch.Tensor) -> torch.Tensor:  # x: [batch, pos, d_mlp]; add: [k]
            where = position_mask(positions, x.shape[0], x.shape[1], x.device, rows)
            out = x.clone()
            ix = index.to(x.device)
            sel = x[..., ix]
            new = sel + add.to(device=x.device, dtype=x.dtype)
            out[..., ix] = new if where is None else torch.where(where[..., None], new, sel)
            return out

        return fn

    def __repr__(self) -> str:
        return f"AddToNeurons({self.neurons!r}, scale={self.scale}, positions={self.positions!r})"


@dataclass(frozen=True, eq=False)
class AddToHeads(Intervention):
    """Add ``scale * shift[layer]`` to query heads' outputs (``head.z``, the output-projection input slices).

    ``shift[layer]`` is ``[h_layer, d_head]``, aligned with the layer's sorted head indices.
    """

    heads: HeadSet = field(default_factory=HeadSet)
    shift: Mapping[int, torch.Tensor] = field(default_factory=dict)
    scale: float = 1.0
    positions: Positions = "all"
    rows: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.heads, HeadSet):
            object.__setattr__(self, "heads", HeadSet(tuple(self.heads)))
        object.__setattr__(self, "shift", _shift_map(self.shift))
        object.__setattr__(self, "positions", _check_positions(self.positions))

    def hooks(self, model: Any) -> list[tuple[str, HookFn]]:
        spec = spec_of(model)
        self.heads.validate(spec.n_layers, spec.n_heads)
        by_layer = self.heads.by_layer()
        _check_shift("AddToHeads", by_layer, self.shift, spec.d_head)
        return [(hook_name(model, "head.z", layer), self._fn(heads, self.shift[layer]))
                for layer, heads in by_layer.items()]

    def _fn(self, heads: tuple[int, ...], shift: torch.Tensor) -> HookFn:
        index = torch.tensor(heads, dtype=torch.long)
        add, positions, rows = float(self.scale) * shift, self.positions, self.rows

        def fn(z: torch.Tensor) -> torch.Tensor:  # z: [batch, pos, n_heads, d_head]; add: [h, d_head]
            where = position_mask(positions, z.shape[0], z.shape[1], z.device, rows)
            out = z.clone()
            ix = index.to(z.device)
            sel = z[:, :, ix, :]
            new = sel + add.to(device=z.device, dtype=z.dtype)
            out[:, :, ix, :] = new if where is None else torch.where(where[..., None, None], new, sel)
            return out

        return fn

    def __repr__(self) -> str:
        return f"AddToHeads({list(self.heads.heads)}, scale={self.scale}, positions={self.positions!r})"


@dataclass(frozen=True, eq=False)
class AddPerExample(Intervention):
    """Add a different vector to each example: ``delta[layer]`` is ``[n_examples, width]``, indexed by the
    example's index in the pass (``BatchInfo.rows``), added at ``positions``. A row of zeros leaves that
    example unchanged, so one batch can carry many single-site injections (sublayer influence)."""

    site: str = "attn.out"
    delta: Mapping[int, torch.Tensor] = field(default_factory=dict)
    positions: Positions = "last"

    def __post_init__(self) -> None:
        object.__setattr__(self, "delta", _shift_map(self.delta))
        object.__setattr__(self, "positions", _check_positions(self.positions))

    def hooks(self, model: Any) -> list[tuple[str, HookFn]]:
        return _site_hooks(model, self.site, list(self.delta), self._fn)

    def _fn(self, layer: int) -> HookFn:
        delta, positions = self.delta[layer], self.positions

        def fn(x: torch.Tensor) -> torch.Tensor:  # x: [batch, pos, width]; delta: [n_examples, width]
            where = position_mask(positions, x.shape[0], x.shape[1], x.device, row_dependent=True)
            if not where.any():
                return x
            ex = _info(x.shape[0], x.shape[1]).rows
            if int(ex.max()) >= delta.shape[0]:
                raise EmocircuitsError(f"AddPerExample for layer {layer} has {delta.shape[0]} rows but the pass "
                                       f"reaches example {int(ex.max())}; give one row per example.")
            add = delta[ex].to(device=x.device, dtype=x.dtype)[:, None, :]
            return x + add * where[..., None].to(x.dtype)

        return fn

    def __repr__(self) -> str:
        return f"AddPerExample(site={self.site!r}, layers={sorted(self.delta)}, positions={self.positions!r})"


@dataclass(frozen=True, eq=False)
class GradTap(Intervention):
    """Pass a site through unchanged as a fresh graph node that keeps its gradient: ``store[(site, layer)]``
    holds the activation ``[batch, pos, ...]`` of the latest forward, whose ``.grad`` is filled by a
    backward pass (attribution patching's ``∂metric/∂activation``; the shared-prefix forward is skipped)."""

    site: str = "resid.post"
    layers: tuple[int, ...] = ()
    store: dict = field(default_factory=dict)

    def hooks(self, model: Any) -> list[tuple[str, Any]]:
        return [(hook_name(model, self.site, layer), self._fn(layer)) for layer in self.layers]

    def first_position(self, info: BatchInfo) -> torch.Tensor | None:
        return None  # keeps every position's activation

    def _fn(self, layer: int) -> Any:
        def fn(x: torch.Tensor) -> torch.Tensor:
            info = current_batch()
            if info is not None and info.shared:
                return x
            y = x * 1.0
            if y.requires_grad:
                y.retain_grad()
            self.store[(self.site, layer)] = y
            return y

        return fn


@contextlib.contextmanager
def grad_through_inputs(model: Any):
    """Make the embedding output require grad (parameters are frozen), so activations carry a graph."""
    emb = getattr(model, "embed", None)
    if emb is None:
        yield
        return
    handle = emb.register_forward_hook(lambda _m, _i, out: out.requires_grad_(True) if not out.requires_grad else out)
    try:
        yield
    finally:
        handle.remove()
