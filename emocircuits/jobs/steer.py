"""The ``circuits steer`` job and ``steer`` from earlier runs: config in, run directory out.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from emocircuits.base.constants import CALIBRATION_PROMPTS, EKMAN6, STEER_MAX_NEW_TOKENS, STEER_SENTENCES
from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.models import load_for_config, load_model
from emocircuits.core.sites import check_layer_range, layer_range
from emocircuits.data import load_data
from emocircuits.jobs.circuits import read_directions
from emocircuits.jobs.common import check_made_on
from emocircuits.judges.panel import check_judge_name
from emocircuits.methods.circuits.elicit import elicitation_items, system_template
from emocircuits.methods.circuits.steer import (
    AUTO,
    METHODS,
    STEER_SITES,
    STEER_SYSTEM,
    SteerResult,
    calibration_users,
    check_strength,
    steer_compare,
    steer_text,
)
from emocircuits.runs.circuit_files import read_circuits
from emocircuits.runs.rundir import RunDir, finished_run

GEN_DEFAULTS: dict[str, Any] = {"min_new_tokens": 0, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
"""Generation settings of the steering commands and their defaults (greedy, no penalties)."""

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


def strength_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The strength settings of a ``circuits steer`` config, checked before any model loads: ``scale`` and
    ``alpha`` (``"auto"`` or a number; absent: auto), ``dose`` (multipliers), ``calibration_prompts`` and
    ``sentences`` (absent in runs made before replies stopped at sentences: 0, as those ran)."""
    scale = check_strength(config.get("scale", AUTO), "--scale")
    alpha = check_strength(config.get("alpha", AUTO), "--alpha")
    raw = config.get("dose") or []
    items = [x.strip() for x in raw.split(",")] if isinstance(raw, str) else list(raw)
    try:
        dose = [float(x) for x in items if str(x).strip()]
    except ValueError:
        dose = [float("nan")]
    if not all(math.isfinite(x) and x >= 0 for x in dose):
        raise EmocircuitsError(f"--dose {raw!r} is not valid; use comma-separated multipliers >= 0, e.g. 0.5,1,2.")
    n_cal = int(config.get("calibration_prompts") or CALIBRATION_PROMPTS)
    if n_cal < 1:
        raise EmocircuitsError(f"--calibration-prompts must be at least 1 (got {n_cal}).")
    sentences = int(config.get("sentences", 0) if config.get("sentences") is not None else 0)
    if sentences < 0:
        raise EmocircuitsError(f"--sentences must be 0 (stop at the end of turn only) or more (got {sentences}).")
    return {"scale": AUTO if scale is None else scale, "alpha": AUTO if alpha is None else alpha, "dose": dose,
            "calibration_prompts": n_cal, "sentences": sentences}


def _check_site(site: str) -> str:
    if site not in STEER_SITES:
        raise EmocircuitsError(f"--site {site!r} is not valid; use one of {', '.join(STEER_SITES)}.")
    return site


def steer_from_runs(text: str, emotion: str, method: str = "prompt", *, scale: float | str | None = AUTO,
                    circuits: str | Path | None = None, directions: str | Path | None = None,
                    model: str | None = None, max_new_tokens: int = STEER_MAX_NEW_TOKENS, seed: int = 0,
                    band: str | None = None, site: str = "resid.post", system: str | None = None,
                    prompt_system: str | None = None, min_new_tokens: int = 0, repetition_penalty: float = 1.0,
                    no_repeat_ngram_size: int = 0, sentences: int = STEER_SENTENCES,
                    calibration_prompts: int = CALIBRATION_PROMPTS, calibration_data: str = "builtin:sev",
                    allow_other_model: bool = False) -> dict[str, Any]:
    """:func:`steer_text` with the model loaded by name and the circuit and direction of ``emotion`` read from a
    ``circuits assemble`` run (its directions run gives the residual direction) or, for ``residual``, from a
    ``circuits directions`` run alone; what ``emocircuits steer`` runs. ``prompt`` needs no run; ``circuit``
    and ``random`` need ``circuits``; ``residual`` needs ``circuits`` or ``directions``. ``band``: residual
    steering layers ``A-B`` (default the paper's band, scaled); ``site``: :data:`STEER_SITES`. ``scale``
    ``auto`` (or None) is chosen on ``calibration_prompts`` prompts of ``calibration_data``'s train split."""

    if method not in METHODS or method == "none":
        raise EmocircuitsError(f"--method {method!r} is not valid; use circuit, residual, prompt or random.")
    if band is not None:
        check_layer_range(band, "band")
    _check_site(site)
    prompt_system = system_template(prompt_system)
    gen = generation_settings({"max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens,
                               "repetition_penalty": repetition_penalty,
                               "no_repeat_ngram_size": no_repeat_ngram_size})
    strength = strength_settings({"scale": AUTO if scale is None else scale, "calibration_prompts": calibration_prompts,
                                  "sentences": sentences})
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
    users = None
    if strength["scale"] == AUTO and method != "prompt":
        items = elicitation_items(load_data(calibration_data, split="train"), emotions=[emotion])
        users = calibration_users(items, strength["calibration_prompts"], seed, system or STEER_SYSTEM)
    return steer_text(bridge, text, emotion, method, scale=strength["scale"], circuit=circuit, direction=direction,
                      band=layers, max_new_tokens=max_new_tokens, seed=seed, site=site,
                      system=system or STEER_SYSTEM, prompt_system=prompt_system, sentences=strength["sentences"],
                      calibration_users=users, **gen)


