"""The ``circuits influence`` and ``circuits assemble`` jobs (Wang et al.): config in, run directory out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emocircuits.base.constants import NEUTRAL_SYSTEM
from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.models import load_for_config
from emocircuits.core.sites import check_layer_range, layer_range
from emocircuits.jobs.circuits import read_directions
from emocircuits.jobs.common import check_made_on, parse_numbers
from emocircuits.methods.circuits.assemble import (
    PAPER_HEADS,
    PAPER_NEURONS,
    Assembly,
    assemble_circuits,
    shift_vectors,
)
from emocircuits.methods.circuits.influence import (
    ALPHAS,
    DIR_SITE,
    READOUTS,
    SIGMA_FROM,
    SIGMA_PROMPTS,
    InfluenceResult,
    paper_ref_layers,
    sublayer_influence,
)
from emocircuits.methods.circuits.local_components import PROMPT_USES
from emocircuits.runs.rundir import RunDir, finished_run, read_table


def parse_floats(text: str | Sequence[float], name: str = "alphas") -> list[float]:
    """``"0.1,0.3"`` (or a list) → ``[0.1, 0.3]``, each finite and > 0 (one sentence on bad input)."""
    return parse_numbers(text, name, low=0, above=True, example="0.1,0.3")


def parse_anchor(text: str | Sequence[Any] | None) -> tuple[str, int] | str | None:
    """``"resid.post:27"`` (or ``[site, layer]``) → ``("resid.post", 27)``; ``paper`` and None stay as they are
    (``paper``: the authors' anchor, :func:`paper_anchor`; None: the last layer's ``resid.post``). One
    sentence on bad input."""
    if text is None or text == "paper":
        return text
    site, _, layer = (str(text).partition(":") if isinstance(text, str) else (str(text[0]), ":", str(text[1])))
    if site not in DIR_SITE.values() or not layer.strip().isdigit():
        raise EmocircuitsError(f"--ref-anchor {text!r} is not valid; use SITE:LAYER with SITE resid.mid or "
                               "resid.post, e.g. resid.post:27, or paper.")
    return site, int(layer)


def paper_anchor(n_layers: int, ref_layers: Sequence[int] | None, ref_fraction: float) -> tuple[str, int]:
    """The authors' sign anchor: the first vector their reference loop meets, ``resid.mid`` (their attention
    site) at the reference window's first layer (``ref_layers``, else the last ``ceil(ref_fraction · n)``)."""
    window = list(ref_layers) if ref_layers else list(range(n_layers))[-max(1, math.ceil(ref_fraction * n_layers)):]
    return "resid.mid", int(min(window))


