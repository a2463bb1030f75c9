"""Knockout, activation patching and attribution patching over layer windows (Tak et al. 2025).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from emocircuits.base.constants import KNOCKOUT_SITES, PROBE_SITES
from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.stats import mean_ci, wilson_interval
from emocircuits.core.interventions import (
    GradTap,
    Intervention,
    Noise,
    PatchFrom,
    ScaleSite,
    grad_through_inputs,
)
from emocircuits.core.models import spec_of
from emocircuits.core.runner import Runner
from emocircuits.methods.inference.prepare import (
    KNOCKOUT_MODES,
    Prepared,
    _check_sites,
    capture_sites,
    windows,
)


# ----------------------------------------------------------------------------------- knockout
def knockout(prep: Prepared, *, sites: Sequence[str] = KNOCKOUT_SITES, span: int = 3, mode: str = "zero",
             seed: int = 0, n_boot: int = 1000, stride: int = 1) -> pd.DataFrame:
    """Knock out the last-token output of ``site`` over sliding windows of ``span`` layers (every ``stride``).

    ``mode="zero"``: ``ScaleSite(factor=0)``; ``"noise"``: norm-matched Gaussian noise (seeded per prompt).
    Table: ``site, mode, start, end, unchanged`` (share of predictions equal to the clean ones),
    ``ci_low, ci_high`` (bootstrap over examples, inside [0, 1]), ``accuracy`` (share correct) with
    ``accuracy_low, accuracy_high`` (Wilson 95%), ``n``.
    """
    sites = _check_sites(sites, ("attn.out", "mlp.out", "resid.post", "resid.mid"))
    if mode not in KNOCKOUT_MODES:
        raise EmocircuitsError(f"Knockout mode {mode!r} is not valid; use one of {', '.join(KNOCKOUT_MODES)}.")
    rows = []
    for site in sites:
        for w in windows(spec_of(prep.model).n_layers, span, stride):
            iv: Intervention = (ScaleSite(site, w, 0.0, positions="last") if mode == "zero"
                                else Noise(site, w, positions="last", seed=seed))
            pred = prep.predict(iv).argmax(-1).numpy()
            m, lo, hi = mean_ci((pred == prep.pred).astype(float), n_boot=n_boot, seed=seed)
            hits = int((pred == prep.true).sum())
            a_lo, a_hi = wilson_interval(hits, len(prep))
            rows.append({"site": site, "mode": mode, "start": w[0], "end": w[-1], "unchanged": m, "ci_low": lo,
                         "ci_high": hi, "accuracy": hits / len(prep), "n": len(prep), "accuracy_low": a_lo,
                         "accuracy_high": a_hi})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------- patching
def make_pairs(labels: np.ndarray, n_pairs: int, seed: int = 0) -> np.ndarray:
    """``[n_pairs, 2]`` random (source, target) example indices with different labels (seeded)."""
    labels = np.asarray(labels)
    if n_pairs < 1:
        raise EmocircuitsError(f"Number of pairs must be at least 1 (got {n_pairs}).")
    if len(np.unique(labels)) < 2:
        raise EmocircuitsError("Patching needs examples of at least two labels; load more data.")
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n_pairs:
        s, t = rng.integers(0, len(labels), size=2)
        if labels[s] != labels[t]:
            out.append((int(s), int(t)))
    return np.array(out, dtype=int)


def _pair_sources(acts: Mapping[int, Tensor], pairs: np.ndarray, layers: Sequence[int]) -> dict[int, Tensor]:
    return {layer: acts[layer][pairs[:, 0]] for layer in layers}


def patch(prep: Prepared, *, sites: Sequence[str] = PROBE_SITES, span: int = 3, stride: int = 1, n_pairs: int = 50,
          seed: int = 0,
          pairs: np.ndarray | None = None, n_boot: int = 1000, acts: Mapping[str, Mapping[int, Tensor]] | None = None
          ) -> pd.DataFrame:
    """Activation patching: write each source's last-token activation at ``site`` over a window of layers
    into its target's last token (all pairs in one batched pass per window and site).

    Table: ``site, start, end, flip`` (share now predicting the source's label), ``stay`` (the target's
    clean prediction), ``other``, each with ``*_low, *_high`` bootstrap CIs, ``logit_diff_change`` (mean
    change of target-label minus source-label log-prob, what :func:`attribute` estimates), ``n_pairs``.
    """
    sites = _check_sites(sites, ("attn.out", "mlp.out", "resid.post", "resid.mid", "resid.pre"))
    pairs = make_pairs(prep.pred, n_pairs, seed) if pairs is None else np.asarray(pairs, dtype=int)
    n_layers = spec_of(prep.model).n_layers
    acts = acts or capture_sites(prep.model, prep.token_ids, sites)
    src_lab, tgt_lab = prep.pred[pairs[:, 0]], prep.pred[pairs[:, 1]]
    clean = prep.scores[pairs[:, 1]]
    ar = torch.arange(len(pairs))
    clean_ld = (clean[ar, tgt_lab] - clean[ar, src_lab]).numpy()
    rows = []
    for site in sites:
        for w in windows(n_layers, span, stride):
            iv = PatchFrom(site, _pair_sources(acts[site], pairs, w), positions="last")
            sc = prep.predict(iv, rows=pairs[:, 1].tolist())
            pred = sc.argmax(-1).numpy()
            ld = (sc[ar, tgt_lab] - sc[ar, src_lab]).numpy()
            row: dict[str, Any] = {"site": site, "start": w[0], "end": w[-1]}
            for name, hit in (("flip", pred == src_lab), ("stay", pred == tgt_lab),
                              ("other", (pred != src_lab) & (pred != tgt_lab))):
                m, lo, hi = mean_ci(hit.astype(float), n_boot=n_boot, seed=seed)
                row.update({name: m, f"{name}_low": lo, f"{name}_high": hi})
            row.update({"logit_diff_change": float((ld - clean_ld).mean()), "n_pairs": len(pairs)})
            rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------- attribution
@dataclass
class AttributionResult:
    """``layers``: ``site, layer, estimate`` (mean over pairs of grad·Δact, the first-order change of the
    target-minus-source logit difference); ``heads``: ``layer, head, estimate`` (``head.z``);
    ``per_pair``: ``{site: [n_pairs, n_layers]}``; ``seconds``: wall time."""

    layers: pd.DataFrame
    heads: pd.DataFrame
    per_pair: dict[str, np.ndarray]
    pairs: np.ndarray
    seconds: float

    def windows(self, span: int, stride: int = 1) -> pd.DataFrame:
        """Estimates summed over sliding windows (every ``stride`` layers): ``site, start, end, estimate``."""
        rows = []
        for site, per in self.per_pair.items():
            for w in windows(per.shape[1], span, stride):
                rows.append({"site": site, "start": w[0], "end": w[-1], "estimate": float(per[:, list(w)].sum(1).mean())})
        return pd.DataFrame(rows)


def attribute(prep: Prepared, *, sites: Sequence[str] = PROBE_SITES, heads: bool = True, n_pairs: int = 50,
              seed: int = 0, pairs: np.ndarray | None = None, max_tokens: int = 2048,
              acts: Mapping[str, Mapping[int, Tensor]] | None = None) -> AttributionResult:
    """Attribution patching: for each (source, target) pair, ``∂(logit_tgt − logit_src)/∂a · (a_src − a_tgt)``
    at the target's last token, for every layer of each site (and every head via ``head.z``), from one
    forward + backward per batch of pairs. Source activations come from one clean capture pass."""
    sites = _check_sites(sites, ("attn.out", "mlp.out", "resid.post", "resid.mid", "resid.pre"))
    t0 = time.perf_counter()
    model = prep.model
    n_layers = spec_of(model).n_layers
    layers = list(range(n_layers))
    pairs = make_pairs(prep.pred, n_pairs, seed) if pairs is None else np.asarray(pairs, dtype=int)
    all_sites = list(sites) + (["head.z"] if heads else [])
    if acts is None or any(s not in acts for s in all_sites):
        acts = capture_sites(model, prep.token_ids, all_sites)
    src_lab = torch.as_tensor(prep.pred[pairs[:, 0]])
    tgt_lab = torch.as_tensor(prep.pred[pairs[:, 1]])
    first = torch.tensor(prep.readout.first_ids)
    runner = Runner(model, max_tokens=max_tokens, share_prefix=False, grad=True)
    tgt_ids = [prep.token_ids[int(t)] for t in pairs[:, 1]]
    per_pair = {s: np.zeros((len(pairs), n_layers)) for s in all_sites}
    head_pp = None
    store: dict[tuple[str, int], Tensor] = {}
    req = [p for p in model.parameters() if p.requires_grad]
    for p in req:
        p.requires_grad_(False)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(grad_through_inputs(model))
            for s in all_sites:
                stack.enter_context(GradTap(s, tuple(layers), store).apply(model))
            for step in runner.run(runner.batches(tgt_ids)):
                rows = torch.as_tensor(step.batch.rows)
                logits = runner.logits(step.last())[:, first]  # [b, n_labels]
                ar = torch.arange(len(rows))
                metric = logits[ar, tgt_lab[rows]] - logits[ar, src_lab[rows]]
                metric.sum().backward()
                last = step.batch.last_index - step.offset
                for (s, layer), v in store.items():
                    if v.grad is None:
                        continue
                    g = v.grad[ar, last].detach().float().cpu()
                    a_t = v[ar, last].detach().float().cpu()
                    a_s = acts[s][layer][torch.as_tensor(pairs[rows.numpy(), 0])]
                    contrib = (g * (a_s - a_t))
                    if s == "head.z":
                        hp = contrib.sum(-1).numpy()  # [b, n_heads]
                        if head_pp is None:
                            head_pp = np.zeros((len(pairs), n_layers, hp.shape[1]))
                        head_pp[rows.numpy(), layer] = hp
                        per_pair[s][rows.numpy(), layer] = hp.sum(-1)
                    else:
                        per_pair[s][rows.numpy(), layer] = contrib.flatten(1).sum(-1).numpy()
                store.clear()
    finally:
        for p in req:
            p.requires_grad_(True)
    layer_rows = [{"site": s, "layer": layer, "estimate": float(per_pair[s][:, layer].mean())}
                  for s in all_sites for layer in layers]
    head_rows = ([{"layer": layer, "head": h, "estimate": float(head_pp[:, layer, h].mean())}
                  for layer in layers for h in range(head_pp.shape[2])] if head_pp is not None else [])
    return AttributionResult(pd.DataFrame(layer_rows), pd.DataFrame(head_rows, columns=["layer", "head", "estimate"]),
                             per_pair, pairs, time.perf_counter() - t0)


def compare_attribution(estimates: pd.DataFrame, real: pd.DataFrame) -> pd.DataFrame:
    """Spearman correlation per site between window estimates (``AttributionResult.windows``) and real
    patching's ``logit_diff_change`` over the same windows: ``site, spearman, pvalue, n_windows``."""
    from scipy.stats import spearmanr

    m = estimates.merge(real, on=["site", "start", "end"])
    rows = []
    for site, g in m.groupby("site"):
        if len(g) >= 3 and g["estimate"].std() > 0 and g["logit_diff_change"].std() > 0:
            r, p = spearmanr(g["estimate"], g["logit_diff_change"])
        else:
            r, p = float("nan"), float("nan")
        rows.append({"site": site, "spearman": float(r), "pvalue": float(p), "n_windows": len(g)})
    return pd.DataFrame(rows)
