"""Triangulation: the three papers' neuron-finding methods on one model and one labelled data set.

For every emotion e three MLP-neuron sets of the same size ``k_e`` (the size of Lee's set):

* ``lee``  — Lee et al.: the lowest-entropy neurons assigned to e (:func:`emocircuits.methods.neurons.collect`
  over the train texts, then ``select``; ``k_e`` is whatever the entropy cut gives e).
* ``wang`` — Wang et al.: the top ``k_e`` neurons by mean contribution ``a_n · (W_down v_e(l))_n`` along e's
  direction, averaged over e's train texts at the last prompt token. The data here are labelled texts, not
  SEV skeletons, so the direction is Wang et al.'s formula with one group (the whole train set):
  ``v_e(l) = normalise(μ_e(l) − mean_e' μ_e'(l))``, ``μ_e(l)`` the mean last-token ``resid.post`` of e's texts.
* ``tak``  — Tak et al.: a logistic probe per layer on the last-token MLP output (``mlp.out``, standardised,
  C = 1). Its neurons: ``mlp.out = Σ_n a_n W_down[n]`` (+ a bias), so neuron n adds ``a_n · (W_down[n] · w_e)``
  to the probe's logit for e (``w_e``: e's probe weights in raw activation space, centred over emotions, which
  leaves the softmax unchanged). The score is that logit contribution with the neuron's mean over all train
  texts taken out (the probe's intercept absorbs a constant; without this, neurons with large constant values
  in the early layers won the ranking), averaged over e's train texts; the top ``k_e`` over all layers form
  the set. The per-layer probe accuracy is Tak's layer profile.

Agreement: for every pair of sets the shared count and Jaccard beside the chance overlap of two random sets
of those sizes from the same pool of ``N = n_layers · d_mlp`` neurons: hypergeometric, mean ``k·m/N`` and
upper tail ``P(X ≥ observed)`` (:func:`chance_overlap`), and the same with each set's per-layer counts
granted (:func:`layer_matched_chance`: the methods all favour the late layers, so overlap beyond the uniform
chance may be only that shared preference). Layer profiles: each set's share per layer; Spearman
correlation between profiles (and with the probe accuracy per layer).

Causal effect (:func:`mask_effects`): each method's set, their union and their intersection, zeroed at every
position (``ZeroNeurons`` through :class:`~emocircuits.methods.neurons.MaskingEngine`: the package's label
readout, first-token, uncalibrated) on one held-out split, against ``K`` random controls with the same
per-layer counts, disjoint from the set (:func:`emocircuits.methods.neurons.random_control`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from emocircuits.base.constants import (
    CHANCE_ALPHA,
    DEFAULT_TEMPLATE,
    FLOOR_ACC,
    PROBE_SEED,
    TRIANGULATION_COMBINED,
    TRIANGULATION_METHODS,
)
from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.seeds import derive_seed
from emocircuits.base.stats import bootstrap_ci, rank_p, wilson_interval
from emocircuits.core.models import spec_of
from emocircuits.core.readout import LabelReadout
from emocircuits.core.sites import weight
from emocircuits.core.units import NeuronSet
from emocircuits.methods.circuits.directions import directions_from_groups
from emocircuits.methods.circuits.local_components import neuron_contributions
from emocircuits.methods.inference.probes import probe_activations
from emocircuits.methods.neurons.find import Selection, _label_indices, _labels_of, collect, random_control
from emocircuits.methods.neurons.masking import MaskingEngine

METHODS = TRIANGULATION_METHODS
COMBINED = TRIANGULATION_COMBINED
TARGETS: tuple[str, ...] = ("own", "others")
"""Texts a masking effect is measured on: the masked emotion's own texts, and every other label's."""


# ----------------------------------------------------------------------------- chance and agreement
def chance_overlap(n_pool: int, k: int, m: int, observed: int) -> tuple[float, float]:
    """Overlap of two sets of sizes ``k`` and ``m`` drawn at random from ``n_pool`` items:
    ``(expected, p)`` with ``expected = k·m / n_pool`` (the hypergeometric mean) and ``p = P(X ≥ observed)``
    (exact upper tail, ``scipy.stats.hypergeom``). ``p`` is 1 for ``observed <= 0``."""
    from scipy.stats import hypergeom

    if n_pool < 1 or not 0 <= k <= n_pool or not 0 <= m <= n_pool:
        raise EmocircuitsError(f"Set sizes {k} and {m} must lie in 0..{n_pool} (the pool) for a chance overlap.")
    expected = k * m / n_pool
    p = 1.0 if observed <= 0 else float(hypergeom.sf(observed - 1, n_pool, k, m))
    return expected, p


def layer_matched_chance(d_mlp: int, k_layers: Sequence[int], m_layers: Sequence[int], observed: int
                         ) -> tuple[float, float]:
    """Chance overlap when each set keeps its per-layer counts (``k_layers``, ``m_layers``: neurons per layer) and
    only the neurons within a layer are random: ``X = Σ_l X_l``, ``X_l ~ Hypergeom(d_mlp, k_l, m_l)`` independent.
    Returns ``(expected = Σ_l k_l m_l / d_mlp, P(X ≥ observed))`` (the pmfs convolved exactly). Two sets that
    both favour the same layers share more than :func:`chance_overlap` expects; this is the chance that
    remains once the layer preference is granted."""
    from scipy.stats import hypergeom

    pmf = np.ones(1)
    for k, m in zip(k_layers, m_layers, strict=True):
        if k and m:
            pmf = np.convolve(pmf, hypergeom.pmf(np.arange(min(k, m) + 1), d_mlp, k, m))
    expected = float(sum(k * m for k, m in zip(k_layers, m_layers, strict=True)) / d_mlp)
    p = 1.0 if observed <= 0 else float(min(1.0, pmf[observed:].sum()))
    return expected, p


def agreement(sets: Mapping[str, Mapping[str, NeuronSet]], n_pool: int, d_mlp: int | None = None) -> pd.DataFrame:
    """Pairwise agreement of the methods' sets ``sets[emotion][method]``.

    Columns ``emotion, a, b, n_a, n_b, n_shared, jaccard, expected`` (chance mean), ``ratio`` (shared /
    expected), ``p_value`` (hypergeometric upper tail), ``beyond_chance`` (p < ``CHANCE_ALPHA``), ``pool``;
    with ``d_mlp`` also ``expected_layer, p_layer`` (:func:`layer_matched_chance`)."""
    rows = []
    n_layers = n_pool // d_mlp if d_mlp else 0
    for emotion, by_method in sets.items():
        names = [m for m in METHODS if m in by_method]
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                sa, sb = by_method[a], by_method[b]
                shared = len(sa.intersection(sb))
                union = len(sa) + len(sb) - shared
                expected, p = chance_overlap(n_pool, len(sa), len(sb), shared)
                rows.append({"emotion": emotion, "a": a, "b": b, "n_a": len(sa), "n_b": len(sb), "n_shared": shared,
                             "jaccard": shared / union if union else 0.0, "expected": expected,
                             "ratio": shared / expected if expected > 0 else math.nan, "p_value": p,
                             "beyond_chance": bool(p < CHANCE_ALPHA), "pool": n_pool})
                if d_mlp:
                    e_l, p_l = layer_matched_chance(d_mlp, sa.counts(n_layers), sb.counts(n_layers), shared)
                    rows[-1].update({"expected_layer": e_l, "p_layer": p_l})
    return pd.DataFrame(rows)


def layer_profiles(sets: Mapping[str, Mapping[str, NeuronSet]], n_layers: int) -> pd.DataFrame:
    """Where each set sits: ``emotion, method, layer, count, share`` (share of the set in the layer; 0 for an
    empty set)."""
    rows = []
    for emotion, by_method in sets.items():
        for method, s in by_method.items():
            counts = s.counts(n_layers)
            total = sum(counts)
            rows += [{"emotion": emotion, "method": method, "layer": layer, "count": c,
                      "share": c / total if total else 0.0} for layer, c in enumerate(counts)]
    return pd.DataFrame(rows)


def _spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from scipy.stats import spearmanr

    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan  # a constant profile has no ranks to correlate
    r = spearmanr(x, y)
    return float(r.statistic), float(r.pvalue)


def profile_correlations(profiles: pd.DataFrame, probe_accuracy: Sequence[float] | None = None) -> pd.DataFrame:
    """Spearman rank correlation of per-layer profiles: every pair of methods' shares per layer, and each
    method's shares against the probe accuracy per layer (``b = "probe_accuracy"``). Columns ``emotion, a, b,
    spearman, p_value, n_layers`` (NaN where a profile is constant)."""
    rows = []
    for emotion, d in profiles.groupby("emotion", sort=False):
        shares = {m: g.sort_values("layer")["share"].to_numpy() for m, g in d.groupby("method", sort=False)
                  if m in METHODS}
        names = [m for m in METHODS if m in shares]
        pairs = [(a, b, shares[a], shares[b]) for i, a in enumerate(names) for b in names[i + 1:]]
        if probe_accuracy is not None:
            acc = np.asarray(probe_accuracy, dtype=float)
            pairs += [(a, "probe_accuracy", shares[a], acc) for a in names]
        for a, b, x, y in pairs:
            rho, p = _spearman(x, y)
            rows.append({"emotion": emotion, "a": a, "b": b, "spearman": rho, "p_value": p, "n_layers": len(x)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- the three selections
def top_neurons(scores: torch.Tensor, k: int) -> NeuronSet:
    """The ``k`` largest of ``scores [n_layers, d_mlp]`` as a NeuronSet (ties: lower (layer, index) first)."""
    if k <= 0:
        return NeuronSet({})
    flat = scores.reshape(-1).double().numpy()
    order = np.lexsort((np.arange(flat.size), -flat))[:k]  # descending score, then ascending position
    d_mlp = scores.shape[1]
    return NeuronSet.from_pairs([(int(i) // d_mlp, int(i) % d_mlp) for i in order])


def wang_scores(gated: Mapping[int, torch.Tensor], resid: Mapping[int, torch.Tensor], y: np.ndarray,
                w_down: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """Wang et al.'s neuron contributions: ``[n_emotions, n_layers, d_mlp]``.

    ``gated[l] [n, d_mlp]`` and ``resid[l] [n, d_model]`` are last-token readings of ``neuron.gated`` and
    ``resid.post``, ``y [n]`` label indices (every emotion present), ``w_down[l] [d_mlp, d_model]``.
    ``v_e(l)`` from :func:`directions_from_groups` on the class means (one group); score = mean over e's texts
    of ``a_n · (W_down v_e(l))_n``."""
    n_e = int(y.max()) + 1
    layers = sorted(gated)
    out = torch.zeros(n_e, len(layers), gated[layers[0]].shape[1])
    for li, layer in enumerate(layers):
        r = resid[layer].double()
        means = torch.stack([r[torch.from_numpy(y == e)].mean(0) for e in range(n_e)])  # [E, d_model]
        v = directions_from_groups(means[None])  # [E, d_model], unit
        for e in range(n_e):
            rows = torch.from_numpy(y == e)
            out[e, li] = neuron_contributions(gated[layer][rows], w_down[layer], v[e]).mean(0)
    return out


def tak_scores(gated: Mapping[int, torch.Tensor], probe_w: Mapping[int, torch.Tensor], y: np.ndarray,
               w_down: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """Neurons' contributions to the ``mlp.out`` probes' logits: ``[n_emotions, n_layers, d_mlp]``.

    ``probe_w[l] [n_emotions, d_model]``: probe weights in raw ``mlp.out`` space; they are centred over
    emotions first. Score = mean over e's texts of ``(a_n − ā_n) · (W_down[n] · w_e(l))``, ``ā_n`` the mean over
    all texts: the probe's logit is ``w_e · (x − μ)`` plus an intercept, so a neuron's constant part (which the
    intercept absorbs) earns it nothing, and the scores over all neurons sum to e's mean logit minus the
    intercept (exactly, bias or not)."""
    n_e = int(y.max()) + 1
    layers = sorted(gated)
    out = torch.zeros(n_e, len(layers), gated[layers[0]].shape[1])
    for li, layer in enumerate(layers):
        w = probe_w[layer].double()
        w = w - w.mean(0, keepdim=True)
        a = gated[layer].double()
        a = a - a.mean(0, keepdim=True)
        for e in range(n_e):
            rows = torch.from_numpy(y == e)
            out[e, li] = neuron_contributions(a[rows], w_down[layer], w[e]).mean(0)
    return out


@dataclass
class Triangulation:
    """Result of :func:`triangulate`.

    ``sets``: ``{emotion: {method: NeuronSet}}`` for ``lee, wang, tak, union, intersection``.
    ``agreement``: :func:`agreement`; ``profiles``: :func:`layer_profiles` (union and intersection included);
    ``correlations``: :func:`profile_correlations`; ``probes``: the ``mlp.out`` probe table
    (:func:`emocircuits.methods.inference.probes.probe_activations`, one row per layer); ``effects``:
    :func:`mask_effects` (None when masking was not run); ``config``: the settings.
    """

    sets: dict[str, dict[str, NeuronSet]]
    agreement: pd.DataFrame
    profiles: pd.DataFrame
    correlations: pd.DataFrame
    probes: pd.DataFrame
    effects: pd.DataFrame | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> pd.DataFrame:
        """One row per emotion: set size, each pair's shared count / chance mean / p, and (when masking ran)
        each method's own-label ``diff`` with its CI."""
        rows = []
        for emotion, by_method in self.sets.items():
            row: dict[str, Any] = {"emotion": emotion, "k": len(by_method["lee"]),
                                   "union": len(by_method["union"]), "intersection": len(by_method["intersection"])}
            for r in self.agreement[self.agreement.emotion == emotion].itertuples():
                row[f"{r.a}_{r.b}"] = f"{r.n_shared} (chance {r.expected:.2f}, p {r.p_value:.2g})"
            if self.effects is not None:
                own = self.effects[(self.effects.emotion == emotion) & (self.effects.target == "own")]
                for r in own.itertuples():
                    row[f"drop_{r.method}"] = (f"{r.diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
                                               if not math.isnan(r.diff) else "")
            rows.append(row)
        return pd.DataFrame(rows)