def run_influence(config: dict[str, Any], out: Path, quiet: bool = False, model_pair: Any = None) -> InfluenceResult:
    """Sublayer influence from a directions run's prompts and directions. Config: ``from`` (directions run),
    ``model``/``dtype`` (default: that run's), ``alphas``, ``emotions`` (empty = all), ``readout``,
    ``sigma_from``, ``ref_fraction``, ``max_prompts``, ``method``; and (absent in older runs, defaulting to
    what those did) ``ref_layers`` (``A-B`` or ``paper``: the authors' 21–25 of 28 scaled; None: the last
    ``ceil(ref_fraction · n)`` layers), ``ref_anchor`` (``SITE:LAYER`` or ``paper``: resid.mid at the window's first layer, as the authors; None:
    the last layer's resid.post),
    ``sigma_prompts`` (neutral | elicit), ``layers`` (the sublayers scanned, a range; None: all) and
    ``system`` (the emotion-free system prompt)."""

    src = Path(config["from"])
    manifest = finished_run(src, "prompts.parquet", "circuits directions")
    alphas = parse_floats(config.get("alphas", list(ALPHAS)))
    if config.get("readout", "final.norm") not in READOUTS:
        raise EmocircuitsError(f"--readout {config['readout']!r} is not valid; use one of {', '.join(READOUTS)}.")
    if config.get("sigma_from", "output") not in SIGMA_FROM:
        raise EmocircuitsError(f"--sigma-from {config['sigma_from']!r} is not valid; use one of "
                               f"{', '.join(SIGMA_FROM)}.")
    if config.get("method", "fast") not in ("fast", "full"):
        raise EmocircuitsError(f"--engine {config['method']!r} is not valid; use fast or full.")
    if config.get("max_prompts") is not None and config["max_prompts"] < 1:
        raise EmocircuitsError(f"--max-prompts must be at least 1 (got {config['max_prompts']}).")
    # keys added after the first runs; their defaults are what those runs did
    config = {**config, "ref_layers": config.get("ref_layers"), "ref_anchor": config.get("ref_anchor"),
              "sigma_prompts": config.get("sigma_prompts", "neutral"), "layers": config.get("layers"),
              "system": config.get("system") or NEUTRAL_SYSTEM, "use": config.get("use", "all")}
    if config["use"] not in PROMPT_USES:
        raise EmocircuitsError(f"--use {config['use']!r} is not valid; use one of {', '.join(PROMPT_USES)}.")
    if config["ref_layers"] not in (None, "paper"):
        check_layer_range(config["ref_layers"], "ref_layers")
    if config["layers"] is not None:
        check_layer_range(config["layers"], "layers")
    anchor = parse_anchor(config["ref_anchor"])
    if config["sigma_prompts"] not in SIGMA_PROMPTS:
        raise EmocircuitsError(f"--sigma-prompts {config['sigma_prompts']!r} is not valid; use one of "
                               f"{', '.join(SIGMA_PROMPTS)}.")
    made = [(f"The directions run {str(src)!r}", manifest)]
    check_made_on(config, made)
    config = {**config, "model": config.get("model") or manifest["config"]["model"],
              "dtype": config.get("dtype") or manifest["config"].get("dtype", "float32")}
    prompts, directions = read_directions(src)
    emotions = list(config.get("emotions") or directions)
    bad = [e for e in emotions if e not in directions]
    if bad:
        raise EmocircuitsError(f"--emotion {bad[0]!r} has no direction in {str(src)!r}; it has {', '.join(directions)}.")
    bridge, spec = load_for_config(config, quiet, model_pair)
    check_made_on(config, made, spec)
    ref_layers = (None if config["ref_layers"] is None else paper_ref_layers(spec.n_layers)
                  if config["ref_layers"] == "paper" else layer_range(spec.n_layers, config["ref_layers"]))
    layers = None if config["layers"] is None else layer_range(spec.n_layers, config["layers"])
    if anchor == "paper":
        anchor = paper_anchor(spec.n_layers, ref_layers, float(config.get("ref_fraction", 1 / 6)))
    if anchor is not None and not 0 <= anchor[1] < spec.n_layers:
        raise EmocircuitsError(f"--ref-anchor layer {anchor[1]} is not a layer of the model (0-{spec.n_layers - 1}).")
    with RunDir.create(out, command="circuits influence", config=config, model_spec=spec,
                       seed=config.get("seed")) as run:
        res = sublayer_influence(bridge, prompts, directions, alphas=alphas, emotions=emotions,
                                 ref_fraction=float(config.get("ref_fraction", 1 / 6)), ref_layers=ref_layers,
                                 ref_anchor=anchor, layers=layers, sigma_prompts=config["sigma_prompts"],
                                 system=config["system"],
                                 readout=config.get("readout", "final.norm"),
                                 sigma_from=config.get("sigma_from", "output"), method=config.get("method", "fast"),
                                 max_prompts=config.get("max_prompts"), use=config["use"], progress=not quiet)
        run.write_table("raw", res.raw, "emotion, layer, sublayer, alpha, sigma, dose, base, delta, value "
                        "(delta = mean change of the final projection on v_ref; value = delta / dose)")
        run.write_table("influence", res.table, "emotion, layer, sublayer, sigma, raw (mean value over alphas), "
                        "influence (max(raw, 0) normalised to sum 1 per emotion)")
        run.write_table("sigma", res.sigma, "layer, sublayer, sigma (mean RMS of the sublayer output at the last "
                        "token), sigma_resid (of the residual after it)")
        run.write_tensors("reference", res.reference, "{emotion: v_ref [d_model]}")
        top = {e: d.nlargest(3, "influence")[["layer", "sublayer"]].astype(str).agg("".join, axis=1).tolist()
               for e, d in res.table.groupby("emotion", sort=False)}
        run.update(summary={**res.config, "top_sublayers": top})
    return res


