"""The ``neurons find`` and ``neurons mask`` jobs (Lee et al.): typed config in, run directory out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emocircuits.base.constants import DEFAULT_CONTROLS, FLOOR_ACC, LARGE_WORK, STABILITY_RESAMPLES
from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.models import _EMBEDDED_ID, TINY_ARCHS, load_for_config
from emocircuits.core.sites import layer_range
from emocircuits.jobs.common import _check_choice, _check_common, check_made_on, load_job_data
from emocircuits.methods import neurons
from emocircuits.methods.neurons.find import NeuronStats
from emocircuits.runs.rundir import RunDir, read_tensors


def run_find(config: dict[str, Any], out: Path, quiet: bool = False, model_pair: Any = None) -> Any:
    """Collect statistics, select neurons, and write the find outputs into ``out``.

    ``config["stability"]``: bootstrap resamples for ``stability.parquet`` (default ``STABILITY_RESAMPLES``,
    0 = none); ``config["tokens"]``: the span counted, all | text | last."""

    _check_choice("activation", config["activation"], ("gated", "silu_only", "pre"))
    _check_choice("tokens", config["tokens"], neurons.TOKEN_MODES)
    _check_choice("assign", config["assign"], neurons.ASSIGN_MODES)
    if not 0 < float(config["top_rate"]) <= 1:
        raise EmocircuitsError(f"--top-rate {config['top_rate']} is out of range; use a share in (0, 1], e.g. 0.01.")
    n_resamples = int(config.get("stability", STABILITY_RESAMPLES))
    if n_resamples < 0:
        raise EmocircuitsError(f"--stability must be 0 (skip) or more bootstrap resamples, got {n_resamples}.")
    _check_common(config, out, "neurons find")
    data = load_job_data(config, "train", quiet=quiet)
    bridge, spec = load_for_config(config, quiet, model_pair)
    with RunDir.create(out, command="neurons find", config=config, model_spec=spec, seed=config["seed"]) as run:
        stats = neurons.collect(bridge, data, reading=config["activation"], tokens=config["tokens"],
                                template=config["template"], prepend_bos=config.get("prepend_bos"),
                                chunks=neurons.STABILITY_CHUNKS if n_resamples else 0, progress=not quiet)
        sel = stats.select(top_rate=config["top_rate"], assign=config["assign"])
        stability = (neurons.selection_stability(stats, sel, n_resamples=n_resamples, seed=config["seed"])
                     if n_resamples else None)
        write_find_outputs(run, stats, sel, stability)
    return stats, sel


def write_find_outputs(run: Any, stats: Any, sel: Any, stability: Any = None) -> None:
    """neurons.json, neuron_stats.safetensors, neuron_summary.parquet, layer_counts.parquet, overlap.parquet,
    and stability.parquet when ``stability`` (:func:`emocircuits.methods.neurons.selection_stability`) is given."""
    import numpy as np
    import pandas as pd

    run.write_json("neurons", sel.to_json(), "emotion -> [[layer, index], ...] plus ranked lists and config")
    tensors = stats.tensors()
    run.write_tensors("neuron_stats", tensors, "counts, totals, P, P_hat, entropy over [n_layers, d_mlp, emotions]")
    h = tensors["entropy"].numpy()
    p = tensors["P"].numpy()
    members: dict[tuple[int, int], list[str]] = {}
    for e, s in sel.sets.items():
        for layer, i in s.pairs():
            members.setdefault((layer, i), []).append(e)
    keys = sorted(members, key=lambda k: (h[k], k))
    rows = []
    for rank, (layer, i) in enumerate(keys, start=1):
        row = {"layer": layer, "neuron": i, "entropy": float(h[layer, i]), "emotions": ",".join(members[(layer, i)]),
               "rank": rank}
        row.update({f"p_{e}": float(p[layer, i, j]) for j, e in enumerate(stats.labels)})
        rows.append(row)
    summary = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["layer", "neuron", "entropy", "emotions", "rank"])
    run.write_table("neuron_summary", summary, "one row per selected neuron: layer, neuron, entropy, emotions, rank (1 = lowest entropy), p_<emotion>")
    run.write_table("layer_counts", sel.layer_table(), "emotion, layer, count")
    run.write_table("overlap", sel.overlap(), "a, b, n_a, n_b, n_shared, jaccard, overlap_min")
    summary = {"n_selected": {e: len(s) for e, s in sel.sets.items()}, "never_active_share": float(np.isinf(h).mean()),
               "n_tied_at_cut": sel.config.get("n_tied_at_cut"), "n_tied_kept": sel.config.get("n_tied_kept")}
    if stability is not None:
        run.write_table("stability", stability, "bootstrap over texts: emotion, n_neurons, jaccard_mean, jaccard_low, "
                        "jaccard_high (Jaccard with the full-data set), n_resamples, n_chunks")
        summary["stability_jaccard_mean"] = dict(zip(stability.emotion, map(float, stability.jaccard_mean), strict=True))
    run.update(summary=summary)


def run_mask(config: dict[str, Any], out: Path, quiet: bool = False, model_pair: Any = None,
             selection: Any = None) -> Any:
    """Mask each emotion's neurons on a dataset with random controls; write the mask tables into ``out``."""

    # every option is checked before the data is read or a model loads
    _check_choice("ratio-mode", config["ratio_mode"], neurons.RATIO_MODES)
    config.setdefault("controls", DEFAULT_CONTROLS)
    if int(config["controls"]) < 0:
        raise EmocircuitsError(f"--controls must be 0 or more random neuron sets per emotion, got {config['controls']}.")
    ratio = config.get("ratio")
    if ratio is not None and not 0 < float(ratio) <= 1:
        raise EmocircuitsError(f"--ratio {ratio} is out of range; use a share in (0, 1], e.g. 0.03, or leave it out "
                               "to mask the selected sets.")
    _check_common(config, out, "neurons mask")
    sel = selection or neurons.Selection.load(config["neurons"])
    source = "the selection" if selection is not None else _neurons_file(config["neurons"])
    emotions = config.get("emotions") or list(sel.labels)
    unknown = [e for e in emotions if e not in sel.sets]
    if unknown:
        raise EmocircuitsError(f"--emotion {', '.join(unknown)} has no neuron set in {source}; it has "
                               f"{', '.join(sel.sets)}.")
    rec_spec, rec_id, _ = (None, None, None) if selection is not None else recorded_model(config["neurons"], sel)
    layer_range(sel.n_layers, config["layers"])  # syntax, and the range of the model the neurons were found on
    sel.validate(sel.n_layers, sel.d_mlp, model=f"the model it was found on ({rec_id or 'unrecorded'})", source=source,
                 fix="fix the file or re-create it with `emocircuits neurons find`.")
    stats = None
    if config["ratio_mode"] == "reselect" and ratio is not None:
        stats = load_find_stats(config.get("neurons"), sel, source)
    # a set that masks nothing would report a drop of exactly 0 as if measured: an emotion asked for by name is
    # refused, one of "every emotion" is left out with a note (and recorded); none left is refused
    empty = [e for e in emotions if not len(neurons.condition_set(
        sel, neurons.Condition(e, config["layers"], ratio, config["ratio_mode"]), stats))]
    if empty and (config.get("emotions") or len(empty) == len(emotions)):
        e = empty[0]
        fix = (f"use a larger --ratio (the set has {len(sel.sets[e])} neurons)" if ratio is not None and
               len(sel.sets[e]) else "choose other --layers or emotions, or re-run `emocircuits neurons find` "
               "with a larger --top-rate")
        raise EmocircuitsError(f"--emotion {e}: no neuron of {source} is left to mask (layers {config['layers']}"
                               + (f", ratio {ratio:g}" if ratio is not None else "") + f"); {fix}.")
    if empty:
        import sys

        emotions = [e for e in emotions if e not in empty]
        config["left_out"] = {e: "no neuron to mask" for e in empty}
        print(f"note: {', '.join(empty)} left out: {source} has no neuron of "
              f"{'them' if len(empty) > 1 else 'it'} to mask (layers {config['layers']}).", file=sys.stderr)
    if config.get("labels") and [str(x).strip().lower() for x in config["labels"]] != list(sel.labels):
        raise EmocircuitsError(f"--labels {','.join(config['labels'])} differs from the neurons' emotions "
                               f"{','.join(sel.labels)}; masking reads the scheme the neurons were found with.")
    if selection is None:
        check_made_on(config, [(source, neurons_made_on(config["neurons"], sel))])
    data = load_job_data(config, "test", labels=sel.labels, quiet=quiet)
    passes = 1 + len(emotions) * (1 + int(config["controls"]))
    if int(config["controls"]) >= LARGE_WORK:
        import sys

        print(f"planned work: 1 clean + {len(emotions)} emotions x (1 masked + {config['controls']} controls) = "
              f"{passes} passes over {len(data)} examples ({passes * len(data)} example-passes).", file=sys.stderr)
    given = config.get("model")
    config["model"] = given or rec_spec or "default"
    bridge, spec = load_for_config(config, quiet, model_pair)
    if selection is None:
        check_made_on(config, [(source, neurons_made_on(config["neurons"], sel))], spec)
    layer_range(spec.n_layers, config["layers"])  # validate before any pass
    sel.validate(spec.n_layers, spec.d_mlp, model=spec.model_id, source=source,
                 fix=(f"these neurons were found on {rec_id}: leave --model out to use it, or re-run "
                      f"`emocircuits neurons find --model {config['model']}`." if rec_id else ""))
    with RunDir.create(out, command="neurons mask", config=config, model_spec=spec, seed=config["seed"]) as run:
        res = neurons.mask(bridge, data, sel, emotions=emotions, layers=config["layers"], ratio=config["ratio"],
                           ratio_mode=config["ratio_mode"], stats=stats, controls=config["controls"],
                           seed=config["seed"], template=config["template"], prepend_bos=config.get("prepend_bos"),
                           progress=not quiet)
        write_mask_outputs(run, res)
    return res


