"""Intervention templates: an intervention's dict with ``{placeholders}`` filled from a sweep's grid axes.

A template is what :meth:`emocircuits.core.interventions.Intervention.to_dict` writes — ``type`` and the
class's fields — where any string may hold placeholders such as ``{layers}`` or ``{factor}``. A string
that is exactly one placeholder takes the axis value with its type (``factor = "{factor}"`` gives a
number); inside longer strings the value is written as text (``heads = "{layers}:all"``).

Short forms, resolved once the model (and the sweep's artifacts) are known:

=============  ==============================================================================
field          accepts
=============  ==============================================================================
``layers``     a layer range ``bottom | middle | top | all | A-B | A``, a layer, or a list of layers
``heads``      ``"LAYERS:HEADS"`` (``"top:all"``, ``"2-3:0,5"``), ``[[layer, head], ...]``, or ``"@ARTIFACT"``
``neurons``    ``"@ARTIFACT:KEY"`` (e.g. ``"@found:{emotion}"``) or ``[[layer, index], ...]``
``direction``  ``"@ARTIFACT:KEY"`` (a Direction; ``AddDirection`` then takes its vectors at ``site``,
               ``layers``) or a list of numbers
``source``     ``"@ARTIFACT"`` of kind ``activations`` (``PatchFrom``; extra key ``layers`` picks the window)
``items``      ``Compose``: a list of templates
=============  ==============================================================================

A template may instead name a component and what to do with it: ``{component = "@ARTIFACT[:KEY]",
kind = "zero" | "scale" | "steer" | "add", ...}`` → ``component.intervention(kind, ...)`` (NeuronSet,
HeadSet, SublayerSet, Direction, Circuit).

:func:`check` runs before any model loads (types, keys, syntax, artifact names); :func:`build` makes the
intervention for a model (``ModelSpec`` or its dict) and raises one sentence for layers or heads outside it.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from collections.abc import Mapping
from typing import Any

from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.components import Direction, intervention
from emocircuits.core.interventions import AddDirection, Compose, Intervention, PatchFrom
from emocircuits.core.sites import check_layer_range, layer_range, site_info
from emocircuits.core.units import Component, HeadSet, NeuronSet
from emocircuits.methods.heads import check_heads, head_set
from emocircuits.sweeps.artifacts import Activations
from emocircuits.sweeps.config import coerce

PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
COMPONENT_KINDS = ("zero", "scale", "steer", "add")
_SPECIAL = ("layers", "heads", "neurons", "direction", "source", "items", "shift")


# ----------------------------------------------------------------------------- placeholders


def placeholders(obj: Any) -> set[str]:
    """Names of every ``{placeholder}`` in a template (strings inside dicts and lists)."""
    if isinstance(obj, str):
        return set(PLACEHOLDER.findall(obj))
    if isinstance(obj, Mapping):
        return set().union(*(placeholders(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list | tuple):
        return set().union(*(placeholders(v) for v in obj)) if obj else set()
    return set()


def fill(obj: Any, values: Mapping[str, Any]) -> Any:
    """The template with every placeholder replaced by its value (whole-string placeholders keep the type)."""
    if isinstance(obj, str):
        whole = PLACEHOLDER.fullmatch(obj)
        if whole:
            return values[whole.group(1)]
        return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), obj)
    if isinstance(obj, Mapping):
        return {k: fill(v, values) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [fill(v, values) for v in obj]
    return obj


# ----------------------------------------------------------------------------- intervention types


@functools.cache
def intervention_types() -> dict[str, type]:
    """``{class name: class}`` of every intervention value object."""

    out: dict[str, type] = {}
    todo = list(Intervention.__subclasses__())
    while todo:
        cls = todo.pop()
        out[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return dict(sorted(out.items()))


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _allowed_keys(cls: type) -> list[str]:
    keys = ["type", *_fields(cls)]
    if cls.__name__ == "PatchFrom":
        keys.append("layers")
    return keys


# ----------------------------------------------------------------------------- checking and building


class _Ctx:
    """What resolution may use: the model's dims (None before it loads) and the artifacts."""

    def __init__(self, spec: Any = None, artifacts: Any = None, declared: Mapping[str, Any] | None = None) -> None:
        self.dims = _dims(spec) if spec is not None else None
        self.artifacts = artifacts
        self.declared = dict(declared or {})

    def ref(self, value: str, key: str, kinds: tuple[str, ...]) -> Any:
        """Check an ``@ARTIFACT[:KEY]`` reference; return the resolved object when artifacts are loaded."""
        name = value.removeprefix("@").partition(":")[0]
        if self.artifacts is not None:
            return self.artifacts.resolve(value)
        if name not in self.declared:
            raise EmocircuitsError(f"Key {key!r} refers to '@{name}', which no [analysis.artifacts.{name}] table "
                                   f"declares; declared: {', '.join(self.declared) or 'none'}.")
        kind = self.declared[name].kind
        if kind != "file" and kind not in kinds:
            raise EmocircuitsError(f"Key {key!r} refers to '@{name}' of kind {kind!r}; it needs an artifact of kind "
                                   f"{' or '.join(kinds)}.")
        return None


