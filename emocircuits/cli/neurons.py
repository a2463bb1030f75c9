"""`emocircuits neurons find|mask|sweep`: thin fronts over ``emocircuits.methods.neurons``.

Each command builds a plain config dict and calls a ``run_*`` function of :mod:`emocircuits.jobs`; the
same function re-creates a run from its manifest (``emocircuits rerun``). ``neurons sweep`` builds a
``neuron_masking`` sweep config and runs it through the sweep engine (resumable like every sweep).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from emocircuits.base.constants import DEFAULT_CONTROLS, DEFAULT_TEMPLATE, FLOOR_ACC, STABILITY_RESAMPLES
from emocircuits.base.errors import EmocircuitsError
from emocircuits.cli.classify import parse_labels
from emocircuits.cli.options import apply_preset, number_list, option, share

neurons_app = typer.Typer(help="Emotion neurons (Lee et al. 2025): find, mask, sweep.", no_args_is_help=True)


MODEL_HELP = "Model spec: default (embedded SmolLM2-135M-Instruct), a .gguf path, a local HF dir, a cached hub id."


DATA_HELP = "Data spec: builtin:dialogues, emoprism:PATH, envent:PATH, jsonl:PATH, csv:PATH, ..."


def _summarise_find(sel: Any) -> str:
    from emocircuits.methods.neurons.find import tie_summary

    counts = ", ".join(f"{e} {len(s)}" for e, s in sel.sets.items())
    return f"neurons per emotion: {counts}\n{tie_summary(sel)}"


def _summarise_stability(out: Path) -> str | None:
    """One line from the run's stability.parquet (None when the run has none)."""
    import pandas as pd

    file = out / "stability.parquet"
    if not file.exists():
        return None
    t = pd.read_parquet(file)
    parts = ", ".join(f"{r.emotion} {r.jaccard_mean:.2f} [{r.jaccard_low:.2f},{r.jaccard_high:.2f}]" for r in t.itertuples())
    return f"selection stability (Jaccard with the full-data set, {int(t.n_resamples.iloc[0])} resamples): {parts}"


@neurons_app.command("find")
def find_cmd(
    ctx: typer.Context,
    model: str = option("--model"),
    data: str = option("--data"),
    split: str | None = option("--split"),
    limit_per_label: int | None = option("--limit-per-label"),
    template: str = option("--template", DEFAULT_TEMPLATE),
    activation: str = typer.Option("gated", "--activation", help="gated (mlp.hook_post) | silu_only | pre."),
    tokens: str = typer.Option("all", "--tokens", help="Tokens counted: all prompt tokens (default, "
                               "as LAPE; comparable with earlier runs) | text (the text's own tokens, not the "
                               "template every emotion shares) | last."),
    top_rate: float = option("--top-rate"),
    assign: str = typer.Option("argmax", "--assign", help="argmax | lape (multi-assignment)."),
    dtype: str = option("--dtype"),
    stability: int = typer.Option(STABILITY_RESAMPLES, "--stability", help="Bootstrap resamples over texts for "
                                  "stability.parquet (per-emotion Jaccard with the full-data selection); 0 skips."),
    seed: int = option("--seed"),
    out: Path = option("--out"),
    quiet: bool = option("--quiet"),
    labels: str | None = option("--labels"),
    prepend_bos: bool | None = option("--prepend-bos/--no-prepend-bos"),
    drop_unknown: bool = option("--drop-unknown"),
    text_field: str | None = option("--text-field"),
    label_field: str | None = option("--label-field"),
    preset: str | None = option("--preset"),
) -> None:
    """Collect per-emotion activation statistics and select the lowest-entropy neurons (RQ1)."""
    from emocircuits.jobs.neurons import run_find

    config = {"model": model, "data": data, "split": split, "limit_per_label": limit_per_label, "template": template,
              "activation": activation, "tokens": tokens, "top_rate": top_rate, "assign": assign, "dtype": dtype,
              "seed": seed, "labels": parse_labels(labels), "drop_unknown": drop_unknown, "prepend_bos": prepend_bos,
              "stability": stability, "text_field": text_field, "label_field": label_field}
    config = apply_preset(ctx, preset, config, "neurons find")
    _, sel = run_find(config, out, quiet)
    typer.echo(f"{_summarise_find(sel)}\n-> {out}/neurons.json")
    line = _summarise_stability(out)
    if line:
        typer.echo(line)


def effects_table(effects: Any) -> str:
    """The RQ2 table as text: own-label accuracy normal / masked / control with the CI, the rank p-value among
    the K controls, and ``floor`` where the clean accuracy is too low to show a drop."""
    own = effects[effects.masked_emotion == effects.true_label]
    allr = effects[effects.true_label == "all"].set_index("masked_emotion")
    k = int(effects["k_controls"].iloc[0]) if "k_controls" in effects and len(effects) else 0
    lines = [f"{'masked':<10} {'n_neur':>6} {'own acc: normal':>15} {'masked':>7} {'control':>8} "
             f"{'diff [95% CI]':>22} {f'p (K={k})':>8} {'all-label acc: masked':>22}"]
    for _, r in own.iterrows():
        a = allr.loc[r.masked_emotion]
        lines.append(f"{r.masked_emotion:<10} {int(r.n_neurons):>6} {r.acc_normal:>15.3f} {r.acc_masked:>7.3f} "
                     f"{r.acc_control:>8.3f} {r['diff']:>+7.3f} [{r.ci_low:+.3f},{r.ci_high:+.3f}] "
                     f"{r.get('rank_p', float('nan')):>8.3f} {a.acc_masked:>10.3f} (normal {a.acc_normal:.3f})"
                     + ("  floor" if r.get("floor", False) else ""))
    if k:
        lines.append(f"p: rank of the masked accuracy among {k} random control sets, (1 + #controls at or below) "
                     f"/ (K + 1); it cannot go below {1 / (k + 1):.3f}.")
    if own.get("floor", own.acc_normal < 0).any():
        lines.append(f"floor: clean accuracy on that label is below {FLOOR_ACC}; masking cannot show a drop there.")
    return "\n".join(lines)