def run_steer(config: dict[str, Any], out: Any, quiet: bool = False, model_pair: Any = None) -> SteerResult:
    """The steering comparison from an assemble run (circuits; its directions run gives the residual
    directions) or, when every method is residual/prompt/none, from a directions run alone (``directions``).
    Config: ``from`` (assemble run) or ``directions`` (directions run), ``data``, ``split``, ``limit``
    (skeletons), ``emotions`` (empty = the circuits' or directions'), ``methods`` (comma-separated), ``scale``,
    ``alpha``, ``band`` (``A-B`` or None), ``n_random``, ``judges``, ``max_new_tokens``, ``seed``,
    ``model``/``dtype``; and (absent in older runs, defaulting to what those did) ``site``, ``system``,
    ``prompt_system``, ``min_new_tokens``, ``repetition_penalty``, ``no_repeat_ngram_size``."""
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
    strength = strength_settings(config)
    config = {**config, **gen, **strength, "site": _check_site(config.get("site") or "resid.post"),
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
    calibration = None  # auto strengths choose on the train split when the evaluation is on test
    if split == "test" and AUTO in (strength["scale"], strength["alpha"]):
        calibration = elicitation_items(load_data(config.get("data", "builtin:sev"), split="train"), emotions=emotions)
    bridge, spec = load_for_config(config, quiet, model_pair)
    check_made_on(config, made, spec)
    band = layer_range(spec.n_layers, config["band"]) if config.get("band") else None
    with RunDir.create(out, command="circuits steer", config=config, model_spec=spec, seed=config.get("seed", 0)) as run:
        res = steer_compare(bridge, items, emotions=emotions, methods=methods, circuits=circuits or None,
                            directions=directions, scale=strength["scale"], alpha=strength["alpha"], band=band,
                            n_random=int(config.get("n_random", 3)), judges=config.get("judges", ["lexicon"]),
                            max_new_tokens=int(config.get("max_new_tokens") or 48), sentences=strength["sentences"],
                            seed=int(config.get("seed", 0)), system=config["system"] or STEER_SYSTEM,
                            prompt_system=prompt_system, site=config["site"], generate_kw=gen,
                            calibration=calibration, calibration_prompts=strength["calibration_prompts"],
                            doses=strength["dose"], progress=not quiet)
        run.write_table("replies", res.replies, "method, variant, dose, strength, emotion, skeleton, valence, user, "
                        "reply, finish, n_new_tokens, empty, cut_off, ppl, pred_<judge>, correct_<judge>")
        run.write_table("accuracy", res.accuracy, "judge, method, emotion, valence, n, accuracy, ci_low, ci_high")
        run.write_table("quality", res.quality, "method, emotion, n, ppl_mean, ppl_median, ppl_geo, ppl_ratio, "
                        "distinct2, distinct2_ratio, empty, cut_off, fluent")
        run.write_table("dose", res.dose, "method, dose, strength, judge, n, accuracy, ci_low, ci_high, ppl_ratio, "
                        "distinct2_ratio, empty, cut_off, fluent")
        if res.strengths:
            curves = [c.curve.assign(name=n) for n, c in res.strengths.items()]
            run.write_table("strength", pd.concat(curves, ignore_index=True),
                            "name, strength, ppl, ppl_ratio, distinct2, distinct2_ratio, empty, cut_off, n, fluent "
                            "(strength 0: the unsteered reference)")
        pooled = res.accuracy[(res.accuracy.emotion == "all") & (res.accuracy.valence == "all")]
        run.update(summary={**res.config, "accuracy": {f"{r.judge}/{r.method}": r.accuracy
                                                       for r in pooled.itertuples()}, "notes": res.notes})
    return res




def steer_lines(res: SteerResult) -> list[str]:
    """What ``circuits steer`` prints: the strengths (chosen or given), accuracy with its CI beside each
    method's fluency and cut-off share, the dose-response rows, and the notes."""
    lines = [c.line() for c in res.strengths.values()]
    lines += [f"{k} {res.config[k]:g} (given)" for k in ("scale", "alpha")
              if k not in res.strengths and isinstance(res.config.get(k), float)]
    pooled = res.accuracy[(res.accuracy.emotion == "all") & (res.accuracy.valence == "all")]
    quality = res.quality[res.quality.emotion == "all"].set_index("method")
    for r in pooled.itertuples():
        q = ""
        if r.method in quality.index:
            qr = quality.loc[r.method]
            q = (f"  ppl ×{qr.ppl_ratio:.2f}  distinct-2 ×{qr.distinct2_ratio:.2f}  cut-off {qr.cut_off:.2f}"
                 + ("" if qr.fluent else "  NOT FLUENT"))
        lines.append(f"{r.judge:<10} {r.method:<9} accuracy {r.accuracy:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]{q}")
    if len(res.dose) and res.dose["dose"].nunique() > 1:
        lines.append("dose-response (accuracy [95% CI], fluency against the unsteered replies):")
        for r in res.dose.itertuples():
            lines.append(f"  {r.judge:<10} {r.method:<9} ×{r.dose:<5g} ({r.strength:g})  {r.accuracy:.2f} "
                         f"[{r.ci_low:.2f}, {r.ci_high:.2f}]  ppl ×{r.ppl_ratio:.2f}  distinct-2 ×{r.distinct2_ratio:.2f}"
                         + ("" if r.fluent else "  not fluent"))
    return lines + [f"note: {n}" for n in res.notes]