def _dims(spec: Any) -> dict[str, int]:
    get = spec.get if isinstance(spec, Mapping) else lambda k: getattr(spec, k)
    return {k: int(get(k)) for k in ("n_layers", "n_heads", "d_mlp")}


def _layers(value: Any, ctx: _Ctx, key: str) -> tuple[int, ...] | None:

    if isinstance(value, bool) or not isinstance(value, int | str | list | tuple):
        raise EmocircuitsError(f"Key {key!r} has value {value!r}; give a layer range (e.g. 'top', '2-5'), a layer, "
                               "or a list of layers.")
    if isinstance(value, str):
        check_layer_range(value, key)
        if ctx.dims is None:
            return None
        try:
            return tuple(layer_range(ctx.dims["n_layers"], value))
        except EmocircuitsError as exc:
            raise EmocircuitsError(f"Key {key!r}: {exc}") from None
    items = [value] if isinstance(value, int) else list(value)
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        raise EmocircuitsError(f"Key {key!r} has value {value!r}; a list of layers holds integers only.")
    if ctx.dims is not None:
        n = ctx.dims["n_layers"]
        bad = [x for x in items if not 0 <= x < n]
        if bad:
            raise EmocircuitsError(f"Key {key!r} has layer {bad[0]}, which is out of range; this model has layers "
                                   f"0..{n - 1}.")
    return tuple(items)


def _pairs(value: Any, key: str, what: str) -> list[tuple[int, int]]:
    if not isinstance(value, list | tuple) or not all(
            isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(x, int) for x in p) for p in value):
        raise EmocircuitsError(f"Key {key!r} has value {value!r}; give [layer, {what}] pairs such as [[0, 1]].")
    return [(int(a), int(b)) for a, b in value]


def _heads(value: Any, ctx: _Ctx, key: str) -> Any:

    if isinstance(value, str) and value.startswith("@"):
        obj = ctx.ref(value, key, ("file",))
        if obj is not None and not isinstance(obj, HeadSet):
            raise EmocircuitsError(f"Key {key!r}: '{value}' holds a {type(obj).__name__}, not a HeadSet.")
        return obj.validate(ctx.dims["n_layers"], ctx.dims["n_heads"]) if obj is not None and ctx.dims else obj
    check_heads(value, key)
    if ctx.dims is None:
        return None
    try:
        return head_set(ctx.dims, value)
    except EmocircuitsError as exc:
        raise EmocircuitsError(f"Key {key!r}: {exc}") from None


def _neurons(value: Any, ctx: _Ctx, key: str) -> Any:

    if isinstance(value, str) and value.startswith("@"):
        if ":" not in value and ctx.artifacts is None and value[1:] in ctx.declared \
                and ctx.declared[value[1:]].kind == "neurons":
            raise EmocircuitsError(f"Key {key!r} refers to a neuron selection; name the emotion: '{value}:{{emotion}}'.")
        sset = ctx.ref(value, key, ("neurons",))
    else:
        sset = NeuronSet.from_pairs(_pairs(value, key, "index"))
    if sset is not None and not isinstance(sset, NeuronSet):
        raise EmocircuitsError(f"Key {key!r}: '{value}' holds a {type(sset).__name__}, not a NeuronSet.")
    if sset is not None and ctx.dims is not None:
        try:
            sset.validate(ctx.dims["n_layers"], ctx.dims["d_mlp"])
        except EmocircuitsError as exc:
            raise EmocircuitsError(f"Key {key!r}: {exc}") from None
    return sset


def _simple(value: Any, tp: Any, key: str) -> Any:

    return coerce(value, tp, key)


