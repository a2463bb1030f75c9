"""`emocircuits circuits elicit|directions|components|validate`: thin fronts over ``emocircuits.circuits``.

Each step reads the run directory of the step before (``--from``) and writes its own; every command
builds a plain config dict and calls ``emocircuits.circuits.run_<step>``, which ``emocircuits rerun``
also uses (the jobs register themselves in that library module).
"""

from __future__ import annotations

from pathlib import Path

import typer

from emocircuits.circuits import run_components, run_directions, run_elicit
from emocircuits.data import EKMAN6

circuits_app = typer.Typer(help="Emotion circuits (Wang et al. 2025): elicit, directions, components, validate.",
                           no_args_is_help=True)

MODEL_HELP = "Model spec: default (embedded SmolLM2-135M-Instruct), a .gguf path, a local HF dir, a cached hub id."
FROM_MODEL_HELP = "Model spec (default: the model of the --from run)."














# ----------------------------------------------------------------------------- elicit




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


# ----------------------------------------------------------------------------- directions






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


# ----------------------------------------------------------------------------- components








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


# ----------------------------------------------------------------------------- validate




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
    out: Path = typer.Option(..., "--out", help="Sweep directory: manifest.json, results.parquet, cells/."),
    resume: bool = typer.Option(False, "--resume", help="Continue the sweep in --out, running only missing cells."),
    executor: str | None = typer.Option(None, "--executor", help="local or ray."),
    workers: int | None = typer.Option(None, "--workers", help="Worker processes / Ray actors, each with one model."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Scale the top-k components by each factor vs k random ones (a `component_validation` sweep)."""
    from emocircuits.circuits import parse_scales
    from emocircuits.sweeps import failed_cells_text, run_sweep
    from emocircuits.sweeps.analyses.component_validation import validation_config

    cfg = validation_config(components=str(source), model=model, kinds=[k.strip() for k in kinds.split(",") if k.strip()],
                            scales=parse_scales(scales), emotions=list(emotions or []) or None, top_k=top_k,
                            controls=controls, max_prompts=max_prompts, seed=seed)
    result = run_sweep(cfg, out, resume=resume, executor=executor, workers=workers, progress=not quiet)
    for r in result.table[result.table["status"] == "ok"].itertuples():
        typer.echo(f"{r.emotion:<10} {r.kind:<8} s={r.scale:<4g} top {r.top:+.3f} random {r.random:+.3f} "
                   f"diff {r.diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]")
    failed = failed_cells_text(result.table)
    if failed:
        typer.echo(failed, err=True)
    typer.echo(f"-> {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(circuits_app, name="circuits")