def combined_sets(by_method: Mapping[str, NeuronSet]) -> dict[str, NeuronSet]:
    """``by_method`` plus ``union`` and ``intersection`` of the :data:`METHODS` sets."""
    sets = [by_method[m] for m in METHODS]
    union, inter = sets[0], sets[0]
    for s in sets[1:]:
        union, inter = union.union(s), inter.intersection(s)
    return {**by_method, "union": union, "intersection": inter}


def triangulate(model: Any, train: Sequence[Any], *, test: Sequence[Any] | None = None,
                labels: Sequence[str] | None = None, top_rate: float = 0.01, assign: str = "argmax", reading: str = "gated",
                tokens: str = "all", template: str = DEFAULT_TEMPLATE, lee: Selection | None = None,
                probe_c: float = 1.0, probe_folds: int = 3, probe_controls: int = 2, probe_seed: int = PROBE_SEED,
                controls: int = 5, seed: int = 0, n_boot: int = 1000, max_tokens: int = 4096,
                progress: bool = True) -> Triangulation:
    """Run the three methods on ``train`` and (with ``test``) mask every set on ``test``; see the module doc.

    ``lee``: an existing Lee selection (e.g. a ``neurons find`` run) instead of collecting statistics here;
    its sets fix ``k_e``. ``probe_*``: Tak's ``mlp.out`` probes (C, CV folds, label-permutation controls,
    seed). ``controls``: K random controls per masked set; ``n_boot``: bootstrap resamples."""
    spec = spec_of(model)
    labs = _labels_of(train, labels)
    y = _label_indices(train, labs).numpy()
    missing = [lab for i, lab in enumerate(labs) if not (y == i).any()]
    if missing:
        raise EmocircuitsError(f"The train texts have no example of {missing}; every emotion needs texts to "
                               "compute its direction and probe.")
    if lee is None:
        stats = collect(model, train, reading=reading, tokens=tokens, template=template, labels=labs,
                        max_tokens=max_tokens, progress=progress)
        lee = stats.select(top_rate=top_rate, assign=assign)
    lee.validate(spec.n_layers, spec.d_mlp, model=spec.model_id)
    if tuple(lee.labels) != tuple(labs):
        raise EmocircuitsError(f"The Lee selection's emotions {list(lee.labels)} differ from the data's {list(labs)}; "
                               "find the neurons with the same label scheme.")
    layers = list(range(spec.n_layers))
    readout = LabelReadout(model, labs, template, max_tokens=max_tokens)
    got = readout.runner.capture_last(readout.encode(list(train)),
                                      {"neuron.gated": layers, "resid.post": layers, "mlp.out": layers})
    w_down = {layer: weight(model, "mlp.down", layer).detach().float().cpu() for layer in layers}
    wang = wang_scores(got["neuron.gated"], got["resid.post"], y, w_down)
    probes = probe_activations({"mlp.out": got["mlp.out"]}, y, labs, c=probe_c, seed=probe_seed, folds=probe_folds,
                               controls=probe_controls, n_boot=n_boot)
    probe_w = {layer: torch.stack([probes.emotion_directions[e].vector("mlp.out", layer) for e in labs])
               for layer in layers}
    tak = tak_scores(got["neuron.gated"], probe_w, y, w_down)
    sets: dict[str, dict[str, NeuronSet]] = {}
    for j, e in enumerate(labs):
        k = len(lee.sets.get(e, NeuronSet({})))
        sets[e] = combined_sets({"lee": lee.sets.get(e, NeuronSet({})), "wang": top_neurons(wang[j], k),
                                 "tak": top_neurons(tak[j], k)})
    n_pool = spec.n_layers * spec.d_mlp
    profiles = layer_profiles(sets, spec.n_layers)
    table = probes.table.sort_values("layer").reset_index(drop=True)
    correlations = profile_correlations(profiles, table["cv_mean"].to_numpy())
    config = {"top_rate": top_rate, "assign": assign, "reading": reading, "tokens": tokens, "template": template,
              "probe_site": "mlp.out", "probe_c": probe_c, "probe_folds": probe_folds,
              "probe_controls": probe_controls, "probe_seed": probe_seed, "controls": controls, "seed": seed,
              "n_boot": n_boot, "n_train": len(train), "n_test": len(test) if test is not None else 0,
              "pool": n_pool, "lee_config": dict(lee.config)}
    result = Triangulation(sets, agreement(sets, n_pool, spec.d_mlp), profiles, correlations, table, None, config)
    if test is not None:
        result.effects = mask_effects(model, test, sets, labels=labs, controls=controls, seed=seed, n_boot=n_boot,
                                      template=template, max_tokens=max_tokens, progress=progress)
    return result


