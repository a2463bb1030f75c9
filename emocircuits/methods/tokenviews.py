"""Compute the values behind the token-level views, on a loaded model, through the public API.

:mod:`emocircuits.viz` draws; this module runs the model (via :func:`emocircuits.core.interventions.observe`
through the forward runner, so no logits are computed) and hands plain tokens and values to the drawing
functions. Texts are used as given, or wrapped in a prompt template (``template="chat"``) to see the
tokens the way the neuron statistics saw them.

    views = [tv.neuron_set_view(model, text, selection, "disgust"),
             tv.top_examples_view(model, texts, layer=3, neuron=17),
             tv.attention_view(model, text, [(2, 0), (2, 1)])]
    run.write_json("token_views", tv.views_document(views))   # the report draws them
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from emocircuits.base.constants import EKMAN6
from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.interventions import observe
from emocircuits.core.models import spec_of
from emocircuits.core.prompts import get_template
from emocircuits.core.runner import Runner
from emocircuits.core.sites import READINGS, check_layer
from emocircuits.core.units import HeadSet, NeuronSet
from emocircuits.viz.tokens import TokenView, attention_heads, neuron_set_tokens, top_examples


def encode(model: Any, text: str, *, template: str | None = None,
           labels: Sequence[str] = EKMAN6) -> tuple[torch.Tensor, list[str]]:
    """``(input_ids [1, pos], str_tokens [pos])`` of ``text``, wrapped in ``template`` when given,
    tokenised by the forward runner (the model's own BOS convention)."""

    if not isinstance(text, str) or not text.strip():
        raise EmocircuitsError("Token views need a non-empty text.")
    tok = model.tokenizer
    chat = False
    if template is not None:

        tpl = get_template(template)
        text = tpl.render(text, labels, tok)
        chat = tpl.kind == "chat"
    ids = Runner(model).encode([text], special=chat)[0]
    return torch.tensor([ids], dtype=torch.long), [tok.decode([i]) for i in ids]


def _site(reading: str) -> str:
    if reading not in READINGS:
        raise EmocircuitsError(f"Unknown reading {reading!r}; use one of {list(READINGS)}.")
    return READINGS[reading]


def _read_neurons(model: Any, input_ids: torch.Tensor, layers: Sequence[int], site: str) -> dict[int, torch.Tensor]:
    """Neuron values ``{layer: [pos, d_mlp]}`` for a single prompt (no logits computed)."""

    got = Runner(model).capture([input_ids[0].tolist()], site, list(layers), positions="all")
    return {layer: v[0] for layer, v in got.items()}


def neuron_set_values(model: Any, text: str, neurons: NeuronSet, *, reading: str = "gated",
                      template: str | None = None) -> tuple[list[str], torch.Tensor]:
    """``(str_tokens, values [pos])``: the sum of the set's neuron values at each token of ``text``."""
    spec = spec_of(model)
    neurons.validate(spec.n_layers, spec.d_mlp)
    if not len(neurons):
        raise EmocircuitsError("The neuron set is empty; select neurons first (e.g. stats.select()).")
    ids, tokens = encode(model, text, template=template)
    got = _read_neurons(model, ids, list(neurons.layers), _site(reading))
    total = torch.zeros(ids.shape[1])
    for layer, idx in neurons.layers.items():
        total += got[layer][:, list(idx)].sum(-1)
    return tokens, total


def neuron_values(model: Any, texts: Sequence[str], layer: int, neuron: int, *, reading: str = "gated",
                  template: str | None = None, progress: bool = True) -> list[tuple[list[str], torch.Tensor]]:
    """``[(str_tokens, values [pos])]``: one neuron's value at every token of each text."""
    from tqdm.auto import tqdm

    spec = spec_of(model)
    check_layer(model, layer)
    if not 0 <= neuron < spec.d_mlp:
        raise EmocircuitsError(f"Neuron index {neuron} is out of range; this model has neurons 0..{spec.d_mlp - 1}.")
    site = _site(reading)
    out = []
    for text in tqdm(list(texts), desc=f"neuron L{layer}.N{neuron}", unit="text", disable=not progress):
        ids, tokens = encode(model, text, template=template)
        out.append((tokens, _read_neurons(model, ids, [layer], site)[layer][:, neuron]))
    return out


def top_examples_for(model: Any, texts: Sequence[str], layer: int, neuron: int, *, k: int = 5,
                     reading: str = "gated", template: str | None = None,
                     progress: bool = True) -> list[tuple[list[str], torch.Tensor]]:
    """The ``k`` texts on which the neuron reaches its highest value, most active first."""
    if k < 1:
        raise EmocircuitsError(f"k={k} is out of range; ask for at least one example.")
    scored = neuron_values(model, texts, layer, neuron, reading=reading, template=template, progress=progress)
    scored.sort(key=lambda tv: float(tv[1].max()), reverse=True)
    return scored[:k]


def head_patterns(model: Any, text: str, heads: Sequence[tuple[int, int]], *,
                  template: str | None = None) -> tuple[list[str], torch.Tensor, list[str]]:
    """``(str_tokens, pattern [n_heads_chosen, q_pos, k_pos], names)`` of the chosen (layer, head)s."""

    spec = spec_of(model)
    chosen = list(dict.fromkeys((int(a), int(b)) for a, b in heads))
    if not chosen:
        raise EmocircuitsError("No heads given; pass (layer, head) pairs such as [(2, 0)].")
    HeadSet(tuple(chosen)).validate(spec.n_layers, spec.n_heads)
    ids, tokens = encode(model, text, template=template)
    layers = sorted({layer for layer, _ in chosen})
    got: dict[int, torch.Tensor] = {}

    def keep(layer: int, value: torch.Tensor) -> None:  # [batch, n_heads, q, k]
        got[layer] = value[0].detach().float().cpu()

    runner = Runner(model)
    with observe(model, "attn.pattern", layers, keep):
        for _ in runner.run(runner.batches([ids[0].tolist()]), stop=("attn.pattern", max(layers))):
            pass
    pattern = torch.stack([got[layer][head] for layer, head in chosen])
    return tokens, pattern, [f"L{layer}H{head}" for layer, head in chosen]


def neuron_set_view(model: Any, text: str, neurons: NeuronSet | Mapping[str, NeuronSet] | Any,
                    emotion: str | None = None, *, reading: str = "gated", template: str | None = None) -> TokenView:
    """Coloured tokens of ``text`` by the summed values of ``neurons`` (or ``selection[emotion]``)."""
    if not isinstance(neurons, NeuronSet):
        if emotion is None:
            raise EmocircuitsError("Pass emotion= to pick one neuron set from a selection.")
        neurons = neurons[emotion]
    tokens, values = neuron_set_values(model, text, neurons, reading=reading, template=template)
    view = neuron_set_tokens(tokens, values, emotion=emotion)
    view.meta.update({"n_neurons": len(neurons), "reading": reading})
    return view


def top_examples_view(model: Any, texts: Sequence[str], layer: int, neuron: int, *, k: int = 5,
                      reading: str = "gated", template: str | None = None, progress: bool = True) -> TokenView:
    """The ``k`` top-activating texts of one neuron as a CircuitsVis top-k view."""
    best = top_examples_for(model, texts, layer, neuron, k=k, reading=reading, template=template, progress=progress)
    return top_examples(best, layer=layer, neuron=neuron)


def attention_view(model: Any, text: str, heads: Sequence[tuple[int, int]], *,
                   template: str | None = None) -> TokenView:
    """Attention patterns of the chosen heads on ``text``."""
    tokens, pattern, names = head_patterns(model, text, heads, template=template)
    return attention_heads(tokens, pattern, names)


def views_document(views: Sequence[TokenView]) -> dict[str, Any]:
    """The ``token_views.json`` document the report reads: ``{"views": [view.to_dict(), ...]}``."""
    return {"views": [v.to_dict() for v in views]}
