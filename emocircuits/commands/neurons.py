"""`emocircuits neurons find|mask|sweep` and `emocircuits demo`: thin fronts over ``emocircuits.neurons``.

Each command builds a plain config dict and calls a ``run_*`` function; the same function re-creates a
run from its manifest (``emocircuits rerun``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from emocircuits.errors import EmocircuitsError
from emocircuits.prompts import DEFAULT_TEMPLATE

neurons_app = typer.Typer(help="Emotion neurons (Lee et al. 2025): find, mask, sweep.", no_args_is_help=True)

MODEL_HELP = "Model spec: default (embedded SmolLM2-135M-Instruct), a .gguf path, a local HF dir, a cached hub id."
DATA_HELP = "Data spec: builtin:dialogues, emoprism:PATH, envent:PATH, jsonl:PATH, csv:PATH, ..."


def _split(split: str | None) -> str | None:
    return None if split in (None, "all") else split


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise EmocircuitsError(f"--{name} {value!r} is not valid; use one of {', '.join(map(str, allowed))}.")


def _summarise_find(sel: Any) -> str:
    counts = ", ".join(f"{e} {len(s)}" for e, s in sel.sets.items())
    return f"neurons per emotion: {counts}"


# ----------------------------------------------------------------------------- find


def run_find(config: dict[str, Any], out: Path, quiet: bool = False, model_pair: Any = None) -> Any:
    """Collect statistics, select neurons, and write the find outputs into ``out``."""
    from emocircuits import neurons
    from emocircuits.data import load_data
    from emocircuits.models import load_model
    from emocircuits.runs import RunDir

    _check_choice("activation", config["activation"], ("gated", "silu_only", "pre"))
    _check_choice("tokens", config["tokens"], neurons.TOKEN_MODES)
    _check_choice("assign", config["assign"], neurons.ASSIGN_MODES)
    data = load_data(config["data"], split=_split(config["split"]), limit_per_label=config["limit_per_label"],
                     seed=config["seed"])
    bridge, spec = model_pair or load_model(config["model"], dtype=config.get("dtype", "float32"), progress=not quiet)
    with RunDir.create(out, command="neurons find", config=config, model_spec=spec, seed=config["seed"]) as run:
        stats = neurons.collect(bridge, data, reading=config["activation"], tokens=config["tokens"],
                                template=config["template"], progress=not quiet)
        sel = stats.select(top_rate=config["top_rate"], assign=config["assign"])
        write_find_outputs(run, stats, sel)
    return stats, sel


def write_find_outputs(run: Any, stats: Any, sel: Any) -> None:
    """neurons.json, neuron_stats.safetensors, neuron_summary.parquet, layer_counts.parquet, overlap.parquet."""
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
    for rank, (layer, i) in enumerate(keys):
        row = {"layer": layer, "neuron": i, "entropy": float(h[layer, i]), "emotions": ",".join(members[(layer, i)]),
               "rank": rank}
        row.update({f"p_{e}": float(p[layer, i, j]) for j, e in enumerate(stats.labels)})
        rows.append(row)
    summary = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["layer", "neuron", "entropy", "emotions", "rank"])
    run.write_table("neuron_summary", summary, "one row per selected neuron: layer, neuron, entropy, p_<emotion>")
    run.write_table("layer_counts", sel.layer_table(), "emotion, layer, count")
    run.write_table("overlap", sel.overlap(), "a, b, n_a, n_b, n_shared, jaccard, overlap_min")
    run.update(summary={"n_selected": {e: len(s) for e, s in sel.sets.items()},
                        "never_active_share": float(np.isinf(h).mean())})


@neurons_app.command("find")
def find_cmd(
    model: str = typer.Option("default", "--model", help=MODEL_HELP),
    data: str = typer.Option("builtin:dialogues", "--data", help=DATA_HELP),
    split: str = typer.Option("train", "--split", help="train, test or all."),
    limit_per_label: int | None = typer.Option(None, "--limit-per-label", help="At most N texts per emotion (seeded)."),
    template: str = typer.Option(DEFAULT_TEMPLATE, "--template", help="Prompt template the texts are wrapped in."),
    activation: str = typer.Option("gated", "--activation", help="gated (mlp.hook_post) | silu_only | pre."),
    tokens: str = typer.Option("all", "--tokens", help="all non-padding prompt tokens | last."),
    top_rate: float = typer.Option(0.01, "--top-rate", help="Share of all neurons kept (lowest entropy)."),
    assign: str = typer.Option("argmax", "--assign", help="argmax | lape (multi-assignment)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16."),
    seed: int = typer.Option(0, "--seed", help="Seed for --limit-per-label sampling."),
    out: Path = typer.Option(..., "--out", help="Run directory to write."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Collect per-emotion activation statistics and select the lowest-entropy neurons (RQ1)."""
    config = {"model": model, "data": data, "split": split, "limit_per_label": limit_per_label, "template": template,
              "activation": activation, "tokens": tokens, "top_rate": top_rate, "assign": assign, "dtype": dtype,
              "seed": seed}
    _, sel = run_find(config, out, quiet)
    typer.echo(f"{_summarise_find(sel)} -> {out}/neurons.json")