def resolve(template: Any, key: str = "analysis.intervention", *, spec: Any = None, artifacts: Any = None,
            declared: Mapping[str, Any] | None = None) -> Any:
    """Check a filled template and, with ``artifacts``, build its intervention.

    Without ``spec`` only what needs no model is checked; with ``spec`` (ModelSpec or its dict) layers,
    heads and neurons are checked against the model; with ``artifacts`` (an
    :class:`~emocircuits.sweeps.artifacts.Artifacts`) the intervention is returned, else None.
    """
    return _resolve(template, key, _Ctx(spec, artifacts, declared))


def check(template: Any, declared: Mapping[str, Any], key: str = "analysis.intervention") -> None:
    """Everything about a filled template that needs no model; raises one sentence."""
    _resolve(template, key, _Ctx(None, None, declared))


def check_ref(ref: str, key: str, kinds: tuple[str, ...], declared: Mapping[str, Any]) -> None:
    """Check that ``ref`` (``@ARTIFACT[:KEY]``) names a declared artifact of one of ``kinds`` (or a file)."""
    _Ctx(None, None, declared).ref(ref, key, kinds)


def _resolve(t: Any, key: str, ctx: _Ctx) -> Any:
    if not isinstance(t, Mapping):
        raise EmocircuitsError(f"Key {key!r} must be a table (an intervention with a 'type'), not {t!r}.")
    if "component" in t:
        return _component(t, key, ctx)
    types = intervention_types()
    if "type" not in t:
        raise EmocircuitsError(f"Key {key!r} needs a 'type' (one of {', '.join(types)}) or a 'component'.")
    name = t["type"]
    if name not in types:
        raise EmocircuitsError(f"Key '{key}.type' has value {name!r}; allowed values: {', '.join(types)}.")
    cls = types[name]
    allowed = _allowed_keys(cls)
    unknown = sorted(set(t) - set(allowed))
    if unknown:
        raise EmocircuitsError(f"Unknown key '{key}.{unknown[0]}' for {name}; allowed keys: {', '.join(allowed)}.")
    if name == "Compose":
        items = t.get("items", [])
        if not isinstance(items, list | tuple) or not items:
            raise EmocircuitsError(f"Key '{key}.items' must be a non-empty list of interventions.")
        built = [_resolve(item, f"{key}.items[{i}]", ctx) for i, item in enumerate(items)]
        return cls(tuple(built)) if ctx.artifacts is not None else None
    hints = _fields(cls)
    simple = {f: _simple(v, hints[f], f"{key}.{f}") for f, v in t.items() if f != "type" and f not in _SPECIAL}
    if "site" in simple:

        try:
            site_info(simple["site"])
        except EmocircuitsError as exc:
            raise EmocircuitsError(f"Key '{key}.site': {exc}") from None
    try:
        cls(**simple)  # the class's own checks (positions, ZeroNeurons' factor) before any model loads
    except EmocircuitsError as exc:
        raise EmocircuitsError(f"Key {key!r} ({name}): {exc}") from None
    if "shift" in t:
        raise EmocircuitsError(f"Key '{key}.shift' cannot be written in a template; steer a saved Circuit instead: "
                               "component = '@ARTIFACT', kind = 'steer'.")
    special: dict[str, Any] = {}
    if "layers" in t:
        special["layers"] = _layers(t["layers"], ctx, f"{key}.layers")
    if "heads" in t:
        special["heads"] = _heads(t["heads"], ctx, f"{key}.heads")
    if "neurons" in t:
        special["neurons"] = _neurons(t["neurons"], ctx, f"{key}.neurons")
    if name == "AddDirection":
        return _add_direction(t, simple, special, key, ctx)
    if name == "PatchFrom":
        return _patch(t, simple, special, key, ctx)
    for f in ("heads", "neurons"):
        if f in hints and f not in t:
            raise EmocircuitsError(f"Key '{key}.{f}' is missing; {name} needs the {f} it acts on.")
    if "layers" in hints and "layers" not in t:
        raise EmocircuitsError(f"Key '{key}.layers' is missing; {name} needs the layers it acts on.")
    if ctx.artifacts is None:
        return None
    return cls(**simple, **special)


