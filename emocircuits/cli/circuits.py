"""`emocircuits circuits elicit|directions|components|validate|influence|assemble|steer` and `emocircuits steer`:
thin fronts over the jobs of ``emocircuits.jobs.circuits``, ``.circuit_build`` and ``.steer``.

Each step reads the run directory of the step before (``--from``) and writes its own; every command
builds a plain config dict and calls the job's ``run_<step>``, which ``emocircuits rerun`` also uses
(:data:`emocircuits.jobs.registry.JOBS`). ``validate`` is a ``component_validation`` sweep.
Every command takes ``--preset wang2025`` (the authors' settings, :mod:`emocircuits.base.presets`); a flag
given explicitly wins, with a note.
"""

from __future__ import annotations

from pathlib import Path

import typer

from emocircuits.base.constants import EKMAN6
from emocircuits.base.errors import EmocircuitsError
from emocircuits.cli.options import apply_preset, at_least, number_list, option, share, split_list

circuits_app = typer.Typer(help="Emotion circuits (Wang et al. 2025): elicit, directions, components, validate, "
                           "influence, assemble, steer.",
                           no_args_is_help=True)


MODEL_HELP = "Model spec: default (embedded SmolLM2-135M-Instruct), a .gguf path, a local HF dir, a cached hub id."


FROM_MODEL_HELP = "Model spec (default: the model of the --from run)."


@circuits_app.command("elicit")
def elicit_cmd(
    ctx: typer.Context,
    model: str = option("--model"),
    data: str = option("--data", "builtin:sev"),
    split: str = option("--split", "all"),
    limit: int | None = option("--limit"),
    judges: list[str] = option("--judge"),
    accept: str = typer.Option("first", "--accept", help="first (the first judge agrees) | all | any | a judge name."),
    emotions: list[str] = option("--emotion"),
    max_new_tokens: int = option("--max-new-tokens", 100),
    system: str | None = option("--system", None),
    dtype: str = option("--dtype"),
    seed: int = option("--seed"),
    out: Path = option("--out"),
    quiet: bool = option("--quiet"),
    labels: str | None = option("--labels"),
    drop_unknown: bool = option("--drop-unknown"),
    text_field: str | None = option("--text-field"),
    label_field: str | None = option("--label-field"),
    preset: str | None = option("--preset"),
) -> None:
    """Prompt each skeleton x valence to reply in each emotion, judge the replies, score accuracy."""
    from emocircuits.jobs.circuits import run_elicit

    config = {"model": model, "data": data, "split": split, "limit": limit, "judges": list(judges or ["lexicon"]),
              "accept": accept, "emotions": list(emotions or EKMAN6), "max_new_tokens": max_new_tokens,
              "dtype": dtype, "seed": seed, "system": system}
    for key, value in (("labels", split_list(labels)), ("text_field", text_field), ("label_field", label_field),
                       ("drop_unknown", drop_unknown or None)):
        if value is not None:  # recorded only when given: earlier runs' configs stay as they were
            config[key] = value
    if labels is not None and not config["labels"]:
        raise EmocircuitsError(f"--labels {labels!r} names no label; pass comma-separated labels, e.g. positive,negative.")
    config = apply_preset(ctx, preset, config, "circuits elicit")
    el = run_elicit(config, out, quiet)
    acc = el.accuracy[el.accuracy.valence == "all"]
    for judge, d in acc.groupby("judge", sort=False):
        typer.echo(f"{judge}: " + ", ".join(f"{r.emotion} {r.accuracy:.2f}" for r in d.itertuples()))
    cut = float((el.replies["finish"] == "length").mean())
    typer.echo(f"accepted {el.replies.accepted.mean():.2f} of {len(el.replies)} replies (cut off at "
               f"--max-new-tokens: {cut:.2f}) -> {out}")


