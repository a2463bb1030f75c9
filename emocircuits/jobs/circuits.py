"""The ``circuits elicit``, ``directions`` and ``components`` jobs (Wang et al.): config in, run directory out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emocircuits.base.constants import EKMAN6
from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.components import Direction
from emocircuits.core.models import load_for_config
from emocircuits.core.sites import check_layer_range, layer_range
from emocircuits.core.units import HeadSet, NeuronSet
from emocircuits.data import load_data
from emocircuits.jobs.common import _check_choice, check_made_on, parse_numbers
from emocircuits.judges.panel import check_judge_name
from emocircuits.methods.circuits.directions import GROUP_MODES, emotion_directions
from emocircuits.methods.circuits.elicit import ACCEPT_MODES, elicit, system_template
from emocircuits.methods.circuits.local_components import HEAD_SCORES, PROMPT_USES, local_components, top_sets
from emocircuits.runs.rundir import RunDir, finished_run, read_manifest, read_table


def read_components(src: Path, top_k: int | None = None) -> tuple[dict[str, NeuronSet], dict[str, HeadSet]]:
    """The neuron and head sets of a ``circuits components`` run: the saved ones, or the top ``top_k`` re-picked
    from its score tables."""
    manifest = finished_run(Path(src), "neuron_scores.parquet", "circuits components")
    if top_k is not None:
        return top_sets(read_table(Path(src) / "neuron_scores.parquet"),
                        read_table(Path(src) / "head_scores.parquet"), top_k)
    comp = manifest.get("components", {})
    return ({e: NeuronSet.load(Path(src) / f) for e, f in comp.get("neurons", {}).items()},
            {e: HeadSet.load(Path(src) / f) for e, f in comp.get("heads", {}).items()})


def _check_emotions(emotions: list[str]) -> None:
    bad = [e for e in emotions if e not in EKMAN6]
    if bad:
        raise EmocircuitsError(f"--emotion {bad[0]!r} is not an Ekman emotion; use one of {', '.join(EKMAN6)}.")
    twice = [e for i, e in enumerate(emotions) if e in emotions[:i]]
    if twice:
        raise EmocircuitsError(f"--emotion {twice[0]} is given twice; name each emotion once.")


def _check_min(name: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise EmocircuitsError(f"--{name} must be at least {low} (got {value}).")


def parse_scales(text: str) -> list[float]:
    """``"0,0.5,1"`` → ``[0.0, 0.5, 1.0]``, each finite and >= 0 (one sentence on bad input)."""
    return parse_numbers(text, "scales", low=0, example="0,0.5,1,2")


def run_elicit(config: dict[str, Any], out: Path, quiet: bool = False, model_pair: Any = None) -> Any:
    """Generate and judge the emotion-instructed replies; write replies, verdicts and accuracy into ``out``."""

    for j in config["judges"]:
        check_judge_name(j)
    _check_emotions(config["emotions"])
    _check_min("limit", config["limit"], 1)
    _check_min("max-new-tokens", config["max_new_tokens"], 1)
    config = {**config, "system": config.get("system")}  # configs written before the key: the default template
    system = system_template(config["system"])
    if config["accept"] not in ACCEPT_MODES and config["accept"] not in config["judges"]:
        raise EmocircuitsError(f"--accept {config['accept']!r} is not valid; use one of "
                               f"{', '.join(ACCEPT_MODES)} or one of the --judge names.")
    split = None if config["split"] in (None, "all") else config["split"]
    data = load_data(config["data"], split=split, labels=config.get("labels"), text_field=config.get("text_field"),
                     label_field=config.get("label_field"), drop_unknown=bool(config.get("drop_unknown")))
    bridge, spec = load_for_config(config, quiet, model_pair)
    with RunDir.create(out, command="circuits elicit", config=config, model_spec=spec, seed=config["seed"]) as run:
        el = elicit(bridge, data, emotions=config["emotions"], limit=config["limit"],
                             system=system, judges=config["judges"], accept=config["accept"],
                             max_new_tokens=config["max_new_tokens"], seed=config["seed"], progress=not quiet)
        run.write_table("replies", el.replies, "one row per skeleton x valence x emotion: prompt, reply, "
                        "pred_<judge>, accepted")
        run.write_table("verdicts", el.verdicts, "skeleton, valence, emotion, judge, predicted, correct, p_<label>")
        run.write_table("accuracy", el.accuracy, "judge, emotion, valence, n, accuracy, ci_low, ci_high")
        pooled = el.accuracy[(el.accuracy.emotion == "all") & (el.accuracy.valence == "all")]
        run.update(summary={"accuracy": dict(zip(pooled.judge, pooled.accuracy, strict=True)),
                            "accepted_share": float(el.replies.accepted.mean()), **el.config})
    return el


def run_directions(config: dict[str, Any], out: Path, quiet: bool = False, model_pair: Any = None) -> Any:
    """Emotion directions from an elicit run's prompts; writes Direction files and cosine tables."""

    src = Path(config["from"])
    manifest = finished_run(src, "replies.parquet", "circuits elicit")
    _check_choice("groups", config["groups"], GROUP_MODES)
    _check_min("n-boot", config["n_boot"], 0)
    _check_min("shuffles", config["shuffles"], 0)
    # configs written before the key existed: the last layer read before the final norm
    config = {**config, "last_after_final_norm": bool(config.get("last_after_final_norm", False))}
    made = [(f"The elicit run {str(src)!r}", manifest)]
    check_made_on(config, made)
    config = {**config, "model": config.get("model") or manifest["config"]["model"],
              "dtype": config.get("dtype") or manifest["config"].get("dtype", "float32")}
    replies = read_table(src / "replies.parquet")
    bridge, spec = load_for_config(config, quiet, model_pair)
    check_made_on(config, made, spec, text_only=True)
    with RunDir.create(out, command="circuits directions", config=config, model_spec=spec,
                       seed=config["seed"]) as run:
        dr = emotion_directions(bridge, replies, groups=config["groups"], n_boot=config["n_boot"],
                                         n_shuffle=config["shuffles"], seed=config["seed"],
                                         last_after_final_norm=config["last_after_final_norm"])
        write_directions(run, dr)
    return dr


