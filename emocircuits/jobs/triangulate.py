"""The ``triangulate`` job: Lee's, Wang's and Tak's neurons on one model and one data set, their agreement
against chance, and their masking effects under one protocol (:mod:`emocircuits.methods.triangulate`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from emocircuits.base.constants import TRIANGULATE_SIZES
from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.models import load_for_config
from emocircuits.jobs.common import _check_choice, _check_common, load_job_data
from emocircuits.jobs.neurons import recorded_model
from emocircuits.methods import triangulate as T
from emocircuits.methods.neurons import ASSIGN_MODES, TOKEN_MODES, Selection
from emocircuits.runs.rundir import RunDir

FILES = {
    "sets": "emotion -> method (lee, wang, tak, union, intersection) -> [[layer, index], ...]",
    "agreement": "emotion, a, b, n_a, n_b, n_shared, jaccard, expected (hypergeometric mean k*m/pool), ratio, "
                 "p_value (P(X >= n_shared)), beyond_chance (p < 0.05), pool, expected_layer and p_layer (the same with each "
                 "set's per-layer counts kept: only the neurons within a layer random)",
    "layer_profiles": "emotion, method, layer, count, share (of the set in that layer)",
    "profile_correlations": "emotion, a, b (a method or probe_accuracy), spearman, p_value, n_layers",
    "probes": "Tak's emotion probes on the last-token mlp.out per layer (the inference probe schema)",
    "triangulation_effects": "emotion, method, target (own | others), n, n_neurons, acc_normal, acc_masked, "
                             "masked_low, masked_high (Wilson 95%), acc_control (mean of k_controls matched random "
                             "sets), delta_masked, diff (masked - control), ci_low, ci_high (bootstrap 95% of diff: "
                             "examples and control sets resampled), k_controls, rank_p, floor",
}
"""The files a ``triangulate`` run writes (name → description); the README's schema table repeats them."""


def _count(config: dict[str, Any], key: str, low: int, what: str) -> int:
    value = config.get(key)
    if value is None or int(value) < low:
        raise EmocircuitsError(f"--{key.replace('_', '-')} must be {low} or more {what}, got {value}.")
    return int(value)


def check_config(config: dict[str, Any]) -> dict[str, Any]:
    """Fill the defaults (:data:`TRIANGULATE_SIZES`) and check every number and choice; nothing is read."""
    for key, value in TRIANGULATE_SIZES.items():
        if config.get(key) is None:
            config[key] = value
    _check_choice("activation", config["activation"], ("gated", "silu_only", "pre"))
    _check_choice("tokens", config["tokens"], TOKEN_MODES)
    _check_choice("assign", config["assign"], ASSIGN_MODES)
    if not 0 < float(config["top_rate"]) <= 1:
        raise EmocircuitsError(f"--top-rate {config['top_rate']} is out of range; use a share in (0, 1], e.g. 0.01.")
    _count(config, "train_per_label", 1, "train texts per emotion")
    _count(config, "test_per_label", 1, "test texts per emotion")
    _count(config, "controls", 1, "random control sets per masked set (5 or more give a spread)")
    _count(config, "probe_folds", 2, "CV folds")
    _count(config, "probe_controls", 1, "label permutations")
    _count(config, "n_boot", 1, "bootstrap resamples")
    return config