@circuits_app.command("directions")
def directions_cmd(
    ctx: typer.Context,
    source: Path = option("--from"),
    model: str | None = option("--model", None),
    allow_other_model: bool = option("--allow-other-model"),
    groups: str = option("--groups"),
    n_boot: int = option("--n-boot", 200),
    shuffles: int = typer.Option(20, "--shuffles", help="Random-label control: shuffles of emotions within groups.",
                                 callback=at_least(0)("--shuffles")),
    last_after_final_norm: bool = typer.Option(False, "--last-after-final-norm/--last-before-final-norm",
                                               help="Read the last layer's resid.post direction after the final "
                                               "norm (the paper's hidden_states[-1]) instead of before it."),
    seed: int = option("--seed"),
    out: Path = option("--out"),
    quiet: bool = option("--quiet"),
    preset: str | None = option("--preset"),
) -> None:
    """Emotion directions at resid.mid / resid.post of every layer, with cosine tables and a shuffled control."""
    from emocircuits.jobs.circuits import run_directions

    config = {"from": str(source), "model": model, "allow_other_model": allow_other_model, "groups": groups, "n_boot": n_boot, "shuffles": shuffles,
              "seed": seed, "last_after_final_norm": last_after_final_norm}
    config = apply_preset(ctx, preset, config, "circuits directions")
    dr = run_directions(config, out, quiet)
    ctl = dr.control.dropna(subset=["real"])
    beat = f"; cross-valence cosine beats the shuffled control at {int(ctl.beats.sum())}/{len(ctl)} site-layers" \
        if len(ctl) else ""
    typer.echo(f"{len(dr.directions)} directions from {dr.summary['n_groups']} of {dr.summary['n_groups_total']} "
               f"groups{beat} -> {out}")


@circuits_app.command("components")
def components_cmd(
    ctx: typer.Context,
    source: Path = option("--from"),
    model: str | None = option("--model", None),
    allow_other_model: bool = option("--allow-other-model"),
    top_k: int = option("--top-k", 20),
    top_k_heads: int | None = typer.Option(None, "--top-k-heads", help="Heads kept per emotion (default --top-k)."),
    head_score: str = typer.Option("mlp_in", "--head-score", help="Head importance: mlp_in (the drop of the MLP "
                                   "input's projection, after the layer's normalisation, as the paper) | resid (the "
                                   "drop of the un-normalised resid.mid projection)."),
    ablation: bool = typer.Option(False, "--ablation", help="Score heads by real per-head ablation (one pass per "
                                  "head) and record the largest difference to the one-pass scores."),
    use: str = option("--use", "used"),
    max_samples: int | None = typer.Option(None, "--max-samples", help="At most N prompts per emotion (the first, "
                                           "after --per-valence; unset: all).", callback=at_least(1)("--max-samples")),
    per_valence: int | None = typer.Option(None, "--per-valence", help="At most N prompts per emotion and valence, "
                                           "drawn with --seed (stratified; unset: all).",
                                           callback=at_least(1)("--per-valence")),
    layers: str | None = option("--layers", None),
    seed: int = option("--seed"),
    out: Path = option("--out"),
    quiet: bool = option("--quiet"),
    preset: str | None = option("--preset"),
) -> None:
    """Score every MLP neuron (analytic) and query head (the drop of its emotion projection when removed) per
    emotion; keep the top-k."""
    from emocircuits.jobs.circuits import run_components

    config = {"from": str(source), "model": model, "allow_other_model": allow_other_model, "top_k": top_k, "top_k_heads": top_k_heads,
              "head_score": head_score, "ablation": ablation, "use": use, "max_samples": max_samples,
              "per_valence": per_valence, "layers": layers, "seed": seed}
    config = apply_preset(ctx, preset, config, "circuits components")
    co = run_components(config, out, quiet)
    if config["ablation"]:
        typer.echo(f"heads scored by per-head ablation ({config['head_score']}); largest difference to the one-pass scores "
                   f"{co.config['head_ablation_max_diff']:.2g}")
    for e, hs in co.head_sets.items():
        typer.echo(f"{e}: top heads {[f'L{a}H{b}' for a, b in list(hs.heads)[:5]]}, "
                   f"{len(co.neuron_sets[e])} neurons over {len(co.neuron_sets[e].layers)} layers")
    typer.echo(f"-> {out}")


