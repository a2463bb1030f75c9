"""The one table from abstract sites to TransformerLens hook names and shapes.

No other module spells a hook name. A *site* names what an analysis reads or writes; ``hook_name``
turns (site, layer) into the bridge's hook for the loaded architecture, and ``read_value`` applies
the site's reading (e.g. ``neuron.silu_only`` = act(gate) computed from the gate pre-activation).

==================  ==========================  ==========================  ==========================
site                hook (gated MLP, e.g. Llama) hook (plain MLP, e.g. GPT-2) shape
==================  ==========================  ==========================  ==========================
neuron.gated        blocks.L.mlp.hook_post      blocks.L.mlp.hook_post      [batch, pos, d_mlp]
neuron.silu_only    act(blocks.L.mlp.hook_pre)  blocks.L.mlp.hook_post      [batch, pos, d_mlp]
neuron.pre          blocks.L.mlp.hook_pre       blocks.L.mlp.hook_pre       [batch, pos, d_mlp]
head.z              blocks.L.attn.hook_z        blocks.L.attn.hook_z        [batch, pos, n_heads, d_head]
attn.pattern        blocks.L.attn.hook_pattern  blocks.L.attn.hook_pattern  [batch, n_heads, q_pos, k_pos]
attn.out            blocks.L.hook_attn_out      blocks.L.hook_attn_out      [batch, pos, d_model]
mlp.out             blocks.L.hook_mlp_out       blocks.L.hook_mlp_out       [batch, pos, d_model]
resid.pre           blocks.L.hook_resid_pre     blocks.L.hook_resid_pre     [batch, pos, d_model]
resid.mid           blocks.L.hook_resid_mid     blocks.L.hook_resid_mid     [batch, pos, d_model]
resid.post          blocks.L.hook_resid_post    blocks.L.hook_resid_post    [batch, pos, d_model]
mlp.in              blocks.L.ln2.hook_out       blocks.L.ln2.hook_out       [batch, pos, d_model]
final.norm          ln_final.hook_out           ln_final.hook_out           [batch, pos, d_model]
==================  ==========================  ==========================  ==========================

``final.norm`` (the normalised final residual, the unembedding's input) has no layer: pass ``layer=None``.
``mlp.in`` is the MLP's input, ``resid.mid`` after the layer's post-attention normalisation (see
:func:`norm`, which returns that normalisation as a function).

``neuron.gated`` is the input of the down projection, so writing it writes exactly one column of
that input per neuron; ``head.z`` is the per-head input of the output projection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from emocircuits.base.constants import LAYER_RANGES
from emocircuits.base.errors import EmocircuitsError, spell
from emocircuits.core.models import ModelSpec, spec_of


@dataclass(frozen=True)
class SiteInfo:
    """How one abstract site maps onto a hook: template, symbolic shape, and a reading transform."""

    name: str
    gated_hook: str
    plain_hook: str
    shape: tuple[str, ...]
    reads_activation: bool = False  # True: value = act_fn(hook value) on gated MLPs
    writable: bool = True
    doc: str = ""

    def hook(self, spec: ModelSpec) -> str:
        return self.gated_hook if spec.gated_mlp else self.plain_hook


_D = ("batch", "pos", "d_model")


SITES: dict[str, SiteInfo] = {
    s.name: s
    for s in [
        SiteInfo("neuron.gated", "blocks.{L}.mlp.hook_post", "blocks.{L}.mlp.hook_post", ("batch", "pos", "d_mlp"),
                 doc="MLP neuron value: act(gate)*up on gated MLPs, act(pre) otherwise (down-projection input)"),
        SiteInfo("neuron.silu_only", "blocks.{L}.mlp.hook_pre", "blocks.{L}.mlp.hook_post", ("batch", "pos", "d_mlp"),
                 reads_activation=True, writable=False, doc="act(gate) only (what LAPE counts)"),
        SiteInfo("neuron.pre", "blocks.{L}.mlp.hook_pre", "blocks.{L}.mlp.hook_pre", ("batch", "pos", "d_mlp"),
                 doc="gate pre-activation (plain MLPs: the pre-activation)"),
        SiteInfo("head.z", "blocks.{L}.attn.hook_z", "blocks.{L}.attn.hook_z", ("batch", "pos", "n_heads", "d_head"),
                 doc="per-query-head attention output before the output projection"),
        SiteInfo("attn.pattern", "blocks.{L}.attn.hook_pattern", "blocks.{L}.attn.hook_pattern",
                 ("batch", "n_heads", "q_pos", "k_pos"), writable=False, doc="attention probabilities"),
        SiteInfo("attn.out", "blocks.{L}.hook_attn_out", "blocks.{L}.hook_attn_out", _D, doc="attention sublayer output"),
        SiteInfo("mlp.out", "blocks.{L}.hook_mlp_out", "blocks.{L}.hook_mlp_out", _D, doc="MLP sublayer output"),
        SiteInfo("resid.pre", "blocks.{L}.hook_resid_pre", "blocks.{L}.hook_resid_pre", _D, doc="residual before block"),
        SiteInfo("resid.mid", "blocks.{L}.hook_resid_mid", "blocks.{L}.hook_resid_mid", _D, doc="residual after attention"),
        SiteInfo("resid.post", "blocks.{L}.hook_resid_post", "blocks.{L}.hook_resid_post", _D, doc="residual after block"),
        SiteInfo("mlp.in", "blocks.{L}.ln2.hook_out", "blocks.{L}.ln2.hook_out", _D, writable=False,
                 doc="MLP input: resid.mid after the post-attention normalisation (ln2)"),
        SiteInfo("final.norm", "ln_final.hook_out", "ln_final.hook_out", _D, writable=False,
                 doc="normalised final residual (input of the unembedding)"),
    ]
}


# The neuron readings of the emotion-neurons method, by their short names.
READINGS = {"gated": "neuron.gated", "silu_only": "neuron.silu_only", "pre": "neuron.pre"}


def site_info(site: str) -> SiteInfo:
    """The table row of a site name (also accepts the short neuron readings: gated, silu_only, pre)."""
    site = READINGS.get(site, site)
    if site not in SITES:
        raise EmocircuitsError(f"Unknown site {site!r}; known sites are {sorted(SITES)} (or readings {sorted(READINGS)}).")
    return SITES[site]


def check_layer(model: Any, layer: int) -> int:
    n = spec_of(model).n_layers
    if not isinstance(layer, int) or not 0 <= layer < n:
        raise EmocircuitsError(f"Layer {layer!r} is out of range; this model has layers 0..{n - 1}.")
    return layer


def hook_name(model: Any, site: str, layer: int | None) -> str:
    """The bridge hook for ``site`` at ``layer`` (None for ``final.norm``); one sentence if the model lacks it."""
    info = site_info(site)
    template = info.hook(spec_of(model))
    if "{L}" in template:
        check_layer(model, layer)  # type: ignore[arg-type]
    name = template.format(L=layer)
    if name not in model.hook_dict:
        raise EmocircuitsError(
            f"Site {info.name!r} (hook {name}) does not exist on {spec_of(model).architecture}; "
            f"sites available here: {available_sites(model)}."
        )
    return name


def available_sites(model: Any) -> list[str]:
    spec = spec_of(model)
    return [s for s, info in SITES.items() if info.hook(spec).format(L=0) in model.hook_dict]


def reading_fn(model: Any, site: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The transform from the raw hook value to the site's value (identity except ``neuron.silu_only``)."""
    info = site_info(site)
    spec = spec_of(model)
    if info.reads_activation and spec.gated_mlp:
        return activation_fn(spec.act_fn)
    return _identity


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The MLP activation named in the HF config, as a torch function."""
    from transformers.activations import ACT2FN

    if name not in ACT2FN:
        raise EmocircuitsError(f"Unknown activation {name!r}; known: {sorted(ACT2FN)[:12]}...")
    return ACT2FN[name]


def neuron_write_site() -> str:
    """Neuron interventions always write the down-projection input (``neuron.gated``)."""
    return "neuron.gated"




"""Named layer ranges (thirds of the depth, and every layer); see :func:`layer_range`."""


def check_layer_range(name: str, key: str = "layers") -> str:
    """Check a layer range's syntax without a model (``bottom``, ``middle``, ``top``, ``all``, ``A-B``, ``A``)."""
    a, dash, b = str(name).partition("-")
    explicit = a.isdigit() and (b.isdigit() if dash else True)
    if name in LAYER_RANGES or (explicit and int(a) <= int(b or a)):
        return name
    said = (f"Key {key!r} has value {name!r}" if "." in key  # a sweep TOML key
            else f"{spell(key, '--' + key.replace('_', '-'))} {name!r} is not a layer range")
    raise EmocircuitsError(f"{said}; allowed values: {', '.join(LAYER_RANGES)}, "
                           "'A-B' (inclusive, A <= B) or a single layer 'A'.")


