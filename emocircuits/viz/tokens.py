"""Token-level views rendered by CircuitsVis, fully offline.

The functions here take precomputed values (see :mod:`emocircuits.methods.tokenviews` for helpers that
compute them on a model) and return a :class:`TokenView`: a CircuitsVis component name plus its
props. A ``TokenView`` renders itself in Jupyter with CircuitsVis' bundled JavaScript inlined —
unlike ``circuitsvis``' own objects it never checks the internet or loads the CDN build — and the
report inlines that JavaScript once for all views.
"""

from __future__ import annotations

import html
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from emocircuits.base.errors import EmocircuitsError
from emocircuits.viz.colors import EMOTION_COLORS, NORMAL_COLOR

#: The CSS class of the element every TokenView renders into (the browser test counts these).
ROOT_CLASS = "ec-circuitsvis"


def _plain(value: Any) -> Any:
    """Tensors and arrays to nested lists of Python numbers; everything else unchanged."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy()
    if isinstance(value, np.ndarray):
        return np.nan_to_num(value.astype(float), nan=0.0).tolist()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


@lru_cache(maxsize=1)
def circuitsvis_js() -> str:
    """CircuitsVis' bundled browser build (defines the global ``CircuitsVis``), safe to inline."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.exists():
        raise EmocircuitsError(f"The circuitsvis package has no bundled JavaScript at {path}; reinstall circuitsvis.")
    # "</script" may only appear inside string literals of the bundle, where "<\/script" means the same.
    return path.read_text(encoding="utf-8").replace("</script", "<\\/script")


@dataclass
class TokenView:
    """A CircuitsVis component with its props, a title and a one-line caption.

    ``to_html(include_js=False)`` gives the snippet a page that already loaded
    :func:`circuitsvis_js` needs; ``_repr_html_`` (Jupyter) includes the JavaScript.
    """

    component: str
    props: dict[str, Any]
    title: str = ""
    caption: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"component": self.component, "props": _plain(self.props), "title": self.title,
                "caption": self.caption, "meta": _plain(self.meta)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenView:
        try:
            return cls(component=str(data["component"]), props=dict(data["props"]), title=str(data.get("title", "")),
                       caption=str(data.get("caption", "")), meta=dict(data.get("meta") or {}))
        except (KeyError, TypeError):
            raise EmocircuitsError("A token view record needs 'component' and 'props'; the file is damaged.") from None

    def to_html(self, *, include_js: bool = False) -> str:
        root = f"ec-cv-{uuid.uuid4().hex[:12]}"
        props = json.dumps(_plain(self.props), allow_nan=False).replace("</", "<\\/")
        head = ""
        if self.title:
            head += f"<div class='ec-cv-title'>{html.escape(self.title)}</div>"
        if self.caption:
            head += f"<div class='ec-cv-caption'>{html.escape(self.caption)}</div>"
        js = f"<script>{circuitsvis_js()}</script>" if include_js else ""
        return (f"<figure class='ec-token-view' data-component='{html.escape(self.component)}'>{head}"
                f"<div id='{root}' class='{ROOT_CLASS}' data-component='{html.escape(self.component)}'></div>{js}"
                f"<script>CircuitsVis.render({json.dumps(root)}, CircuitsVis.{self.component}, {props});</script>"
                "</figure>")

    def _repr_html_(self) -> str:
        return self.to_html(include_js=True)

    def save(self, path: str | Path) -> Path:
        """A standalone HTML page with this view (JavaScript inlined, opens offline)."""
        path = Path(path)
        path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}"
                        f"</title></head><body>{self.to_html(include_js=True)}</body></html>", encoding="utf-8")
        return path


def _check_tokens(str_tokens: Sequence[str], values: Any, what: str) -> tuple[list[str], list[float]]:
    tokens = [str(t) for t in str_tokens]
    vals = _plain(values)
    if not isinstance(vals, list) or (vals and isinstance(vals[0], list)):
        raise EmocircuitsError(f"{what} needs one value per token ([pos]), got shape {np.shape(vals)}.")
    if len(tokens) != len(vals):
        raise EmocircuitsError(f"{what} got {len(tokens)} tokens but {len(vals)} values; pass one value per token.")
    if not tokens:
        raise EmocircuitsError(f"{what} got no tokens; pass a non-empty text.")
    return tokens, [float(v) for v in vals]