@circuits_app.command("validate")
def validate_cmd(
    ctx: typer.Context,
    source: Path = option("--from"),
    model: str | None = option("--model", None),
    allow_other_model: bool = option("--allow-other-model"),
    kinds: str = typer.Option("neurons,heads", "--kinds", help="neurons, heads or neurons,heads."),
    scales: str = typer.Option("0,0.5,1,1.5,2,3", "--scales", help="Comma-separated scale factors.", callback=number_list(0)("--scales")),
    controls: int = option("--controls"),
    top_k: int = option("--top-k", 0),
    emotions: list[str] = option("--emotion"),
    max_prompts: int | None = option("--max-prompts"),
    seed: int = option("--seed"),
    judges: list[str] = option("--judge"),
    judge_prompts: int = typer.Option(6, "--judge-prompts", help="Prompts per emotion for the judged generations."),
    max_new_tokens: int = option("--max-new-tokens", 30),
    out: Path = option("--out"),
    resume: bool = option("--resume"),
    executor: str | None = option("--executor"),
    workers: int | None = option("--workers"),
    quiet: bool = option("--quiet"),
    preset: str | None = option("--preset"),
) -> None:
    """Scale the top-k components by each factor vs k random ones (a `component_validation` sweep)."""
    from emocircuits.jobs.circuits import parse_scales
    from emocircuits.sweeps import failed_cells_text, run_sweep
    from emocircuits.sweeps.analyses.component_validation import validation_config

    if len(judges or []) > 1:
        raise EmocircuitsError(f"circuits validate judges with one judge; --judge was given {len(judges)} times.")
    judge = (judges or [""])[0]
    chosen = apply_preset(ctx, preset, {"max_new_tokens": max_new_tokens, "seed": seed, "top_k": top_k,
                                        "controls": controls, "judge_prompts": judge_prompts}, "circuits validate")
    cfg = validation_config(components=str(source), model=model, kinds=[k.strip() for k in kinds.split(",") if k.strip()],
                            scales=parse_scales(scales), emotions=list(emotions or []) or None, top_k=chosen["top_k"],
                            controls=chosen["controls"], max_prompts=max_prompts or 0, seed=chosen["seed"],
                            judge=judge, judge_prompts=chosen["judge_prompts"],
                            max_new_tokens=chosen["max_new_tokens"],
                            allow_other_model=allow_other_model)
    if preset is not None:  # a sweep's [sweep] table has no preset key: the description records it
        cfg["sweep"]["description"] += (f"; preset {preset}: "
                                        + ", ".join(f"{k}={v}" for k, v in chosen["preset_settings"].items()))
    result = run_sweep(cfg, out, resume=resume, executor=executor, workers=workers, progress=not quiet)
    for r in result.table[result.table["status"] == "ok"].itertuples():
        judged = (f"  judged top {r.judged_top:.2f} random {r.judged_random:.2f}" if judge else "")
        typer.echo(f"{r.emotion:<10} {r.kind:<8} s={r.scale:<4g} top {r.top:+.3f} random {r.random:+.3f} "
                   f"diff {r.diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]{judged}")
    failed = failed_cells_text(result.table)
    if failed:
        typer.echo(failed, err=True)
    typer.echo(f"-> {out}")


@circuits_app.command("influence")
def influence_cmd(
    ctx: typer.Context,
    source: Path = option("--from"),
    model: str | None = option("--model", None),
    allow_other_model: bool = option("--allow-other-model"),
    alphas: str = typer.Option("0.1,0.3,0.5,0.7", "--alphas", help="Injection sizes α (× σ), comma-separated.",
                                callback=number_list(0)("--alphas")),
    emotions: list[str] = option("--emotion"),
    readout: str = typer.Option("final.norm", "--readout", help="final.norm (after the final norm) | resid."),
    sigma_from: str = typer.Option("output", "--sigma-from", help="σ from the sublayer output | resid."),
    ref_fraction: float = typer.Option(1 / 6, "--ref-fraction", help="Share of last layers averaged into v_ref.",
                                       callback=share("--ref-fraction")),
    ref_layers: str | None = typer.Option(None, "--ref-layers", help="Layers A-B averaged into v_ref, or paper "
                                          "(the authors' stable segment 21-25 of 28, scaled); default: the last "
                                          "ceil(--ref-fraction · n) layers."),
    ref_anchor: str | None = typer.Option(None, "--ref-anchor", help="SITE:LAYER the v_ref directions are "
                                          "sign-aligned to, or paper (resid.mid at the window's first layer, "
                                          "as the authors); default: the last layer's resid.post."),
    sigma_prompts: str = typer.Option("neutral", "--sigma-prompts", help="σ measured over the emotion-free "
                                      "influence prompts (neutral) or the elicitation prompts of the directions "
                                      "run (elicit; the paper, with --sigma-from resid)."),
    layers: str | None = option("--layers", None),
    system: str | None = option("--system", None),
    max_prompts: int | None = option("--max-prompts"),
    use: str = option("--use", "all"),
    method: str = typer.Option("fast", "--engine", help="fast (last token only, KV cache) | full (re-runs whole prompts; the reference)."),
    out: Path = option("--out"),
    quiet: bool = option("--quiet"),
    preset: str | None = option("--preset"),
) -> None:
    """Sublayer influence: inject α·σ·v̂ into one attention or MLP output and measure the final projection."""
    from emocircuits.jobs.circuit_build import run_influence

    config = {"from": str(source), "model": model, "allow_other_model": allow_other_model, "alphas": alphas, "emotions": list(emotions or []),
              "readout": readout, "sigma_from": sigma_from, "ref_fraction": ref_fraction, "max_prompts": max_prompts,
              "method": method, "ref_layers": ref_layers, "ref_anchor": ref_anchor, "sigma_prompts": sigma_prompts,
              "layers": layers, "system": system, "use": use}
    config = apply_preset(ctx, preset, config, "circuits influence")
    res = run_influence(config, out, quiet)
    for e, d in res.table.groupby("emotion", sort=False):
        top = d.nlargest(3, "influence")
        typer.echo(f"{e:<10} top sublayers " + ", ".join(f"L{r.layer} {r.sublayer} {r.influence:.2f}"
                                                         for r in top.itertuples()))
    typer.echo(f"-> {out}")