def layer_range(n_layers: int, name: str) -> list[int]:
    """Layer ranges of the emotion-neurons sweeps: bottom [0, L/3), middle [L/3, 2L/3), top [2L/3, L), all,
    or an explicit ``A-B`` (inclusive) or a single layer ``A``."""
    third, two_thirds = n_layers // 3, (2 * n_layers) // 3
    named = {"bottom": range(0, third), "middle": range(third, two_thirds), "top": range(two_thirds, n_layers),
             "all": range(n_layers)}
    if name in named:
        return list(named[name])
    try:
        a, _, b = name.partition("-")
        lo, hi = int(a), int(b or a)
    except ValueError:
        raise EmocircuitsError(
            f"Unknown layer range {name!r}; use {', '.join(LAYER_RANGES)}, or A-B with 0 <= A <= B < {n_layers}."
        ) from None
    if not 0 <= lo <= hi < n_layers:
        raise EmocircuitsError(f"Layer range {name!r} is out of range; use A-B with 0 <= A <= B < {n_layers}.")
    return list(range(lo, hi + 1))


@dataclass(frozen=True)
class _BridgePath:
    """A table row naming one bridge module or property by family: path templates (``{L}`` = layer)."""

    name: str
    gated_path: str
    plain_path: str

    def path(self, spec: ModelSpec) -> str:
        return self.gated_path if spec.gated_mlp else self.plain_path