@neurons_app.command("mask")
def mask_cmd(
    ctx: typer.Context,
    neurons_file: Path = option("--neurons"),
    model: str | None = option("--model", None),
    data: str = option("--data"),
    split: str | None = option("--split"),
    limit_per_label: int | None = option("--limit-per-label"),
    template: str = option("--template", DEFAULT_TEMPLATE),
    layers: str = option("--layers", "all"),
    ratio: float | None = typer.Option(None, "--ratio", help="Masking ratio, e.g. 0.03 (default: the selected set).",
                                       callback=share("--ratio")),
    ratio_mode: str = option("--ratio-mode"),
    controls: int = option("--controls", DEFAULT_CONTROLS),
    emotions: list[str] = option("--emotion"),
    dtype: str = option("--dtype"),
    seed: int = option("--seed"),
    out: Path = option("--out"),
    quiet: bool = option("--quiet"),
    allow_other_model: bool = option("--allow-other-model"),
    prepend_bos: bool | None = option("--prepend-bos/--no-prepend-bos"),
    drop_unknown: bool = option("--drop-unknown"),
    labels: str | None = option("--labels"),
    text_field: str | None = option("--text-field"),
    label_field: str | None = option("--label-field"),
    preset: str | None = option("--preset"),
) -> None:
    """Mask emotion neurons and measure classification accuracy per true label, with random controls (RQ2)."""
    from emocircuits.jobs.neurons import run_mask

    config = {"neurons": str(neurons_file), "model": model, "data": data, "split": split,
              "limit_per_label": limit_per_label, "template": template, "layers": layers, "ratio": ratio,
              "ratio_mode": ratio_mode, "controls": controls, "emotions": list(emotions or []), "dtype": dtype,
              "seed": seed, "allow_other_model": allow_other_model, "drop_unknown": drop_unknown,
              "prepend_bos": prepend_bos, "text_field": text_field, "label_field": label_field}
    if labels is not None:
        config["labels"] = parse_labels(labels)
    config = apply_preset(ctx, preset, config, "neurons mask")
    res = run_mask(config, out, quiet)
    typer.echo(effects_table(res.effects))


@neurons_app.command("sweep")
def sweep_cmd(
    neurons_file: Path = option("--neurons"),
    model: str | None = option("--model", None),
    allow_other_model: bool = option("--allow-other-model"),
    data: str = option("--data"),
    split: str = option("--split", "test"),
    limit_per_label: int | None = option("--limit-per-label"),
    template: str = option("--template", DEFAULT_TEMPLATE),
    ratios: str = typer.Option("0.01,0.02,0.03,0.04,0.05", "--ratios", help="Comma-separated masking ratios.",
                                 callback=number_list(0)("--ratios")),
    layer_ranges: str = typer.Option("bottom,middle,top,all", "--layer-ranges", help="Comma-separated layer ranges."),
    ratio_mode: str = option("--ratio-mode"),
    controls: int = option("--controls", DEFAULT_CONTROLS),
    emotions: list[str] = option("--emotion"),
    dtype: str = option("--dtype"),
    seed: int = option("--seed"),
    out: Path = option("--out"),
    resume: bool = option("--resume"),
    executor: str | None = option("--executor"),
    workers: int | None = option("--workers"),
    quiet: bool = option("--quiet"),
) -> None:
    """Masking ratio x layer range for each emotion (RQ3) as a `neuron_masking` sweep (results.parquet)."""
    from emocircuits.sweeps import failed_cells_text, run_sweep
    from emocircuits.sweeps.analyses.neuron_masking import rq3_config

    try:
        ratio_list = [float(r) for r in ratios.split(",") if r.strip()]
    except ValueError:
        raise EmocircuitsError(f"--ratios {ratios!r} is not a comma-separated list of numbers, e.g. 0.01,0.03.") from None
    cfg = rq3_config(neurons=str(neurons_file), model=model, data=data, split=split, limit_per_label=limit_per_label,
                     template=template, ratios=ratio_list, ratio_mode=ratio_mode, controls=controls, seed=seed,
                     layer_ranges=[s.strip() for s in layer_ranges.split(",") if s.strip()], dtype=dtype,
                     emotions=list(emotions or []) or None, allow_other_model=allow_other_model)
    result = run_sweep(cfg, out, resume=resume, executor=executor, workers=workers, progress=not quiet)
    cols = ["emotion", "ratio", "layers", "n_neurons", "own_acc_normal", "own_acc_masked", "own_acc_control", "own_diff",
            "own_rank_p", "own_floor"]
    ok = result.table[result.table["status"] == "ok"]
    if not ok.empty:
        typer.echo(ok[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    failed = failed_cells_text(result.table)
    if failed:
        typer.echo(failed, err=True)


def register(app: typer.Typer) -> None:
    """Add ``neurons find|mask|sweep`` to ``app`` (re-running is registered by emocircuits.jobs)."""
    app.add_typer(neurons_app, name="neurons")