def _add_direction(t: Mapping[str, Any], simple: dict[str, Any], special: dict[str, Any], key: str, ctx: _Ctx) -> Any:
    import torch

    value = t.get("direction")
    if value is None:
        raise EmocircuitsError(f"Key '{key}.direction' is missing; give '@ARTIFACT:KEY' or a list of numbers.")
    if isinstance(value, str):
        if not value.startswith("@"):
            raise EmocircuitsError(f"Key '{key}.direction' has value {value!r}; give '@ARTIFACT:KEY' or numbers.")
        d = ctx.ref(value, f"{key}.direction", ("direction",))
        if d is None:
            return None
        if not isinstance(d, Direction):
            raise EmocircuitsError(f"Key '{key}.direction': '{value}' holds a {type(d).__name__}, not a Direction.")
        kw = {k: v for k, v in simple.items() if k != "site"}
        layers = special.get("layers")
        return d.intervention("add", site=simple.get("site"), **({"layers": layers} if layers else {}), **kw)
    if not isinstance(value, list | tuple) or not all(isinstance(x, int | float) for x in value):
        raise EmocircuitsError(f"Key '{key}.direction' has value {value!r}; give '@ARTIFACT:KEY' or numbers.")
    if "layers" not in t:
        raise EmocircuitsError(f"Key '{key}.layers' is missing; AddDirection with a vector needs its layers.")
    if ctx.artifacts is None:
        return None
    return AddDirection(direction=torch.tensor(value, dtype=torch.float32), **special, **simple)


def _patch(t: Mapping[str, Any], simple: dict[str, Any], special: dict[str, Any], key: str, ctx: _Ctx) -> Any:

    value = t.get("source")
    if not isinstance(value, str) or not value.startswith("@") or ":" in value:
        raise EmocircuitsError(f"Key '{key}.source' has value {value!r}; give '@ARTIFACT' of kind activations.")
    if simple.get("positions", "last") not in ("last", "prompt_last"):
        raise EmocircuitsError(f"Key '{key}.positions' must be 'last' or 'prompt_last' (an activations artifact "
                               "holds one value per text).")
    acts = ctx.ref(value, f"{key}.source", ("activations",))
    if acts is None:
        return None
    if not isinstance(acts, Activations):
        raise EmocircuitsError(f"Key '{key}.source': '{value}' is not an activations artifact.")
    site = simple.pop("site", acts.site)
    if site != acts.site:
        raise EmocircuitsError(f"Key '{key}.site' is {site!r} but '{value}' holds {acts.site!r} activations.")
    layers = special.get("layers") or tuple(acts.source)
    missing = sorted(set(layers) - set(acts.source))
    if missing:
        raise EmocircuitsError(f"Key '{key}.layers' asks for layers {missing} but '{value}' captured layers "
                               f"{sorted(acts.source)}; widen the artifact's layers.")
    return PatchFrom(site=site, source={layer: acts.source[layer] for layer in layers}, **simple)


def _component(t: Mapping[str, Any], key: str, ctx: _Ctx) -> Any:
    ref, kind = t.get("component"), t.get("kind")
    if not isinstance(ref, str) or not ref.startswith("@"):
        raise EmocircuitsError(f"Key '{key}.component' has value {ref!r}; name an artifact: '@ARTIFACT[:KEY]'.")
    if kind not in COMPONENT_KINDS:
        raise EmocircuitsError(f"Key '{key}.kind' has value {kind!r}; allowed values: {', '.join(COMPONENT_KINDS)}.")
    kw = {k: v for k, v in t.items() if k not in ("component", "kind")}
    if "layers" in kw:
        kw["layers"] = _layers(kw["layers"], ctx, f"{key}.layers")
    obj = ctx.ref(ref, f"{key}.component", ("neurons", "direction"))
    if obj is None:
        return None
    if not isinstance(obj, Component):
        raise EmocircuitsError(f"Key '{key}.component': '{ref}' holds a {type(obj).__name__}, which has no "
                               "interventions; refer to a NeuronSet, HeadSet, SublayerSet, Direction or Circuit.")
    return intervention(obj, kind, **kw)


def size_metrics(intervention: Any) -> dict[str, int]:
    """How much an intervention touches: ``n_heads``, ``n_neurons``, ``n_sites`` (site-layers), summed."""

    out = {"n_heads": 0, "n_neurons": 0, "n_sites": 0}
    items = intervention.items if isinstance(intervention, Compose) else (intervention,)
    for iv in items:
        if isinstance(iv, Compose):
            for k, v in size_metrics(iv).items():
                out[k] += v
        elif hasattr(iv, "heads"):
            out["n_heads"] += len(iv.heads)
        elif hasattr(iv, "neurons"):
            out["n_neurons"] += len(iv.neurons)
        elif hasattr(iv, "source"):
            out["n_sites"] += len(iv.source)
        elif hasattr(iv, "layers"):
            out["n_sites"] += len(iv.layers)
    return out