@circuits_app.command("assemble")
def assemble_cmd(
    ctx: typer.Context,
    influence: Path = typer.Option(..., "--influence", help="Run directory of `emocircuits circuits influence`."),
    components: Path = typer.Option(..., "--components", help="Run directory of `emocircuits circuits components`."),
    model: str | None = option("--model", None),
    allow_other_model: bool = option("--allow-other-model"),
    k_total: int | None = typer.Option(None, "--k", help="Components per emotion (default 560 · n_layers / 28)."),
    neuron_share: float = typer.Option(0.7, "--neuron-share", help="Share of K that are neurons (paper: 392/560).",
                                       callback=share("--neuron-share")),
    min_neurons: int = typer.Option(4, "--min-neurons", help="Neurons per layer at least."),
    min_heads: int = typer.Option(2, "--min-heads", help="Heads per layer at least."),
    cap_ratio: float = typer.Option(0.4, "--cap-ratio", help="At most this share of a kind's budget in one layer.",
                                    callback=share("--cap-ratio")),
    groups: str = option("--groups", "all"),
    out: Path = option("--out"),
    quiet: bool = option("--quiet"),
    preset: str | None = option("--preset"),
) -> None:
    """Assemble each emotion's circuit: a budget over layers by influence, top components, shift vectors Δμ."""
    from emocircuits.jobs.circuit_build import run_assemble

    config = {"influence": str(influence), "components": str(components), "model": model,
              "allow_other_model": allow_other_model, "k_total": k_total,
              "neuron_share": neuron_share, "min_neurons": min_neurons, "min_heads": min_heads,
              "cap_ratio": cap_ratio, "groups": groups}
    config = apply_preset(ctx, preset, config, "circuits assemble")
    asm = run_assemble(config, out, quiet)
    for e, c in asm.circuits.items():
        typer.echo(f"{e:<10} {len(c.neurons)} neurons, {len(c.heads)} heads over {len(c.layers())} layers")
    typer.echo(f"-> {out}")