def _neurons_file(path: Any) -> str:
    p = Path(path)
    return str(p / "neurons.json" if p.is_dir() else p)


def recorded_model(neurons_path: Any, sel: Any) -> tuple[str | None, str | None, str | None]:
    """``(spec, model id, weights hash)`` of the model a selection was found on: the spec from the find
    run's manifest next to ``neurons.json`` (else guessed from the recorded model id), the id and hash
    from ``neurons.json``; None where nothing is recorded."""
    import json
    import re

    path = Path(neurons_path)
    folder = path if path.is_dir() else path.parent
    spec = None
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest.get("command") in ("neurons find", "demo"):
            spec = (manifest.get("config") or {}).get("model")
    except (OSError, ValueError, AttributeError):
        pass
    model_id, weights_hash = sel.config.get("model"), sel.config.get("weights_hash")
    if spec is None and model_id:
        tiny = re.fullmatch(r"tiny-(\w+)-seed0(-bos)?", str(model_id))
        if model_id == _EMBEDDED_ID:
            spec = "default"
        elif tiny and tiny.group(1) in TINY_ARCHS:
            spec = f"tiny-{tiny.group(1)}"
        else:
            spec = str(model_id)
    return spec, model_id, weights_hash


def neurons_made_on(neurons_path: Any, sel: Any) -> dict[str, Any]:
    """What :func:`emocircuits.jobs.common.check_made_on` reads, for a neuron selection: the spec, id, weights
    hash and shape of the model it was found on, as a manifest would hold them."""
    spec, model_id, weights_hash = recorded_model(neurons_path, sel)
    return {"config": {"model": spec}, "model": {"model_id": model_id, "weights_hash": weights_hash,
                                                 "n_layers": sel.n_layers or None, "d_mlp": sel.d_mlp or None}}


