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
from emocircuits.jobs.common import check_made_on
from emocircuits.judges.panel import check_judge_name
from emocircuits.methods.circuits.elicit import elicitation_items, system_template
from emocircuits.methods.circuits.steer import (
    CIRCUIT_SCALE,
    METHODS,
    RESIDUAL_ALPHA,
    STEER_SITES,
    STEER_SYSTEM,
    SteerResult,
    steer_compare,
    steer_text,
)
from emocircuits.runs.circuit_files import read_circuits
from emocircuits.runs.rundir import RunDir, finished_run

GEN_DEFAULTS: dict[str, Any] = {"min_new_tokens": 0, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
"""Generation settings of the steering commands and their defaults (greedy, no penalties: today's behaviour)."""

DIRECTION_ONLY = ("residual", "prompt", "none")
"""The steering methods that need no circuits: a directions run is enough (prompt and none need nothing)."""


def generation_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The generation settings of a steering config (missing keys: :data:`GEN_DEFAULTS`), checked (one
    sentence each) before any model loads."""
    gen = {k: config.get(k, v) if config.get(k) is not None else v for k, v in GEN_DEFAULTS.items()}
    max_new = int(config.get("max_new_tokens") or 48)
    if not 0 <= int(gen["min_new_tokens"]) <= max_new:
        raise EmocircuitsError(f"--min-new-tokens must be in 0..{max_new} (--max-new-tokens); got "
                               f"{gen['min_new_tokens']}.")
    rp = float(gen["repetition_penalty"])
    if not (rp > 0 and rp < float("inf")):
        raise EmocircuitsError(f"--repetition-penalty must be a finite number > 0 (1 = none); got {rp}.")
    if int(gen["no_repeat_ngram_size"]) < 0:
        raise EmocircuitsError(f"--no-repeat-ngram-size must be 0 (off) or more; got {gen['no_repeat_ngram_size']}.")
    return {"min_new_tokens": int(gen["min_new_tokens"]), "repetition_penalty": rp,
            "no_repeat_ngram_size": int(gen["no_repeat_ngram_size"])}


def _check_site(site: str) -> str:
    if site not in STEER_SITES:
        raise EmocircuitsError(f"--site {site!r} is not valid; use one of {', '.join(STEER_SITES)}.")
    return site


def steer_from_runs(text: str, emotion: str, method: str = "prompt", *, scale: float | None = None,
                    circuits: str | Path | None = None, directions: str | Path | None = None,
                    model: str | None = None, max_new_tokens: int = 48, seed: int = 0, band: str | None = None,
                    site: str = "resid.post", system: str | None = None, prompt_system: str | None = None,
                    min_new_tokens: int = 0, repetition_penalty: float = 1.0,
                    no_repeat_ngram_size: int = 0, allow_other_model: bool = False) -> dict[str, Any]:
    """:func:`steer_text` with the model loaded by name and the circuit and direction of ``emotion`` read from a
    ``circuits assemble`` run (its directions run gives the residual direction) or, for ``residual``, from a
    ``circuits directions`` run alone; what ``emocircuits steer`` runs. ``prompt`` needs no run; ``circuit``
    and ``random`` need ``circuits``; ``residual`` needs ``circuits`` or ``directions``. ``band``: residual
    steering layers ``A-B`` (default the paper's band, scaled); ``site``: :data:`STEER_SITES`."""

    if method not in METHODS or method == "none":
        raise EmocircuitsError(f"--method {method!r} is not valid; use circuit, residual, prompt or random.")
    if band is not None:
        check_layer_range(band, "band")
    _check_site(site)
    prompt_system = system_template(prompt_system)
    gen = generation_settings({"max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens,
                               "repetition_penalty": repetition_penalty,
                               "no_repeat_ngram_size": no_repeat_ngram_size})
    if circuits is not None and directions is not None:
        raise EmocircuitsError("Pass --circuits or --directions, not both (an assemble run names its directions).")
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
    elif directions is not None:
        if method != "residual" and method != "prompt":
            raise EmocircuitsError(f"--method {method} needs --circuits (an assemble run); --directions serves "
                                   "residual steering only.")
        manifest = finished_run(Path(directions), "prompts.parquet", "circuits directions")
        found_dirs = read_directions(Path(directions))[1]
        if emotion not in found_dirs:
            raise EmocircuitsError(f"--emotion {emotion!r} has no direction in {str(directions)!r}; it has "
                                   f"{', '.join(found_dirs)}.")
        direction = found_dirs[emotion]
    elif method != "prompt":
        raise EmocircuitsError(f"--method {method} needs --circuits (the run directory of `emocircuits circuits "
                               "assemble`) or, for residual, --directions (a `circuits directions` run).")
    elif emotion not in EKMAN6:
        raise EmocircuitsError(f"--emotion {emotion!r} is not one of {', '.join(EKMAN6)}.")
    run_dir = circuits if circuits is not None else directions
    made = [(f"The run {str(run_dir)!r}", manifest)] if manifest else []
    check = {"model": model, "allow_other_model": allow_other_model}
    check_made_on(check, made)
    bridge, spec = load_model(model or manifest.get("config", {}).get("model") or "default",
                              dtype=manifest.get("config", {}).get("dtype", "float32"))
    check_made_on(check, made, spec)
    layers = layer_range(spec.n_layers, band) if band is not None else None
    return steer_text(bridge, text, emotion, method, scale=scale, circuit=circuit, direction=direction,
                      band=layers, max_new_tokens=max_new_tokens, seed=seed, site=site,
                      system=system or STEER_SYSTEM, prompt_system=prompt_system, **gen)


def run_steer(config: dict[str, Any], out: Any, quiet: bool = False, model_pair: Any = None) -> SteerResult:
    """The steering comparison from an assemble run (circuits; its directions run gives the residual
    directions) or, when every method is residual/prompt/none, from a directions run alone (``directions``).
    Config: ``from`` (assemble run) or ``directions`` (directions run), ``data``, ``split``, ``limit``
    (skeletons), ``emotions`` (empty = the circuits' or directions'), ``methods`` (comma-separated), ``scale``,
    ``alpha``, ``band`` (``A-B`` or None), ``n_random``, ``judges``, ``max_new_tokens``, ``seed``,
    ``model``/``dtype``; and (absent in older runs, defaulting to what those did) ``site``, ``system``,
    ``prompt_system``, ``min_new_tokens``, ``repetition_penalty``, ``no_repeat_ngram_size``."""
    from pathlib import Path

    methods = [m.strip() for m in str(config.get("methods", ",".join(METHODS))).split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise EmocircuitsError(f"--methods {config.get('methods')!r} is not valid; use a comma-separated subset of "
                               f"{', '.join(METHODS)}.")
    if config.get("from") and config.get("directions"):
        raise EmocircuitsError("Pass --from (an assemble run) or --directions (a directions run), not both.")
    if config.get("from"):
        src = Path(config["from"])
        manifest = finished_run(src, "allocation.parquet", "circuits assemble")
        dir_path = Path(manifest["summary"]["directions"])
    elif config.get("directions"):
        need = [m for m in methods if m not in DIRECTION_ONLY]
        if need:
            raise EmocircuitsError(f"--methods {need[0]} needs circuits: pass --from (a `circuits assemble` run); "
                                   "--directions serves residual, prompt and none only.")
        src = dir_path = Path(config["directions"])
        manifest = finished_run(src, "prompts.parquet", "circuits directions")
    else:
        raise EmocircuitsError("Pass --from (a `circuits assemble` run) or, for residual/prompt/none only, "
                               "--directions (a `circuits directions` run).")
    for j in config.get("judges", ["lexicon"]):
        check_judge_name(j)
    if config.get("band"):
        check_layer_range(config["band"], "band")
    for key, low in (("n_random", 1), ("max_new_tokens", 1), ("limit", 1)):
        if config.get(key) is not None and config[key] < low:
            raise EmocircuitsError(f"--{key.replace('_', '-')} must be at least {low} (got {config[key]}).")
    gen = generation_settings(config)
    config = {**config, **gen, "site": _check_site(config.get("site") or "resid.post"),
              "system": config.get("system"), "prompt_system": config.get("prompt_system")}
    prompt_system = system_template(config["prompt_system"])
    made = [(f"The run {str(src)!r}", manifest)]
    check_made_on(config, made)
    config = {**config, "model": config.get("model") or manifest["config"]["model"],
              "dtype": config.get("dtype") or manifest["config"].get("dtype", "float32")}
    circuits = read_circuits(src) if config.get("from") else {}
    _, directions = read_directions(dir_path)
    emotions = list(config.get("emotions") or circuits or directions)
    have, what = (circuits, "circuit") if config.get("from") else (directions, "direction")
    missing = [e for e in emotions if e not in have]
    if missing:
        raise EmocircuitsError(f"--emotion {missing[0]!r} has no {what} in {str(src)!r}; it has {', '.join(have)}.")
    split = None if config.get("split") in (None, "all") else config["split"]
    items = elicitation_items(load_data(config.get("data", "builtin:sev"), split=split), emotions=emotions,
                              limit=config.get("limit"))
    bridge, spec = load_for_config(config, quiet, model_pair)
    check_made_on(config, made, spec)
    band = layer_range(spec.n_layers, config["band"]) if config.get("band") else None
    with RunDir.create(out, command="circuits steer", config=config, model_spec=spec, seed=config.get("seed", 0)) as run:
        res = steer_compare(bridge, items, emotions=emotions, methods=methods, circuits=circuits or None,
                            directions=directions, scale=float(config.get("scale", CIRCUIT_SCALE)),
                            alpha=float(config.get("alpha", RESIDUAL_ALPHA)), band=band,
                            n_random=int(config.get("n_random", 3)), judges=config.get("judges", ["lexicon"]),
                            max_new_tokens=int(config.get("max_new_tokens", 48)), seed=int(config.get("seed", 0)),
                            system=config["system"] or STEER_SYSTEM, prompt_system=prompt_system,
                            site=config["site"], generate_kw=gen, progress=not quiet)
        run.write_table("replies", res.replies, "method, variant, emotion, skeleton, valence, user, reply, finish, "
                        "n_new_tokens, empty, cut_off, ppl, pred_<judge>, correct_<judge>")
        run.write_table("accuracy", res.accuracy, "judge, method, emotion, valence, n, accuracy, ci_low, ci_high")
        run.write_table("quality", res.quality, "method, emotion, n, ppl_mean, ppl_median, distinct2, empty, cut_off")
        pooled = res.accuracy[(res.accuracy.emotion == "all") & (res.accuracy.valence == "all")]
        run.update(summary={**res.config, "accuracy": {f"{r.judge}/{r.method}": r.accuracy
                                                       for r in pooled.itertuples()}})
    return res