@circuits_app.command("steer")
def steer_compare_cmd(
    ctx: typer.Context,
    source: Path | None = option("--from", None),
    directions: Path | None = option("--directions"),
    model: str | None = option("--model", None),
    allow_other_model: bool = option("--allow-other-model"),
    data: str = option("--data", "builtin:sev"),
    split: str = option("--split", "test"),
    limit: int | None = option("--limit"),
    emotions: list[str] = option("--emotion"),
    methods: str = typer.Option("circuit,residual,prompt,none,random", "--methods", help="Comma-separated methods."),
    scale: str = option("--scale"),
    alpha: str = option("--alpha"),
    dose: str | None = option("--dose"),
    calibration_prompts: int = option("--calibration-prompts"),
    sentences: int = option("--sentences"),
    band: str | None = option("--band"),
    site: str = option("--site"),
    n_random: int = option("--n-random", 3),
    judges: list[str] = option("--judge"),
    max_new_tokens: int = option("--max-new-tokens"),
    min_new_tokens: int = option("--min-new-tokens"),
    repetition_penalty: float = option("--repetition-penalty"),
    no_repeat_ngram_size: int = option("--no-repeat-ngram-size"),
    system: str | None = option("--system", None),
    prompt_system: str | None = option("--prompt-system"),
    seed: int = option("--seed"),
    out: Path = option("--out"),
    quiet: bool = option("--quiet"),
    preset: str | None = option("--preset"),
) -> None:
    """Circuit vs residual steering vs prompting vs nothing vs random circuits: judged accuracy and text quality.
    --from: a `circuits assemble` run; residual, prompt and none alone need only --directions."""
    from emocircuits.jobs.steer import run_steer, steer_lines

    config = {"from": None if source is None else str(source), "allow_other_model": allow_other_model,
              "directions": None if directions is None else str(directions), "model": model, "data": data, "split": split, "limit": limit,
              "emotions": list(emotions or []), "methods": methods, "scale": scale, "alpha": alpha, "band": band,
              "n_random": n_random, "judges": list(judges or ["lexicon"]), "max_new_tokens": max_new_tokens,
              "seed": seed, "site": site, "min_new_tokens": min_new_tokens, "repetition_penalty": repetition_penalty,
              "no_repeat_ngram_size": no_repeat_ngram_size, "system": system, "prompt_system": prompt_system,
              "dose": dose, "calibration_prompts": calibration_prompts, "sentences": sentences}
    config = apply_preset(ctx, preset, config, "circuits steer")
    res = run_steer(config, out, quiet)
    for line in steer_lines(res):
        typer.echo(line)
    typer.echo(f"-> {out}")


def steer_cmd(
    ctx: typer.Context,
    text: str = typer.Argument(..., help="The user message to reply to."),
    emotion: str = option("--emotion", ...),
    method: str = typer.Option("prompt", "--method", help="circuit | residual | prompt | random."),
    scale: str = option("--scale"),
    calibration_prompts: int = option("--calibration-prompts"),
    sentences: int = option("--sentences"),
    circuits: Path | None = typer.Option(None, "--circuits", help="Run directory of `emocircuits circuits assemble` "
                                         "(needed by circuit and random; or --directions for residual)."),
    directions: Path | None = option("--directions"),
    band: str | None = option("--band"),
    site: str = option("--site"),
    model: str | None = option("--model", None),
    allow_other_model: bool = option("--allow-other-model"),
    max_new_tokens: int = option("--max-new-tokens"),
    min_new_tokens: int = option("--min-new-tokens"),
    repetition_penalty: float = option("--repetition-penalty"),
    no_repeat_ngram_size: int = option("--no-repeat-ngram-size"),
    system: str | None = option("--system", None),
    prompt_system: str | None = option("--prompt-system"),
    seed: int = option("--seed"),
    preset: str | None = option("--preset"),
) -> None:
    """Steered and unsteered replies to one message, side by side."""
    from emocircuits.jobs.steer import steer_from_runs

    c = apply_preset(ctx, preset, {"max_new_tokens": max_new_tokens, "seed": seed, "band": band, "site": site,
                                   "system": system, "prompt_system": prompt_system, "min_new_tokens": min_new_tokens,
                                   "repetition_penalty": repetition_penalty,
                                   "no_repeat_ngram_size": no_repeat_ngram_size, "sentences": sentences}, "steer")
    r = steer_from_runs(text, emotion, method, scale=scale, circuits=circuits, directions=directions, model=model,
                        max_new_tokens=c["max_new_tokens"], seed=c["seed"], band=c["band"], site=c["site"],
                        system=c["system"], prompt_system=c["prompt_system"], min_new_tokens=c["min_new_tokens"],
                        repetition_penalty=c["repetition_penalty"], no_repeat_ngram_size=c["no_repeat_ngram_size"],
                        sentences=c["sentences"], calibration_prompts=calibration_prompts,
                        allow_other_model=allow_other_model)
    if r["strength_choice"] is not None:
        typer.echo(r["strength_choice"].line())
    typer.echo(f"[unsteered, {r['finish_unsteered']}]\n{r['unsteered']}\n\n[{r['method']} {r['emotion']}"
               + (f", scale {r['scale']:g}" if r["scale"] is not None else "") + f", {r['finish_steered']}]\n"
               f"{r['steered']}")


def register(app: typer.Typer) -> None:
    app.add_typer(circuits_app, name="circuits")
    app.command("steer")(steer_cmd)