def load_find_stats(neurons_path: Any, sel: Any, source: str) -> Any:
    """The ``NeuronStats`` a find run wrote next to its ``neurons.json`` (for ``--ratio-mode reselect``)."""
    folder = Path(neurons_path) if Path(neurons_path).is_dir() else Path(neurons_path).parent
    file = folder / "neuron_stats.safetensors"
    if not file.exists():
        raise EmocircuitsError(f"--ratio-mode reselect needs the neuron statistics, but there is no {file.name} next "
                               f"to {source}; pass the `neurons find` run directory as --neurons, or use "
                               "--ratio-mode truncate.")
    t = read_tensors(file)
    if t["counts"].shape[-1] != len(sel.labels):
        raise EmocircuitsError(f"{file} has {t['counts'].shape[-1]} emotions but {source} has {len(sel.labels)}; "
                               "re-create both with `emocircuits neurons find`.")
    return NeuronStats(t["counts"], t["totals"], tuple(sel.labels), dict(sel.config))


def write_mask_outputs(run: Any, res: Any) -> None:

    run.write_table("mask_effects", res.effects, "accuracy per (masked emotion x true label): normal, masked, "
                    "control (mean of k_controls random sets), deltas, bootstrap 95% CI of the masked-minus-control "
                    "difference (examples and control sets resampled), rank_p among the controls, floor "
                    f"(clean accuracy < {FLOOR_ACC})")
    run.write_table("mask_errors", res.errors, "where failed cases go under masking: counts per predicted label")
    run.write_table("mask_predictions", res.predictions, "per-example predictions: normal and per masked emotion")
    run.write_json("mask_sets", {e: s.pairs() for e, s in res.sets.items()}, "the neuron sets masked")