def write_directions(run: Any, dr: Any) -> None:
    files = {}
    for emo, d in dr.directions.items():
        files[emo] = str(d.save(run.path / "directions" / emo).relative_to(run.path))
    run.write_tensors("vectors", dr.vectors, "{site: [emotion, layer, d_model]} unit directions (emotion order: "
                      "summary.emotions)")
    run.write_table("prompts", dr.prompts, "the elicit replies with `used` (row in a group used for the directions)")
    run.write_table("groups", dr.groups, "skeleton, valence of the groups used")
    run.write_table("cos_emotions", dr.cos_emotions, "site, layer, a, b, cosine, ci_low, ci_high")
    run.write_table("cos_layers", dr.cos_layers, "site, emotion, layer_a, layer_b, cosine, ci_low, ci_high")
    run.write_table("cos_valences", dr.cos_valences, "site, layer, emotion, valence_a, valence_b, n_a, n_b, cosine, "
                    "ci_low, ci_high (directions computed per valence)")
    run.write_table("control", dr.control, "site, layer, real, control_mean, control_q95, beats: mean cross-valence "
                    "cosine vs emotion labels shuffled within groups")
    run.update(summary={**dr.summary, "emotions": dr.emotions}, directions=files)


def run_components(config: dict[str, Any], out: Path, quiet: bool = False, model_pair: Any = None) -> Any:
    """Neuron and head scores for every emotion; writes score tables and top-k NeuronSet/HeadSet files.

    ``config``: ``from, model, top_k, top_k_heads``; optional ``head_score`` (one of :data:`HEAD_SCORES`, default
    ``mlp_in``) and ``ablation`` (default False: also score heads by real per-head ablation and record
    ``head_ablation_max_diff`` in the summary)."""

    src = Path(config["from"])
    manifest = finished_run(src, "prompts.parquet", "circuits directions")
    _check_min("top-k", config["top_k"], 1)
    _check_min("top-k-heads", config["top_k_heads"], 1)
    # configs written before these keys existed get the defaults: heads scored at the MLP input, no ablation check
    config = {**config, "head_score": config.get("head_score", "mlp_in"), "ablation": bool(config.get("ablation"))}
    _check_choice("head-score", config["head_score"], HEAD_SCORES)
    # prompt subsets (configs written before them: every used prompt of every layer)
    config = {**config, "use": config.get("use", "used"), "layers": config.get("layers"),
              "max_samples": config.get("max_samples"), "per_valence": config.get("per_valence"),
              "seed": int(config.get("seed") or 0)}
    _check_choice("use", config["use"], PROMPT_USES)
    _check_min("max-samples", config["max_samples"], 1)
    _check_min("per-valence", config["per_valence"], 1)
    if config["layers"] is not None:
        check_layer_range(config["layers"], "layers")
    made = [(f"The directions run {str(src)!r}", manifest)]
    check_made_on(config, made)
    config = {**config, "model": config.get("model") or manifest["config"]["model"],
              "dtype": config.get("dtype") or manifest["config"].get("dtype", "float32")}
    prompts, directions = read_directions(src)
    bridge, spec = load_for_config(config, quiet, model_pair)
    check_made_on(config, made, spec)
    for d in directions.values():
        d.validate(spec)
    layers = None if config["layers"] is None else layer_range(spec.n_layers, config["layers"])
    with RunDir.create(out, command="circuits components", config=config, model_spec=spec,
                       seed=config.get("seed")) as run:
        co = local_components(bridge, prompts, directions, top_k=config["top_k"],
                              top_k_heads=config["top_k_heads"], head_score=config["head_score"],
                              ablation=config["ablation"], use=config["use"], layers=layers,
                              max_samples=config["max_samples"], per_valence=config["per_valence"],
                              seed=config["seed"])
        write_components(run, co)
    return co


def read_directions(path: Path) -> tuple[Any, dict[str, Any]]:
    """The prompts table and ``{emotion: Direction}`` of a directions run."""

    manifest = read_manifest(path)
    prompts = read_table(Path(path) / "prompts.parquet")
    return prompts, {e: Direction.load(Path(path) / f) for e, f in manifest.get("directions", {}).items()}


def write_components(run: Any, co: Any) -> None:
    run.write_table("neuron_scores", co.neuron_scores, "emotion, layer, neuron, mean, pos, neg, n, rank, rank_layer")
    run.write_table("head_scores", co.head_scores, "emotion, layer, head, score, std, pos, neg, n, rank, rank_layer")
    files = {"neurons": {}, "heads": {}}
    for e, s in co.neuron_sets.items():
        files["neurons"][e] = str(s.save(run.path / "neurons" / e).relative_to(run.path))
    for e, s in co.head_sets.items():
        files["heads"][e] = str(s.save(run.path / "heads" / e).relative_to(run.path))
    top_heads = {e: [list(h) for h in s.heads] for e, s in co.head_sets.items()}
    run.update(components=files, summary={**co.config, "top_heads": top_heads})