# ----------------------------------------------------------------------------- mask


def run_mask(config: dict[str, Any], out: Path, quiet: bool = False, model_pair: Any = None,
             selection: Any = None) -> Any:
    """Mask each emotion's neurons on a dataset with random controls; write the mask tables into ``out``."""
    from emocircuits import neurons
    from emocircuits.data import load_data
    from emocircuits.models import load_model
    from emocircuits.runs import RunDir

    _check_choice("ratio-mode", config["ratio_mode"], neurons.RATIO_MODES)
    sel = selection or neurons.Selection.load(config["neurons"])
    data = load_data(config["data"], split=_split(config["split"]), limit_per_label=config["limit_per_label"],
                     seed=config["seed"], labels=sel.labels)
    emotions = config.get("emotions") or list(sel.labels)
    bridge, spec = model_pair or load_model(config["model"], dtype=config.get("dtype", "float32"), progress=not quiet)
    from emocircuits.sites import layer_range

    layer_range(spec.n_layers, config["layers"])  # validate before any pass
    with RunDir.create(out, command="neurons mask", config=config, model_spec=spec, seed=config["seed"]) as run:
        res = neurons.mask(bridge, data, sel, emotions=emotions, layers=config["layers"], ratio=config["ratio"],
                           ratio_mode=config["ratio_mode"], controls=config["controls"], seed=config["seed"],
                           template=config["template"], progress=not quiet)
        write_mask_outputs(run, res)
    return res


def write_mask_outputs(run: Any, res: Any) -> None:
    run.write_table("mask_effects", res.effects, "accuracy per (masked emotion x true label): normal, masked, "
                    "control, deltas, bootstrap 95% CI of the masked-minus-control difference")
    run.write_table("mask_errors", res.errors, "where failed cases go under masking: counts per predicted label")
    run.write_table("mask_predictions", res.predictions, "per-example predictions: normal and per masked emotion")
    run.write_json("mask_sets", {e: s.pairs() for e, s in res.sets.items()}, "the neuron sets masked")


def effects_table(effects: Any) -> str:
    """The RQ2 table as text: own-label accuracy normal / masked / control with the CI."""
    own = effects[effects.masked_emotion == effects.true_label]
    allr = effects[effects.true_label == "all"].set_index("masked_emotion")
    lines = [f"{'masked':<10} {'n_neur':>6} {'own acc: normal':>15} {'masked':>7} {'control':>8} "
             f"{'diff [95% CI]':>22} {'all-label acc: masked':>22}"]
    for _, r in own.iterrows():
        a = allr.loc[r.masked_emotion]
        lines.append(f"{r.masked_emotion:<10} {int(r.n_neurons):>6} {r.acc_normal:>15.3f} {r.acc_masked:>7.3f} "
                     f"{r.acc_control:>8.3f} {r['diff']:>+7.3f} [{r.ci_low:+.3f},{r.ci_high:+.3f}] "
                     f"{a.acc_masked:>10.3f} (normal {a.acc_normal:.3f})")
    return "\n".join(lines)


