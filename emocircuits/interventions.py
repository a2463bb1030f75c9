"""Interventions: small value objects that read or write sites through hooks.

This is the only module that registers hooks. An intervention is data — print it, compare it, save it
with ``to_dict`` — and ``apply(model)`` is a context manager that attaches its hooks and always removes
them on exit, exceptions included. ``a + b`` composes.

Positions: ``"all"`` (every position), ``"last"`` (each row's last real token, from ``batch_context``;
position -1 when no batch context is set), or a tuple of positions (negative = counted back from each
row's last real token). ``rows`` restricts a write to some batch rows (used to evaluate several
conditions stacked in one batch).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from emocircuits.components import HeadSet, NeuronSet
from emocircuits.errors import EmocircuitsError
from emocircuits.models import spec_of
from emocircuits.sites import check_layer, hook_name, neuron_write_site, reading_fn, site_info

Positions = str | tuple[int, ...]
HookFn = Callable[[torch.Tensor], torch.Tensor | None]


# ----------------------------------------------------------------------------- batch context


@dataclass(frozen=True)
class BatchInfo:
    """Where the real tokens are in the current (right-padded) batch: ``last_index [batch]``."""

    last_index: torch.Tensor


_BATCH: contextvars.ContextVar[BatchInfo | None] = contextvars.ContextVar("emocircuits_batch", default=None)


@contextlib.contextmanager
def batch_context(last_index: torch.Tensor) -> Iterator[BatchInfo]:
    """Tell position-aware hooks where each row's last real token is, for one forward pass."""
    token = _BATCH.set(BatchInfo(last_index=torch.as_tensor(last_index, dtype=torch.long)))
    try:
        yield _BATCH.get()  # type: ignore[misc]
    finally:
        _BATCH.reset(token)


def _last_index(batch: int, n_pos: int, device: torch.device) -> torch.Tensor:
    info = _BATCH.get()
    if info is None:
        return torch.full((batch,), n_pos - 1, dtype=torch.long, device=device)
    if info.last_index.shape[0] != batch:
        raise EmocircuitsError(
            f"batch_context covers {info.last_index.shape[0]} rows but the forward pass has {batch}; "
            "set batch_context for each batch you run."
        )
    return info.last_index.to(device)


def position_mask(positions: Positions, batch: int, n_pos: int, device: torch.device,
                  rows: Sequence[int] | None = None) -> torch.Tensor | None:
    """Bool ``[batch, pos]`` of where a write applies, or None for everywhere."""
    if positions == "all" and rows is None:
        return None
    mask = torch.zeros(batch, n_pos, dtype=torch.bool, device=device)
    if positions == "all":
        mask[:] = True
    elif positions == "last":
        mask[torch.arange(batch, device=device), _last_index(batch, n_pos, device)] = True
    else:
        last = _last_index(batch, n_pos, device)
        for p in positions:
            col = last + 1 + p if p < 0 else torch.full_like(last, p)
            ok = (col >= 0) & (col < n_pos)
            mask[torch.arange(batch, device=device)[ok], col[ok]] = True
    if rows is not None:
        keep = torch.zeros(batch, dtype=torch.bool, device=device)
        keep[list(rows)] = True
        mask &= keep[:, None]
    return mask


def _check_positions(positions: Any) -> Positions:
    if positions in ("all", "last"):
        return positions
    if isinstance(positions, int):
        return (positions,)
    try:
        return tuple(int(p) for p in positions)
    except (TypeError, ValueError):
        raise EmocircuitsError(
            f"Invalid positions {positions!r}; use 'all', 'last', or a list of integer positions."
        ) from None


# ----------------------------------------------------------------------------- base class


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

    @contextlib.contextmanager
    def apply(self, model: Any) -> Iterator[Intervention]:
        """Attach the hooks for the duration of the block; they are removed even on exceptions."""
        pairs = self.hooks(model)  # validates before anything is attached
        handles = []
        try:
            for name, fn in pairs:
                point = model.hook_dict[name]
                handles.append((point, point.add_hook(_wrap(fn))))
            yield self
        finally:
            for point, handle in reversed(handles):
                handle.hook.remove()
                if handle in point.fwd_hooks:
                    point.fwd_hooks.remove(handle)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_dict() == other.to_dict()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __add__(self, other: Intervention) -> Compose:
        left = self.items if isinstance(self, Compose) else (self,)
        right = other.items if isinstance(other, Compose) else (other,)
        return Compose(tuple(left) + tuple(right))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": type(self).__name__}
        for f in fields(self):
            out[f.name] = _encode(getattr(self, f.name))
        return out

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Intervention:
        data = dict(data)
        name = data.pop("type", None)
        if name not in _REGISTRY:
            raise EmocircuitsError(f"Unknown intervention type {name!r}; known types are {sorted(_REGISTRY)}.")
        cls = _REGISTRY[name]
        return cls(**{k: _decode(v) for k, v in data.items()})


