"""`emocircuits circuits elicit|directions|components|validate|influence|assemble|steer` and `emocircuits steer`:
thin fronts over ``emocircuits.methods.circuits``, ``emocircuits.methods.circuits`` and ``emocircuits.methods.circuits.steer``.

Each step reads the run directory of the step before (``--from``) and writes its own; every command
builds a plain config dict and calls the library's ``run_<step>``, which ``emocircuits rerun`` also uses
(the jobs register themselves in their library modules). ``validate`` is a ``component_validation`` sweep.
"""

from __future__ import annotations

from pathlib import Path

import typer

from emocircuits.data import EKMAN6
from emocircuits.jobs.circuits import run_components, run_directions, run_elicit

circuits_app = typer.Typer(help="Emotion circuits (Wang et al. 2025): elicit, directions, components, validate, "
                           "influence, assemble, steer.",
                           no_args_is_help=True)


MODEL_HELP = "Model spec: default (embedded SmolLM2-135M-Instruct), a .gguf path, a local HF dir, a cached hub id."


FROM_MODEL_HELP = "Model spec (default: the model of the --from run)."


@circuits_app.command("elicit")
def elicit_cmd(
    model: str = typer.Option("default", "--model", help=MODEL_HELP),
    data: str = typer.Option("builtin:sev", "--data", help="SEV skeletons: builtin:sev or sev:PATH."),
    split: str = typer.Option("all", "--split", help="train, test or all."),
    limit: int | None = typer.Option(None, "--limit", help="At most N skeletons (round-robin over themes)."),
    judges: list[str] = typer.Option(None, "--judge", help="Judge(s): lexicon, self, embedding, hf:DIR, llm:SPEC "
                                     "(repeatable; default lexicon)."),
    accept: str = typer.Option("first", "--accept", help="first (the first judge agrees) | all | any | a judge name."),
    emotions: list[str] = typer.Option(None, "--emotion", help="Target emotions (repeatable; default Ekman six)."),
    max_new_tokens: int = typer.Option(100, "--max-new-tokens", help="Tokens per reply (greedy)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap CIs."),
    out: Path = typer.Option(..., "--out", help="Run directory to write."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Prompt each skeleton x valence to reply in each emotion, judge the replies, score accuracy."""
    config = {"model": model, "data": data, "split": split, "limit": limit, "judges": list(judges or ["lexicon"]),
              "accept": accept, "emotions": list(emotions or EKMAN6), "max_new_tokens": max_new_tokens,
              "dtype": dtype, "seed": seed}
    el = run_elicit(config, out, quiet)
    acc = el.accuracy[el.accuracy.valence == "all"]
    for judge, d in acc.groupby("judge", sort=False):
        typer.echo(f"{judge}: " + ", ".join(f"{r.emotion} {r.accuracy:.2f}" for r in d.itertuples()))
    typer.echo(f"accepted {el.replies.accepted.mean():.2f} of {len(el.replies)} replies -> {out}")


@circuits_app.command("directions")
def directions_cmd(
    source: Path = typer.Option(..., "--from", help="Run directory of `emocircuits circuits elicit`."),
    model: str | None = typer.Option(None, "--model", help=FROM_MODEL_HELP),
    groups: str = typer.Option("accepted", "--groups", help="accepted (every emotion accepted) | all."),
    n_boot: int = typer.Option(200, "--n-boot", help="Bootstrap resamples of the groups for the cosine CIs."),
    shuffles: int = typer.Option(20, "--shuffles", help="Random-label control: shuffles of emotions within groups."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap and the shuffles."),
    out: Path = typer.Option(..., "--out", help="Run directory to write."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Emotion directions at resid.mid / resid.post of every layer, with cosine tables and a shuffled control."""
    config = {"from": str(source), "model": model, "groups": groups, "n_boot": n_boot, "shuffles": shuffles,
              "seed": seed}
    dr = run_directions(config, out, quiet)
    ctl = dr.control.dropna(subset=["real"])
    beat = f"; cross-valence cosine beats the shuffled control at {int(ctl.beats.sum())}/{len(ctl)} site-layers" \
        if len(ctl) else ""
    typer.echo(f"{len(dr.directions)} directions from {dr.summary['n_groups']} of {dr.summary['n_groups_total']} "
               f"groups{beat} -> {out}")


@circuits_app.command("components")
def components_cmd(
    source: Path = typer.Option(..., "--from", help="Run directory of `emocircuits circuits directions`."),
    model: str | None = typer.Option(None, "--model", help=FROM_MODEL_HELP),
    top_k: int = typer.Option(20, "--top-k", help="Neurons kept per emotion (global top by mean contribution)."),
    top_k_heads: int | None = typer.Option(None, "--top-k-heads", help="Heads kept per emotion (default --top-k)."),
    out: Path = typer.Option(..., "--out", help="Run directory to write."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Score every MLP neuron (analytic) and query head (one-pass ablation drop) per emotion; keep the top-k."""
    config = {"from": str(source), "model": model, "top_k": top_k, "top_k_heads": top_k_heads}
    co = run_components(config, out, quiet)
    for e, hs in co.head_sets.items():
        typer.echo(f"{e}: top heads {[f'L{a}H{b}' for a, b in list(hs.heads)[:5]]}, "
                   f"{len(co.neuron_sets[e])} neurons over {len(co.neuron_sets[e].layers)} layers")
    typer.echo(f"-> {out}")


@circuits_app.command("validate")
def validate_cmd(
    source: Path = typer.Option(..., "--from", help="Run directory of `emocircuits circuits components`."),
    model: str | None = typer.Option(None, "--model", help=FROM_MODEL_HELP),
    kinds: str = typer.Option("neurons,heads", "--kinds", help="neurons, heads or neurons,heads."),
    scales: str = typer.Option("0,0.5,1,1.5,2,3", "--scales", help="Comma-separated scale factors."),
    controls: int = typer.Option(5, "--controls", help="Random component sets per condition (seeds)."),
    top_k: int = typer.Option(0, "--top-k", help="Re-pick the top-k from the score tables "
                              "(default 0: the sets the components run kept)."),
    emotions: list[str] = typer.Option(None, "--emotion", help="Only these emotions (repeatable)."),
    max_prompts: int = typer.Option(0, "--max-prompts", help="At most N prompts per emotion (0 = all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random sets and the bootstrap."),
    judge: str = typer.Option("", "--judge", help="Also judge generations under each condition with this judge "
                              "(e.g. lexicon; default: none)."),
    judge_prompts: int = typer.Option(6, "--judge-prompts", help="Prompts per emotion for the judged generations."),
    max_new_tokens: int = typer.Option(30, "--max-new-tokens", help="Tokens per judged reply."),
    out: Path = typer.Option(..., "--out", help="Sweep directory: manifest.json, results.parquet, cells/."),
    resume: bool = typer.Option(False, "--resume", help="Continue the sweep in --out, running only missing cells."),
    executor: str | None = typer.Option(None, "--executor", help="local or ray."),
    workers: int | None = typer.Option(None, "--workers", help="Worker processes / Ray actors, each with one model."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Scale the top-k components by each factor vs k random ones (a `component_validation` sweep)."""
    from emocircuits.jobs.circuits import parse_scales
    from emocircuits.sweeps import failed_cells_text, run_sweep
    from emocircuits.sweeps.analyses.component_validation import validation_config

    cfg = validation_config(components=str(source), model=model, kinds=[k.strip() for k in kinds.split(",") if k.strip()],
                            scales=parse_scales(scales), emotions=list(emotions or []) or None, top_k=top_k,
                            controls=controls, max_prompts=max_prompts, seed=seed, judge=judge,
                            judge_prompts=judge_prompts, max_new_tokens=max_new_tokens)
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
    source: Path = typer.Option(..., "--from", help="Run directory of `emocircuits circuits directions`."),
    model: str | None = typer.Option(None, "--model", help=FROM_MODEL_HELP),
    alphas: str = typer.Option("0.1,0.3,0.5,0.7", "--alphas", help="Injection sizes α (× σ), comma-separated."),
    emotions: list[str] = typer.Option(None, "--emotion", help="Only these emotions (repeatable)."),
    readout: str = typer.Option("final.norm", "--readout", help="final.norm (after the final norm) | resid."),
    sigma_from: str = typer.Option("output", "--sigma-from", help="σ from the sublayer output | resid."),
    ref_fraction: float = typer.Option(1 / 6, "--ref-fraction", help="Share of last layers averaged into v_ref."),
    max_prompts: int | None = typer.Option(None, "--max-prompts", help="At most N neutral prompts."),
    method: str = typer.Option("fast", "--method", help="fast (last token only, KV cache) | full (reference)."),
    out: Path = typer.Option(..., "--out", help="Run directory to write."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Sublayer influence: inject α·σ·v̂ into one attention or MLP output and measure the final projection."""
    from emocircuits.jobs.circuit_build import run_influence

    config = {"from": str(source), "model": model, "alphas": alphas, "emotions": list(emotions or []),
              "readout": readout, "sigma_from": sigma_from, "ref_fraction": ref_fraction, "max_prompts": max_prompts,
              "method": method}
    res = run_influence(config, out, quiet)
    for e, d in res.table.groupby("emotion", sort=False):
        top = d.nlargest(3, "influence")
        typer.echo(f"{e:<10} top sublayers " + ", ".join(f"L{r.layer} {r.sublayer} {r.influence:.2f}"
                                                         for r in top.itertuples()))
    typer.echo(f"-> {out}")


@circuits_app.command("assemble")
def assemble_cmd(
    influence: Path = typer.Option(..., "--influence", help="Run directory of `emocircuits circuits influence`."),
    components: Path = typer.Option(..., "--components", help="Run directory of `emocircuits circuits components`."),
    model: str | None = typer.Option(None, "--model", help="Model spec (default: the model of the influence run)."),
    k_total: int | None = typer.Option(None, "--k", help="Components per emotion (default 560 · n_layers / 28)."),
    neuron_share: float = typer.Option(0.7, "--neuron-share", help="Share of K that are neurons (paper: 392/560)."),
    min_neurons: int = typer.Option(4, "--min-neurons", help="Neurons per layer at least."),
    min_heads: int = typer.Option(2, "--min-heads", help="Heads per layer at least."),
    cap_ratio: float = typer.Option(0.4, "--cap-ratio", help="At most this share of a kind's budget in one layer."),
    groups: str = typer.Option("all", "--groups", help="Groups for the shift vectors Δμ: all | accepted."),
    out: Path = typer.Option(..., "--out", help="Run directory to write."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Assemble each emotion's circuit: a budget over layers by influence, top components, shift vectors Δμ."""
    from emocircuits.jobs.circuit_build import run_assemble

    config = {"influence": str(influence), "components": str(components), "model": model, "k_total": k_total,
              "neuron_share": neuron_share, "min_neurons": min_neurons, "min_heads": min_heads,
              "cap_ratio": cap_ratio, "groups": groups}
    asm = run_assemble(config, out, quiet)
    for e, c in asm.circuits.items():
        typer.echo(f"{e:<10} {len(c.neurons)} neurons, {len(c.heads)} heads over {len(c.layers())} layers")
    typer.echo(f"-> {out}")


@circuits_app.command("steer")
def steer_compare_cmd(
    source: Path = typer.Option(..., "--from", help="Run directory of `emocircuits circuits assemble`."),
    model: str | None = typer.Option(None, "--model", help="Model spec (default: the model of the assemble run)."),
    data: str = typer.Option("builtin:sev", "--data", help="SEV skeletons: builtin:sev or sev:PATH."),
    split: str = typer.Option("test", "--split", help="train, test or all."),
    limit: int | None = typer.Option(None, "--limit", help="At most N skeletons."),
    emotions: list[str] = typer.Option(None, "--emotion", help="Only these emotions (repeatable)."),
    methods: str = typer.Option("circuit,residual,prompt,none,random", "--methods", help="Comma-separated methods."),
    scale: float = typer.Option(1.0, "--scale", help="Circuit steering: s · Δμ."),
    alpha: float = typer.Option(8.0, "--alpha", help="Residual steering: α · RMS(h) · v."),
    band: str | None = typer.Option(None, "--band", help="Residual steering layers A-B (default: the paper's band, "
                                    "scaled)."),
    n_random: int = typer.Option(3, "--n-random", help="Random circuits (seeds) for the control."),
    judges: list[str] = typer.Option(None, "--judge", help="Judge(s) (repeatable; default lexicon)."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", help="Tokens per reply (greedy)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random circuits and the bootstrap."),
    out: Path = typer.Option(..., "--out", help="Run directory to write."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Circuit vs residual steering vs prompting vs nothing vs random circuits: judged accuracy and text quality."""
    from emocircuits.jobs.steer import run_steer

    config = {"from": str(source), "model": model, "data": data, "split": split, "limit": limit,
              "emotions": list(emotions or []), "methods": methods, "scale": scale, "alpha": alpha, "band": band,
              "n_random": n_random, "judges": list(judges or ["lexicon"]), "max_new_tokens": max_new_tokens,
              "seed": seed}
    res = run_steer(config, out, quiet)
    pooled = res.accuracy[(res.accuracy.emotion == "all") & (res.accuracy.valence == "all")]
    quality = res.quality[res.quality.emotion == "all"].set_index("method")
    for r in pooled.itertuples():
        q = ""
        if r.method in quality.index:
            qr = quality.loc[r.method]
            q = f"  ppl {qr.ppl_median:.1f}  distinct-2 {qr.distinct2:.2f}  cut-off {qr.cut_off:.2f}"
        typer.echo(f"{r.judge:<10} {r.method:<9} accuracy {r.accuracy:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]{q}")
    typer.echo(f"-> {out}")


def steer_cmd(
    text: str = typer.Argument(..., help="The user message to reply to."),
    emotion: str = typer.Option(..., "--emotion", help="Target emotion."),
    method: str = typer.Option("prompt", "--method", help="circuit | residual | prompt | random."),
    scale: float | None = typer.Option(None, "--scale", help="s for circuit/random (default 1), α for residual "
                                       "(default 8)."),
    circuits: Path | None = typer.Option(None, "--circuits", help="Run directory of `emocircuits circuits assemble` "
                                         "(needed by circuit, random and residual)."),
    model: str | None = typer.Option(None, "--model", help="Model spec (default: the circuits run's, else default)."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", help="Tokens per reply (greedy)."),
    seed: int = typer.Option(0, "--seed", help="Seed of a random circuit."),
) -> None:
    """Steered and unsteered replies to one message, side by side."""
    from emocircuits.jobs.steer import steer_from_runs

    r = steer_from_runs(text, emotion, method, scale=scale, circuits=circuits, model=model,
                        max_new_tokens=max_new_tokens, seed=seed)
    typer.echo(f"[unsteered]\n{r['unsteered']}\n\n[{r['method']} {r['emotion']}"
               + (f", scale {r['scale']:g}" if r["scale"] is not None else "") + f"]\n{r['steered']}")


def register(app: typer.Typer) -> None:
    app.add_typer(circuits_app, name="circuits")
    app.command("steer")(steer_cmd)