@neurons_app.command("mask")
def mask_cmd(
    neurons_file: Path = typer.Option(..., "--neurons", help="neurons.json written by `neurons find` (or its run dir)."),
    model: str = typer.Option("default", "--model", help=MODEL_HELP),
    data: str = typer.Option("builtin:dialogues", "--data", help=DATA_HELP),
    split: str = typer.Option("test", "--split", help="train, test or all."),
    limit_per_label: int | None = typer.Option(None, "--limit-per-label", help="At most N texts per emotion (seeded)."),
    template: str = typer.Option(DEFAULT_TEMPLATE, "--template", help="Prompt template for the classification readout."),
    layers: str = typer.Option("all", "--layers", help="all | bottom | middle | top | A-B (inclusive)."),
    ratio: float | None = typer.Option(None, "--ratio", help="Masking ratio, e.g. 0.03 (default: the selected set)."),
    ratio_mode: str = typer.Option("truncate", "--ratio-mode", help="truncate (prefix of ranked list) | reselect."),
    controls: int = typer.Option(5, "--controls", help="Random neuron sets per masked set (same per-layer counts)."),
    emotions: list[str] = typer.Option(None, "--emotion", help="Mask only these emotions (repeatable)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16."),
    seed: int = typer.Option(0, "--seed", help="Seed for controls, bootstrap and sampling."),
    out: Path = typer.Option(..., "--out", help="Run directory to write."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Mask emotion neurons and measure classification accuracy per true label, with random controls (RQ2)."""
    config = {"neurons": str(neurons_file), "model": model, "data": data, "split": split,
              "limit_per_label": limit_per_label, "template": template, "layers": layers, "ratio": ratio,
              "ratio_mode": ratio_mode, "controls": controls, "emotions": list(emotions or []), "dtype": dtype,
              "seed": seed}
    res = run_mask(config, out, quiet)
    typer.echo(effects_table(res.effects))


# ----------------------------------------------------------------------------- sweep


def run_sweep(config: dict[str, Any], out: Path, quiet: bool = False) -> Any:
    from emocircuits import neurons
    from emocircuits.data import load_data
    from emocircuits.models import load_model
    from emocircuits.runs import RunDir
    from emocircuits.sites import layer_range

    _check_choice("ratio-mode", config["ratio_mode"], neurons.RATIO_MODES)
    sel = neurons.Selection.load(config["neurons"])
    data = load_data(config["data"], split=_split(config["split"]), limit_per_label=config["limit_per_label"],
                     seed=config["seed"], labels=sel.labels)
    bridge, spec = load_model(config["model"], dtype=config.get("dtype", "float32"), progress=not quiet)
    for lr in config["layer_ranges"]:
        layer_range(spec.n_layers, lr)
    with RunDir.create(out, command="neurons sweep", config=config, model_spec=spec, seed=config["seed"]) as run:
        table = neurons.sweep(bridge, data, sel, emotions=config.get("emotions") or None, ratios=config["ratios"],
                              layer_ranges=config["layer_ranges"], ratio_mode=config["ratio_mode"],
                              controls=config["controls"], seed=config["seed"], template=config["template"],
                              progress=not quiet)
        run.write_table("results", table, "one row per (emotion, ratio, layers): own-label and all-label metrics")
    return table


@neurons_app.command("sweep")
def sweep_cmd(
    neurons_file: Path = typer.Option(..., "--neurons", help="neurons.json written by `neurons find`."),
    model: str = typer.Option("default", "--model", help=MODEL_HELP),
    data: str = typer.Option("builtin:dialogues", "--data", help=DATA_HELP),
    split: str = typer.Option("test", "--split", help="train, test or all."),
    limit_per_label: int | None = typer.Option(None, "--limit-per-label", help="At most N texts per emotion."),
    template: str = typer.Option(DEFAULT_TEMPLATE, "--template", help="Prompt template for the readout."),
    ratios: str = typer.Option("0.01,0.02,0.03,0.04,0.05", "--ratios", help="Comma-separated masking ratios."),
    layer_ranges: str = typer.Option("bottom,middle,top,all", "--layer-ranges", help="Comma-separated layer ranges."),
    ratio_mode: str = typer.Option("truncate", "--ratio-mode", help="truncate | reselect."),
    controls: int = typer.Option(2, "--controls", help="Random sets per condition."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
    out: Path = typer.Option(..., "--out", help="Run directory to write."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Masking ratio x layer range for each emotion (RQ3), one table out (results.parquet)."""
    try:
        ratio_list = [float(r) for r in ratios.split(",") if r.strip()]
    except ValueError:
        raise EmocircuitsError(f"--ratios {ratios!r} is not a comma-separated list of numbers, e.g. 0.01,0.03.") from None
    config = {"neurons": str(neurons_file), "model": model, "data": data, "split": split,
              "limit_per_label": limit_per_label, "template": template, "ratios": ratio_list,
              "layer_ranges": [s.strip() for s in layer_ranges.split(",") if s.strip()], "ratio_mode": ratio_mode,
              "controls": controls, "seed": seed}
    table = run_sweep(config, out, quiet)
    cols = ["emotion", "ratio", "layers", "n_neurons", "own_acc_normal", "own_acc_masked", "own_acc_control", "own_diff"]
    typer.echo(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))


# ----------------------------------------------------------------------------- demo

DEMO_DEFAULTS = {"model": "default", "data": "builtin:dialogues", "train_per_label": 10, "test_per_label": 6,
                 "template": DEFAULT_TEMPLATE, "activation": "gated", "tokens": "all", "top_rate": 0.01, "assign": "argmax",
                 "controls": 1, "seed": 0, "dtype": "float32"}


def run_demo(config: dict[str, Any], out: Path, quiet: bool = False) -> Any:
    """Find neurons on a train subset, mask each emotion's set on the test split with controls, one run dir."""
    import time

    from emocircuits import neurons
    from emocircuits.data import load_data
    from emocircuits.models import load_model
    from emocircuits.runs import RunDir

    t0 = time.perf_counter()
    bridge, spec = load_model(config["model"], dtype=config["dtype"], progress=not quiet)
    t_load = time.perf_counter() - t0
    train = load_data(config["data"], split="train", limit_per_label=config["train_per_label"], seed=config["seed"])
    test = load_data(config["data"], split="test", limit_per_label=config["test_per_label"], seed=config["seed"])
    with RunDir.create(out, command="demo", config=config, model_spec=spec, seed=config["seed"]) as run:
        stats = neurons.collect(bridge, train, reading=config["activation"], tokens=config["tokens"],
                                template=config["template"], progress=not quiet)
        sel = stats.select(top_rate=config["top_rate"], assign=config["assign"])
        write_find_outputs(run, stats, sel)
        t_find = time.perf_counter()
        res = neurons.mask(bridge, test, sel, controls=config["controls"], seed=config["seed"],
                           template=config["template"], progress=not quiet)
        write_mask_outputs(run, res)
        run.write_json("token_views", demo_token_views(bridge, test, sel), "circuitsvis token views for the report")
        timings = {"load_s": round(t_load, 1), "find_s": round(t_find - t0 - t_load, 1),
                   "mask_s": round(time.perf_counter() - t_find, 1), "total_s": round(time.perf_counter() - t0, 1)}
        run.update(timings=timings)
    return sel, res, timings


def demo_token_views(bridge: Any, test: Any, sel: Any) -> dict[str, Any]:
    """Two token views for the demo report: the first test text coloured by its emotion's neuron set
    (summed values), and two heads' attention on the start of the second."""
    from emocircuits import tokenviews

    n_layers = sel.n_layers
    views = [tokenviews.attention_view(bridge, test[1].text[:300], [(n_layers // 2, 0), (n_layers - 1, 1)])]
    with_neurons = [ex for ex in test if len(sel.sets.get(ex.label, ()))]
    if with_neurons:  # a tiny model may select no neuron for some emotions
        ex = with_neurons[0]
        views.insert(0, tokenviews.neuron_set_view(bridge, ex.text, sel, ex.label))
    return tokenviews.views_document(views)


def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run directory to write."),
    model: str = typer.Option(DEMO_DEFAULTS["model"], "--model", help=MODEL_HELP),
    train_per_label: int = typer.Option(DEMO_DEFAULTS["train_per_label"], "--train-per-label",
                                        help="Train dialogues per emotion for neuron finding."),
    test_per_label: int = typer.Option(DEMO_DEFAULTS["test_per_label"], "--test-per-label",
                                       help="Test dialogues per emotion for masking."),
    controls: int = typer.Option(DEMO_DEFAULTS["controls"], "--controls", help="Random control sets per emotion."),
    dtype: str = typer.Option(DEMO_DEFAULTS["dtype"], "--dtype", help="float32 | bfloat16."),
    seed: int = typer.Option(DEMO_DEFAULTS["seed"], "--seed", help="Seed."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """The main job: find emotion neurons on the embedded model, mask them with controls, print the RQ2 table."""
    config = {**DEMO_DEFAULTS, "model": model, "train_per_label": train_per_label, "test_per_label": test_per_label,
              "controls": controls, "dtype": dtype, "seed": seed}
    sel, res, timings = run_demo(config, out, quiet)
    typer.echo("\nEmotion neurons per layer (rows: emotion; columns: layers 0..L-1)")
    table = sel.layer_table().pivot(index="emotion", columns="layer", values="count")
    for e, row in table.iterrows():
        typer.echo(f"{e:<10} total {int(row.sum()):>4} | " + " ".join(f"{int(v):>2}" for v in row.values))
    typer.echo("\nMasking (RQ2): own-label accuracy, masked vs random controls, bootstrap 95% CI of the difference")
    typer.echo(effects_table(res.effects))
    typer.echo(f"\ntimings {timings}\nrun directory: {out}  (make an HTML report: emocircuits report {out} -o report.html)")


def register(app: typer.Typer) -> None:
    from emocircuits.runs import register_command

    app.add_typer(neurons_app, name="neurons")
    app.command("demo")(demo_cmd)
    register_command("neurons find", lambda cfg, out: run_find(dict(cfg), Path(out), quiet=True))
    register_command("neurons mask", lambda cfg, out: run_mask(dict(cfg), Path(out), quiet=True))
    register_command("neurons sweep", lambda cfg, out: run_sweep(dict(cfg), Path(out), quiet=True))
    register_command("demo", lambda cfg, out: run_demo(dict(cfg), Path(out), quiet=True))