def _wrap(fn: HookFn) -> Callable[..., torch.Tensor | None]:
    def hook(x: torch.Tensor, hook: Any = None) -> torch.Tensor | None:
        return fn(x)

    return hook


def _encode(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.detach().cpu().tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, NeuronSet):
        return {"__neurons__": value.pairs()}
    if isinstance(value, HeadSet):
        return {"__heads__": [list(h) for h in value.heads]}
    if isinstance(value, Intervention):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, Mapping):
        if "__tensor__" in value:
            return torch.tensor(value["__tensor__"], dtype=getattr(torch, value["dtype"]))
        if "__neurons__" in value:
            return NeuronSet.from_pairs(value["__neurons__"])
        if "__heads__" in value:
            return HeadSet(tuple(tuple(h) for h in value["__heads__"]))
        if "type" in value and value["type"] in _REGISTRY:
            return Intervention.from_dict(value)
        return {(int(k) if str(k).lstrip("-").isdigit() else k): _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_decode(v) for v in value)
    return value


@dataclass(frozen=True, eq=False)
class Compose(Intervention):
    """Several interventions applied together, in order."""

    items: tuple[Intervention, ...] = ()

    def hooks(self, model: Any) -> list[tuple[str, HookFn]]:
        return [pair for item in self.items for pair in item.hooks(model)]

    def __repr__(self) -> str:
        return " + ".join(repr(i) for i in self.items) or "Compose()"


# ----------------------------------------------------------------------------- neurons


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
class MultiplyNeuronsPerRow(Intervention):
    """Multiply neuron values by a per-row mask: ``masks[layer]`` is ``[batch, d_mlp]`` (1 = keep).

    Lets many masking conditions run stacked in one batch, each row with its own neuron set.
    """

    masks: Mapping[int, torch.Tensor] = field(default_factory=dict)

    def hooks(self, model: Any) -> list[tuple[str, HookFn]]:
        spec = spec_of(model)
        out = []
        for layer, mask in self.masks.items():
            check_layer(model, layer)
            if mask.ndim != 2 or mask.shape[1] != spec.d_mlp:
                raise EmocircuitsError(f"Mask for layer {layer} has shape {tuple(mask.shape)}; expected [batch, {spec.d_mlp}].")
            out.append((hook_name(model, neuron_write_site(), layer), self._fn(mask)))
        return out

    @staticmethod
    def _fn(mask: torch.Tensor) -> HookFn:
        def fn(x: torch.Tensor) -> torch.Tensor:  # x: [batch, pos, d_mlp]
            return x * mask.to(x.dtype)[:, None, :]

        return fn

    def __repr__(self) -> str:
        return f"MultiplyNeuronsPerRow(layers={sorted(self.masks)})"


# ----------------------------------------------------------------------------- heads


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


# ----------------------------------------------------------------------------- whole-site writes


def _site_hooks(model: Any, site: str, layers: Sequence[int], make: Callable[[int], HookFn]) -> list[tuple[str, HookFn]]:
    info = site_info(site)
    if not info.writable:
        raise EmocircuitsError(f"Site {info.name!r} cannot be written; writable sites: "
                               f"{[s for s, i in _writable().items()]}.")
    return [(hook_name(model, info.name, layer), make(layer)) for layer in layers]


def _writable() -> dict[str, Any]:
    from emocircuits.sites import SITES

    return {s: i for s, i in SITES.items() if i.writable}