def neuron_set_tokens(str_tokens: Sequence[str], values: Any, *, emotion: str | None = None,
                      color: str | None = None, title: str | None = None, caption: str | None = None) -> TokenView:
    """An emotion's neuron set summed over a text, as coloured tokens (hover a token for its value).

    ``values [pos]``: the summed neuron values at each token (see
    :func:`emocircuits.methods.tokenviews.neuron_set_values`). Positive values take the emotion's colour.
    """
    tokens, vals = _check_tokens(str_tokens, values, "neuron_set_tokens")
    bound = max(1e-9, max(abs(v) for v in vals))
    positive = color or EMOTION_COLORS.get(emotion or "", "#0072B2")
    name = f"{emotion} neurons" if emotion else "neuron set"
    top = int(np.argmax(vals))
    return TokenView(
        "ColoredTokens",
        {"tokens": tokens, "values": vals, "minValue": -bound, "maxValue": bound,
         "positiveColor": positive, "negativeColor": NORMAL_COLOR},
        title=title or f"Summed activation of the {name} over a text",
        caption=caption or (f"Colour = sum of the set's neuron values at each token (range ±{bound:.3g}); hover a "
                            f"token for its exact value. Strongest: {tokens[top]!r} = {vals[top]:.4g}."),
        meta={"emotion": emotion},
    )


def top_examples(examples: Sequence[tuple[Sequence[str], Any]], *, layer: int, neuron: int,
                 title: str | None = None, caption: str | None = None) -> TokenView:
    """Top-activating texts for one neuron, most active first, each as coloured tokens.

    ``examples``: ``[(str_tokens, values [pos]), ...]`` (see :func:`emocircuits.methods.tokenviews.top_examples_for`).
    """
    if not examples:
        raise EmocircuitsError("top_examples got no examples; pass at least one (tokens, values) pair.")
    checked = [_check_tokens(t, v, "top_examples") for t, v in examples]
    checked.sort(key=lambda tv: max(tv[1]), reverse=True)
    best = max(checked[0][1])
    return TokenView(
        "TopkSamples",
        {"tokens": [[[t for t, _ in checked]]], "activations": [[[v for _, v in checked]]],
         "zerothDimensionName": "Layer", "firstDimensionName": "Neuron",
         "zerothDimensionLabels": [str(layer)], "firstDimensionLabels": [str(neuron)]},
        title=title or f"Top-activating examples for neuron L{layer}.N{neuron}",
        caption=caption or (f"{len(checked)} texts, most active first (max value {best:.4g}); token colour = the "
                            "neuron's value at that token."),
        meta={"layer": layer, "neuron": neuron},
    )


def attention_heads(str_tokens: Sequence[str], pattern: Any, head_names: Sequence[str] | None = None, *,
                    title: str | None = None, caption: str | None = None) -> TokenView:
    """Attention patterns of chosen heads on one prompt; ``pattern [heads, q_pos, k_pos]`` (probabilities)."""
    tokens = [str(t) for t in str_tokens]
    pat = np.asarray(_plain(pattern), dtype=float)
    if pat.ndim == 2:
        pat = pat[None]
    if pat.ndim != 3 or pat.shape[1] != len(tokens) or pat.shape[2] != len(tokens):
        raise EmocircuitsError(f"attention_heads needs pattern [heads, {len(tokens)}, {len(tokens)}] for "
                               f"{len(tokens)} tokens, got shape {list(pat.shape)}.")
    names = [str(n) for n in head_names] if head_names is not None else [f"head {i}" for i in range(pat.shape[0])]
    if len(names) != pat.shape[0]:
        raise EmocircuitsError(f"attention_heads got {len(names)} head names for {pat.shape[0]} heads.")
    return TokenView(
        "AttentionHeads",
        {"attention": pat.tolist(), "tokens": tokens, "attentionHeadNames": names, "maskUpperTri": True},
        title=title or f"Attention patterns of {', '.join(names)}",
        caption=caption or "Rows: query (destination) token; columns: key (source) token; hover a cell for the "
                           "attention probability. Click a head to enlarge it.",
        meta={"heads": names},
    )