def run_assemble(config: dict[str, Any], out: Path, quiet: bool = False, model_pair: Any = None) -> Assembly:
    """Circuits from an influence run and a components run (whose directions run gives the prompts for Δμ).
    Config: ``influence``, ``components`` (run dirs), ``k_total`` (None = 560 · n_layers / 28),
    ``neuron_share``, ``min_neurons``, ``min_heads``, ``cap_ratio``, ``groups`` (Δμ groups: all | accepted)."""

    inf_dir, comp_dir = Path(config["influence"]), Path(config["components"])
    inf_manifest = finished_run(inf_dir, "influence.parquet", "circuits influence")
    comp_manifest = finished_run(comp_dir, "neuron_scores.parquet", "circuits components")
    dir_path = Path(comp_manifest["config"]["from"])
    finished_run(dir_path, "prompts.parquet", "circuits directions")
    for key, flag, low in (("min_neurons", "--min-neurons", 0), ("min_heads", "--min-heads", 0), ("k_total", "--k", 1)):
        if config.get(key) is not None and config[key] < low:
            raise EmocircuitsError(f"{flag} must be at least {low} (got {config[key]}).")
    if not 0 < float(config.get("cap_ratio", 0.4)) <= 1:
        raise EmocircuitsError(f"--cap-ratio must be in (0, 1] (got {config['cap_ratio']}).")
    if not 0 <= float(config.get("neuron_share", 0.7)) <= 1:
        raise EmocircuitsError(f"--neuron-share must be in [0, 1] (got {config['neuron_share']}).")
    if config.get("groups", "all") not in ("all", "accepted"):
        raise EmocircuitsError(f"--groups {config['groups']!r} is not valid; use all or accepted.")
    made = [(f"The influence run {str(inf_dir)!r}", inf_manifest),
            (f"The components run {str(comp_dir)!r}", comp_manifest)]
    check_made_on(config, made)
    config = {**config, "model": config.get("model") or inf_manifest["config"]["model"],
              "dtype": config.get("dtype") or inf_manifest["config"].get("dtype", "float32")}
    table = read_table(inf_dir / "influence.parquet")
    ns, hs = read_table(comp_dir / "neuron_scores.parquet"), read_table(comp_dir / "head_scores.parquet")
    prompts = read_table(dir_path / "prompts.parquet")
    emotions = [e for e in dict.fromkeys(table["emotion"]) if e in set(ns["emotion"])]
    bridge, spec = load_for_config(config, quiet, model_pair)
    check_made_on(config, made, spec)
    with RunDir.create(out, command="circuits assemble", config=config, model_spec=spec,
                       seed=config.get("seed")) as run:
        shifts = shift_vectors(bridge, prompts, groups=config.get("groups", "all"))
        asm = assemble_circuits(table, ns, hs, shifts, n_layers=spec.n_layers, emotions=emotions,
                                k_total=config.get("k_total"),
                                neuron_share=float(config.get("neuron_share", PAPER_NEURONS / (PAPER_NEURONS +
                                                                                               PAPER_HEADS))),
                                min_neurons=int(config.get("min_neurons", 4)), min_heads=int(config.get("min_heads", 2)),
                                cap_ratio=float(config.get("cap_ratio", 0.4)))
        run.write_table("allocation", asm.allocation, "emotion, kind, layer, weight, available, k")
        files = {e: str(c.save(run.path / "circuits" / e).relative_to(run.path)) for e, c in asm.circuits.items()}
        run.update(circuits=files, summary={**asm.config, "n_groups": shifts.n_groups,
                                            "directions": str(dir_path)})
    return asm