@dataclass(frozen=True, eq=False)
class AddDirection(Intervention):
    """Add ``scale * direction`` to a site (default ``resid.post``) at ``layers`` and ``positions``.

    ``direction`` is ``[width]`` or ``{layer: [width]}``. With ``rms_scaled`` the added vector is also
    multiplied by the RMS of the activation it is added to (per row and position), as in the
    emotion-circuits residual steering baseline (``α·RMS(h)·v``). ``unit`` normalises the direction first.
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
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
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

    ``source[layer]`` is ``[batch, *site_shape_without_pos]`` when ``positions == "last"`` (the source's
    last-token values written at each target row's last token), else ``[batch, pos, ...]`` written at the
    chosen positions (same padded length as the target batch).
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

        def fn(x: torch.Tensor) -> torch.Tensor:
            s = src.to(device=x.device, dtype=x.dtype)
            if s.shape[0] != x.shape[0]:
                raise EmocircuitsError(f"PatchFrom source has {s.shape[0]} rows but the batch has {x.shape[0]}.")
            if positions == "last":
                s = s.unsqueeze(1).expand(x.shape[0], x.shape[1], *s.shape[1:])
            where = position_mask(positions, x.shape[0], x.shape[1], x.device, rows)
            if where is None:
                return s.clone()
            shape = where.shape + (1,) * (x.ndim - 2)
            return torch.where(where.view(shape), s, x)

        return fn

    def __repr__(self) -> str:
        return f"PatchFrom(site={self.site!r}, layers={sorted(self.source)}, positions={self.positions!r})"


@dataclass(frozen=True, eq=False)
class Noise(Intervention):
    """Replace a site's activation with Gaussian noise of the same L2 norm (per row and position)."""

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
        positions, rows = self.positions, self.rows
        gen = torch.Generator().manual_seed(int(self.seed) * 100_003 + layer)

        def fn(x: torch.Tensor) -> torch.Tensor:
            noise = torch.randn(x.shape, generator=gen, dtype=torch.float32).to(device=x.device, dtype=x.dtype)
            flat_x, flat_n = x.flatten(2), noise.flatten(2)
            noise = (flat_n * (flat_x.norm(dim=-1, keepdim=True) / flat_n.norm(dim=-1, keepdim=True))).view_as(x)
            where = position_mask(positions, x.shape[0], x.shape[1], x.device, rows)
            if where is None:
                return noise
            shape = where.shape + (1,) * (x.ndim - 2)
            return torch.where(where.view(shape), noise, x)

        return fn


# ----------------------------------------------------------------------------- reading


@contextlib.contextmanager
def observe(model: Any, site: str, layers: Sequence[int],
            callback: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
    """Call ``callback(layer, value)`` with the site's reading on every forward pass; stores nothing.

    ``value`` is ``[batch, pos, ...]`` after the site's reading transform (e.g. act(gate) for
    ``neuron.silu_only``). Hooks are removed on exit.
    """
    read = reading_fn(model, site)
    names = [(layer, hook_name(model, site, layer)) for layer in layers]
    handles = []
    try:
        for layer, name in names:
            def fn(x: torch.Tensor, hook: Any = None, _layer: int = layer) -> None:
                callback(_layer, read(x))

            point = model.hook_dict[name]
            handles.append((point, point.add_hook(fn)))
        yield
    finally:
        for point, handle in reversed(handles):
            handle.hook.remove()
            if handle in point.fwd_hooks:
                point.fwd_hooks.remove(handle)


@contextlib.contextmanager
def capture(model: Any, site: str, layers: Sequence[int], positions: Positions = "last") -> Iterator[dict[int, list]]:
    """Collect a site's readings: yields ``{layer: [tensor per forward pass]}``.

    With ``positions="last"`` each tensor is ``[batch, ...]`` (each row's last real token), else the full
    ``[batch, pos, ...]``. Meant for small sets (directions, patching sources), not whole datasets.
    """
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}

    def keep(layer: int, value: torch.Tensor) -> None:
        if positions == "last":
            last = _last_index(value.shape[0], value.shape[1], value.device)
            value = value[torch.arange(value.shape[0], device=value.device), last]
        out[layer].append(value.detach().clone())

    with observe(model, site, layers, keep):
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

    point = model.hook_dict[name]
    handle = point.add_hook(stop)  # attached last, so it runs after every other hook on this point
    try:
        model(model_input, **forward_kwargs)
    except _ForwardStopped:
        pass
    finally:
        handle.hook.remove()
        if handle in point.fwd_hooks:
            point.fwd_hooks.remove(handle)