# ----------------------------------------------------------------------------- masking under one protocol
def control_sets(neurons: NeuronSet, d_mlp: int, k: int, seed: int, *key: Any) -> list[NeuronSet]:
    """``k`` random sets with ``neurons``' per-layer counts, each disjoint from it, seeded by ``seed`` and
    ``key`` (:func:`emocircuits.methods.neurons.random_control`)."""
    return [random_control(neurons, d_mlp, derive_seed(seed, "triangulate", *key, i)) for i in range(k)]


def mask_effects(model: Any, test: Sequence[Any], sets: Mapping[str, Mapping[str, NeuronSet]], *,
                 labels: Sequence[str] | None = None, controls: int = 5, seed: int = 0, n_boot: int = 1000,
                 template: str = DEFAULT_TEMPLATE, max_tokens: int = 4096, progress: bool = True,
                 engine: MaskingEngine | None = None) -> pd.DataFrame:
    """Mask every set ``sets[emotion][method]`` on ``test`` with ``controls`` matched random sets each.

    One row per (emotion, method, target) with target ``own`` (texts of the masked emotion) and ``others``
    (every other text): ``n, n_neurons, acc_normal, acc_masked`` with ``masked_low, masked_high`` (Wilson 95%,
    inside [0, 1]), ``acc_control`` (mean of the K controls), ``delta_masked`` (masked − normal),
    ``diff`` (masked − control) with ``ci_low, ci_high`` (:func:`emocircuits.base.stats.bootstrap_ci`: examples
    and control sets resampled), ``k_controls, rank_p, floor`` (clean accuracy < ``FLOOR_ACC``). An empty set
    (e.g. an empty intersection) gets a row with ``n_neurons`` 0 and NaN effects."""
    if controls < 1:
        raise EmocircuitsError(f"controls must be 1 or more random sets per masked set (5 or more give a spread), "
                               f"got {controls}.")
    spec = spec_of(model)
    engine = engine or MaskingEngine(model, test, labels=labels, template=template, max_tokens=max_tokens,
                                     progress=progress)
    y, labs = engine.y, engine.labels
    normal_ok = (engine.clean == y).astype(float)
    jobs: list[tuple[str, str]] = []
    to_run: list[NeuronSet] = []
    for emotion, by_method in sets.items():
        for method in (*METHODS, *COMBINED):
            s = by_method.get(method)
            if s is None or not len(s):
                continue
            jobs.append((emotion, method))
            to_run += [s, *control_sets(s, spec.d_mlp, controls, seed, emotion, method)]
    preds = engine.evaluate(to_run, desc="triangulation masks") if to_run else np.zeros((0, len(y)), dtype=np.int64)
    done = {job: preds[i * (controls + 1):(i + 1) * (controls + 1)] for i, job in enumerate(jobs)}
    rows = []
    for emotion, by_method in sets.items():
        if emotion not in labs:
            raise EmocircuitsError(f"Emotion {emotion!r} is not a label of the test texts ({', '.join(labs)}).")
        e_i = labs.index(emotion)
        for method in (*METHODS, *COMBINED):
            s = by_method.get(method, NeuronSet({}))
            block = done.get((emotion, method))
            for target in TARGETS:
                m = (y == e_i) if target == "own" else (y != e_i)
                row: dict[str, Any] = {"emotion": emotion, "method": method, "target": target, "n": int(m.sum()),
                                       "n_neurons": len(s), "acc_normal": float(normal_ok[m].mean()) if m.any()
                                       else math.nan, "k_controls": controls}
                if block is None or not m.any():
                    row.update({k: math.nan for k in ("acc_masked", "masked_low", "masked_high", "acc_control",
                                                      "delta_masked", "diff", "ci_low", "ci_high", "rank_p")})
                else:
                    masked_ok = (block[0] == y).astype(float)
                    control_ok = (block[1:] == y[None, :]).astype(float)
                    acc_m, acc_ck = float(masked_ok[m].mean()), control_ok[:, m].mean(1)
                    lo_m, hi_m = wilson_interval(float(masked_ok[m].sum()), float(m.sum()))
                    lo, hi = bootstrap_ci(normal_ok[m], masked_ok[m], control_ok[:, m], n_boot=n_boot,
                                          seed=derive_seed(seed, "triangulate-boot", emotion, method, target))
                    row.update({"acc_masked": acc_m, "masked_low": lo_m, "masked_high": hi_m,
                                "acc_control": float(acc_ck.mean()), "delta_masked": acc_m - row["acc_normal"],
                                "diff": acc_m - float(acc_ck.mean()), "ci_low": lo, "ci_high": hi,
                                "rank_p": rank_p(acc_m, acc_ck)})
                row["floor"] = bool(row["acc_normal"] < FLOOR_ACC) if m.any() else True
                rows.append(row)
    return pd.DataFrame(rows)
