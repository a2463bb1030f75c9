"""The ``circuits steer`` job and ``steer`` from earlier runs: config in, run directory out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emocircuits.base.constants import EKMAN6
from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.models import load_for_config, load_model
from emocircuits.core.sites import check_layer_range, layer_range
from emocircuits.data import load_data
from emocircuits.jobs.circuits import read_directions
from emocircuits.judges.panel import check_judge_name
from emocircuits.methods.circuits.elicit import elicitation_items
from emocircuits.methods.circuits.steer import (
    CIRCUIT_SCALE,
    METHODS,
    RESIDUAL_ALPHA,
    SteerResult,
    steer_compare,
    steer_text,
)
from emocircuits.runs.circuit_files import read_circuits
from emocircuits.runs.rundir import RunDir, finished_run


def steer_from_runs(text: str, emotion: str, method: str = "prompt", *, scale: float | None = None,
                    circuits: str | Path | None = None, model: str | None = None, max_new_tokens: int = 48,
                    seed: int = 0) -> dict[str, Any]:
    """:func:`steer_text` with the model loaded by name and the circuit and direction of ``emotion`` read from a
    ``circuits assemble`` run (its directions run gives the residual direction); what ``emocircuits steer`` runs.
    ``prompt`` needs no run; ``circuit``, ``random`` and ``residual`` do."""

    if method not in METHODS or method == "none":
        raise EmocircuitsError(f"--method {method!r} is not valid; use circuit, residual, prompt or random.")
    circuit = direction = None
    manifest: dict[str, Any] = {}
    if circuits is not None:
        manifest = finished_run(Path(circuits), "allocation.parquet", "circuits assemble")
        found = read_circuits(circuits)
        if emotion not in found:
            raise EmocircuitsError(f"--emotion {emotion!r} has no circuit in {str(circuits)!r}; it has "
                                   f"{', '.join(found)}.")
        circuit = found[emotion]
        direction = read_directions(Path(manifest["summary"]["directions"]))[1].get(emotion)
    elif method != "prompt":
        raise EmocircuitsError(f"--method {method} needs --circuits: the run directory of `emocircuits circuits "
                               "assemble` (elicit, directions, components, influence, assemble make one).")
    elif emotion not in EKMAN6:
        raise EmocircuitsError(f"--emotion {emotion!r} is not one of {', '.join(EKMAN6)}.")
    bridge, _ = load_model(model or manifest.get("config", {}).get("model") or "default",
                           dtype=manifest.get("config", {}).get("dtype", "float32"))
    return steer_text(bridge, text, emotion, method, scale=scale, circuit=circuit, direction=direction,
                      max_new_tokens=max_new_tokens, seed=seed)


def run_steer(config: dict[str, Any], out: Any, quiet: bool = False, model_pair: Any = None) -> SteerResult:
    """The steering comparison from an assemble run (circuits; its directions run gives the residual
    directions). Config: ``from`` (assemble run), ``data``, ``split``, ``limit`` (skeletons), ``emotions``
    (empty = the circuits'), ``methods`` (comma-separated), ``scale``, ``alpha``, ``band`` (``A-B`` or None),
    ``n_random``, ``judges``, ``max_new_tokens``, ``seed``, ``model``/``dtype``."""
    from pathlib import Path

    src = Path(config["from"])
    manifest = finished_run(src, "allocation.parquet", "circuits assemble")
    methods = [m.strip() for m in str(config.get("methods", ",".join(METHODS))).split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise EmocircuitsError(f"--methods {config.get('methods')!r} is not valid; use a comma-separated subset of "
                               f"{', '.join(METHODS)}.")
    for j in config.get("judges", ["lexicon"]):
        check_judge_name(j)
    if config.get("band"):
        check_layer_range(config["band"], "band")
    for key, low in (("n_random", 1), ("max_new_tokens", 1), ("limit", 1)):
        if config.get(key) is not None and config[key] < low:
            raise EmocircuitsError(f"--{key.replace('_', '-')} must be at least {low} (got {config[key]}).")
    config = {**config, "model": config.get("model") or manifest["config"]["model"],
              "dtype": config.get("dtype") or manifest["config"].get("dtype", "float32")}
    circuits = read_circuits(src)
    _, directions = read_directions(Path(manifest["summary"]["directions"]))
    emotions = list(config.get("emotions") or circuits)
    missing = [e for e in emotions if e not in circuits]
    if missing:
        raise EmocircuitsError(f"--emotion {missing[0]!r} has no circuit in {str(src)!r}; it has {', '.join(circuits)}.")
    split = None if config.get("split") in (None, "all") else config["split"]
    items = elicitation_items(load_data(config.get("data", "builtin:sev"), split=split), emotions=emotions,
                              limit=config.get("limit"))
    bridge, spec = load_for_config(config, quiet, model_pair)
    band = layer_range(spec.n_layers, config["band"]) if config.get("band") else None
    with RunDir.create(out, command="circuits steer", config=config, model_spec=spec, seed=config.get("seed", 0)) as run:
        res = steer_compare(bridge, items, emotions=emotions, methods=methods, circuits=circuits,
                            directions=directions, scale=float(config.get("scale", CIRCUIT_SCALE)),
                            alpha=float(config.get("alpha", RESIDUAL_ALPHA)), band=band,
                            n_random=int(config.get("n_random", 3)), judges=config.get("judges", ["lexicon"]),
                            max_new_tokens=int(config.get("max_new_tokens", 48)), seed=int(config.get("seed", 0)),
                            progress=not quiet)
        run.write_table("replies", res.replies, "method, variant, emotion, skeleton, valence, user, reply, finish, "
                        "n_new_tokens, empty, cut_off, ppl, pred_<judge>, correct_<judge>")
        run.write_table("accuracy", res.accuracy, "judge, method, emotion, valence, n, accuracy, ci_low, ci_high")
        run.write_table("quality", res.quality, "method, emotion, n, ppl_mean, ppl_median, distinct2, empty, cut_off")
        pooled = res.accuracy[(res.accuracy.emotion == "all") & (res.accuracy.valence == "all")]
        run.update(summary={**res.config, "accuracy": {f"{r.judge}/{r.method}": r.accuracy
                                                       for r in pooled.itertuples()}})
    return res