@dataclass(frozen=True)
class WeightInfo(_BridgePath):
    """How one abstract weight maps onto a bridge property: path template (``{L}`` = layer) and shape."""

    shape: tuple[str, ...]
    optional: bool = False  # True: None where the model has no such parameter (bias-free projections)
    doc: str = ""


WEIGHTS: dict[str, WeightInfo] = {
    w.name: w
    for w in [
        WeightInfo("mlp.down", "blocks.{L}.mlp.W_out", "blocks.{L}.mlp.W_out", ("d_mlp", "d_model"),
                   doc="down projection; row n = what neuron n (site neuron.gated) writes into the residual"),
        WeightInfo("mlp.down.bias", "blocks.{L}.mlp.b_out", "blocks.{L}.mlp.b_out", ("d_model",), optional=True,
                   doc="down-projection bias"),
        WeightInfo("attn.o", "blocks.{L}.attn.W_O", "blocks.{L}.attn.W_O", ("n_heads", "d_head", "d_model"),
                   doc="output projection per query head (input: site head.z)"),
        WeightInfo("attn.o.bias", "blocks.{L}.attn.b_O", "blocks.{L}.attn.b_O", ("d_model",), optional=True,
                   doc="output-projection bias"),
        WeightInfo("unembed", "unembed.W_U", "unembed.W_U", ("d_model", "d_vocab"),
                   doc="unembedding (input: site final.norm)"),
        WeightInfo("unembed.bias", "unembed.b_U", "unembed.b_U", ("d_vocab",), optional=True,
                   doc="unembedding bias (zeros on models without one)"),
    ]
}


def weight(model: Any, name: str, layer: int | None = None) -> torch.Tensor | None:
    """A weight by its table name, detached (shares storage with the model: do not modify in place).

    Shapes: ``mlp.down [d_mlp, d_model]``, ``attn.o [n_heads, d_head, d_model]``, ``unembed
    [d_model, d_vocab]``, biases ``[d_model]`` or None. ``layer`` is None for ``unembed``.
    """
    if name not in WEIGHTS:
        raise EmocircuitsError(f"Unknown weight {name!r}; known weights are {sorted(WEIGHTS)}.")
    info, spec = WEIGHTS[name], spec_of(model)
    template = info.path(spec)
    if "{L}" in template:
        check_layer(model, layer)  # type: ignore[arg-type]
    elif layer is not None:
        raise EmocircuitsError(f"Weight {name!r} has no layer; pass layer=None.")
    value: Any = model
    for part in template.format(L=layer).split("."):
        value = getattr(value, part, None)
    if value is None:
        if info.optional:
            return None
        raise EmocircuitsError(f"Weight {name!r} ({template}) does not exist on {spec.architecture}; "
                               "this architecture needs its own row in emocircuits.core.sites.WEIGHTS.")
    expected = tuple(int(getattr(spec, dim)) for dim in info.shape)
    if tuple(value.shape) != expected:
        raise EmocircuitsError(f"Weight {name!r} has shape {tuple(value.shape)} on {spec.architecture} but the "
                               f"table expects {list(info.shape)} = {expected}; fix its row in emocircuits.core.sites.WEIGHTS.")
    return value.detach()