def run_triangulate(config: dict[str, Any], out: Path, quiet: bool = False, model_pair: Any = None) -> Any:
    """Triangulate on ``config["data"]``: find on its train split (``train_per_label`` per emotion), mask on its
    test split (``test_per_label``); write :data:`FILES` into ``out``. ``config["neurons"]`` (optional): a
    ``neurons find`` run (or its ``neurons.json``) whose sets stand for Lee's instead of finding them here."""
    check_config(config)
    _check_common(config, out, "triangulate")
    lee = None
    if config.get("neurons"):
        lee = Selection.load(config["neurons"])
        _, rec_id, rec_hash = recorded_model(config["neurons"], lee)
        config["lee_model"] = rec_id
    else:
        rec_hash = None
    train_cfg = {**config, "split": "train", "limit_per_label": config["train_per_label"]}
    test_cfg = {**config, "split": "test", "limit_per_label": config["test_per_label"]}
    labels = lee.labels if lee is not None else None
    train = load_job_data(train_cfg, "train", labels=labels, quiet=quiet)
    test = load_job_data(test_cfg, "test", labels=labels or train.labels, quiet=quiet)
    config["train_used"], config["test_used"] = train_cfg["n_per_label"], test_cfg["n_per_label"]
    need = max(2 * int(config["probe_folds"]), 10)
    if len(train) < need:
        raise EmocircuitsError(f"Tak's probes need at least {need} train texts for {config['probe_folds']}-fold CV; "
                               f"there are {len(train)} — raise --train-per-label.")
    bridge, spec = load_for_config(config, quiet, model_pair)
    if lee is not None:
        if rec_hash and spec.weights_hash != rec_hash:
            raise EmocircuitsError(f"--neurons was found on {config['lee_model']}, not on --model {config['model']} "
                                   f"({spec.model_id}); pass the model it was found on.")
        lee.validate(spec.n_layers, spec.d_mlp, model=spec.model_id, source=str(config["neurons"]))
    with RunDir.create(out, command="triangulate", config=config, model_spec=spec, seed=config["seed"]) as run:
        t0 = time.perf_counter()
        res = T.triangulate(bridge, train, test=test, labels=train.labels if lee is None else lee.labels,
                            top_rate=float(config["top_rate"]), assign=config["assign"], reading=config["activation"],
                            tokens=config["tokens"], template=config["template"], lee=lee,
                            probe_folds=int(config["probe_folds"]), probe_controls=int(config["probe_controls"]),
                            controls=int(config["controls"]), seed=int(config["seed"]), n_boot=int(config["n_boot"]),
                            progress=not quiet)
        write_outputs(run, res)
        run.update(timings={"total_s": round(time.perf_counter() - t0, 1)})
    return res


def write_outputs(run: Any, res: T.Triangulation) -> None:
    """The :data:`FILES` of one :class:`~emocircuits.methods.triangulate.Triangulation` and a manifest summary."""
    run.write_json("sets", {e: {m: s.pairs() for m, s in by.items()} for e, by in res.sets.items()}, FILES["sets"])
    run.write_table("agreement", res.agreement, FILES["agreement"])
    run.write_table("layer_profiles", res.profiles, FILES["layer_profiles"])
    run.write_table("profile_correlations", res.correlations, FILES["profile_correlations"])
    run.write_table("probes", res.probes, FILES["probes"])
    if res.effects is not None:
        run.write_table("triangulation_effects", res.effects, FILES["triangulation_effects"])
    summary: dict[str, Any] = {
        "set_sizes": {e: {m: len(s) for m, s in by.items()} for e, by in res.sets.items()},
        "beyond_chance": {f"{r.emotion}:{r.a}-{r.b}": bool(r.beyond_chance) for r in res.agreement.itertuples()},
        "probe_best_layer": int(res.probes.loc[res.probes["cv_mean"].idxmax(), "layer"]) if len(res.probes) else None,
    }
    run.update(summary=summary)


def summary_table(res: Any) -> str:
    """One line per emotion: set size, shared neurons of each pair against chance (p), and each method's
    own-label masking effect against its controls with the 95% CI."""
    lines = []
    for r in res.summary().to_dict("records"):
        pairs = "; ".join(f"{k.replace('_', '-')} {r[k]}" for k in ("lee_wang", "lee_tak", "wang_tak") if k in r)
        drops = ", ".join(f"{m} {r[f'drop_{m}']}" for m in ("lee", "wang", "tak", "union", "intersection")
                          if r.get(f"drop_{m}"))
        lines.append(f"{r['emotion']:<10} k={r['k']:<4} shared: {pairs}\n{'':<10} own-label masked - control: {drops}")
    return "\n".join(lines)