# ----------------------------------------------------------------------------- normalisations
#
# A normalisation as a function, for analyses that need it applied to a residual the model never saw
# (e.g. resid.mid with one head removed). Each row names the bridge module and the sites it maps:
#
# ========  ==========================  ==========================  ===========  ===========
# norm      module (gated MLP)          module (plain MLP)          input site   output site
# ========  ==========================  ==========================  ===========  ===========
# mlp.norm  blocks.L.ln2                blocks.L.ln2                resid.mid    mlp.in
# ========  ==========================  ==========================  ===========  ===========
#
# Llama/Qwen2 use RMSNorm (weight, no bias), GPT-2 LayerNorm (weight and bias); the kind, eps and
# weight convention are read from the bridge module, never assumed from the family.


@dataclass(frozen=True)
class NormInfo(_BridgePath):
    """How one abstract normalisation maps onto a bridge module and the sites before and after it."""

    input_site: str
    output_site: str
    doc: str = ""


NORMS: dict[str, NormInfo] = {
    n.name: n
    for n in [
        NormInfo("mlp.norm", "blocks.{L}.ln2", "blocks.{L}.ln2", "resid.mid", "mlp.in",
                 doc="post-attention normalisation: mlp.in = mlp.norm(resid.mid)"),
    ]
}


@dataclass(frozen=True)
class Norm:
    """One layer's normalisation as a function over the last axis (computed in float64).

    ``kind``: ``rms`` (``x / sqrt(mean(x²) + eps) · w``) or ``layer`` (LayerNorm: ``x`` centred first,
    plus ``b``). ``weight_offset``: the weight is stored as an offset from 1 (Gemma-style RMSNorm).
    """

    kind: str
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float
    weight_offset: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        if self.kind == "layer":
            x = x - x.mean(-1, keepdim=True)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            w = self.weight.double().to(x.device)
            x = x * (1.0 + w if self.weight_offset else w)
        if self.bias is not None:
            x = x + self.bias.double().to(x.device)
        return x


def norm(model: Any, name: str, layer: int) -> Norm:
    """The normalisation ``name`` (a row of :data:`NORMS`) of ``layer`` as a :class:`Norm`, read from the
    bridge module (kind, weight, bias, eps; the weights detached, on CPU)."""
    if name not in NORMS:
        raise EmocircuitsError(f"Unknown normalisation {name!r}; known normalisations are {sorted(NORMS)}.")
    info, spec = NORMS[name], spec_of(model)
    check_layer(model, layer)
    module: Any = model
    for part in info.path(spec).format(L=layer).split("."):
        module = getattr(module, part, None)
    if module is None:
        raise EmocircuitsError(f"Normalisation {name!r} ({info.path(spec)}) does not exist on {spec.architecture}; "
                               "this architecture needs its own row in emocircuits.core.sites.NORMS.")
    original = getattr(module, "original_component", None)
    original = module if original is None else original
    rms = getattr(module, "uses_rms_norm", None)
    if rms is None:
        if isinstance(original, torch.nn.LayerNorm):
            rms = False
        elif "RMSNorm" in type(original).__name__:
            rms = True
        else:
            raise EmocircuitsError(f"Normalisation {name!r} on {spec.architecture} is a {type(original).__name__}, "
                                   "neither LayerNorm nor RMSNorm; add its kind to emocircuits.core.sites.norm.")
    eps = next((getattr(o, a) for o in (original, getattr(model, "cfg", None)) for a in ("eps", "variance_epsilon")
                if o is not None and isinstance(getattr(o, a, None), (int, float))), 1e-5)
    w = getattr(original, "weight", None)
    b = None if rms else getattr(original, "bias", None)
    return Norm("rms" if rms else "layer", None if w is None else w.detach().float().cpu(),
                None if b is None else b.detach().float().cpu(), float(eps),
                bool(getattr(module, "uses_weight_offset", False)))
