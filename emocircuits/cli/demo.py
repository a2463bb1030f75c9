"""`emocircuits demo`: a thin front over :func:`emocircuits.jobs.demo.run_tour` (what ``make demo`` runs).
"""

from __future__ import annotations

from pathlib import Path

import typer

from emocircuits.base.constants import DEMO_SIZES as T
from emocircuits.cli.options import option

MODEL_HELP = "Model spec: default (embedded SmolLM2-135M-Instruct), a .gguf path, a local HF dir, a cached hub id."


def demo_cmd(
    out: Path = option("--out", Path("runs/demo")),
    model: str = option("--model", T["model"]),
    dtype: str = option("--dtype"),
    seed: int = option("--seed"),
    train_per_label: int = option("--train-per-label", T["train_per_label"]),
    test_per_label: int = option("--test-per-label", T["test_per_label"]),
    top_rate: float = option("--top-rate"),
    mask_emotions: list[str] = typer.Option(T["mask_emotions"], "--mask-emotion",
                                            help="Neurons: emotions whose neurons are masked (repeatable)."),
    controls: int = option("--controls", T["controls"]),
    skeletons: int = typer.Option(T["skeletons"], "--skeletons", help="Circuits: SEV skeletons elicited "
                                  "(x 3 valences x 6 emotions replies)."),
    max_new_tokens: int = option("--max-new-tokens", T["max_new_tokens"]),
    top_k: int = option("--top-k", T["top_k"]),
    influence_prompts: int = typer.Option(T["influence_prompts"], "--influence-prompts",
                                          help="Circuits: neutral prompts for the sublayer influence."),
    budget: int = typer.Option(T["budget"], "--budget", help="Circuits: components per emotion circuit."),
    steer_emotions: list[str] = typer.Option(T["steer_emotions"], "--steer-emotion",
                                             help="Circuits: emotions steered toward (repeatable)."),
    steer_skeletons: int = typer.Option(T["steer_skeletons"], "--steer-skeletons",
                                        help="Circuits: SEV test skeletons steered (x 3 valences prompts)."),
    steer_methods: str = typer.Option(T["steer_methods"], "--steer-methods",
                                      help="Circuits: comma-separated steering methods compared."),
    events_per_label: int = typer.Option(T["events_per_label"], "--events-per-label",
                                         help="Inference: appraisal events per emotion."),
    all_examples: bool = option("--all-examples"),
    probe_controls: int = option("--probe-controls", T["probe_controls"]),
    random_features: bool = option("--random-features/--no-random-features"),
    n_pairs: int = option("--n-pairs", T["n_pairs"]),
    stride: int = option("--stride", T["stride"]),
    quiet: bool = option("--quiet"),
) -> None:
    """The three papers on the embedded model in minutes: emotion neurons (find, mask with controls),
    emotion directions, top heads, circuits and one steering comparison, probes by layer and one patching
    sweep; one run directory and its report.html."""
    config = {"model": model, "dtype": dtype, "seed": seed, "train_per_label": train_per_label,
              "test_per_label": test_per_label, "top_rate": top_rate, "mask_emotions": list(mask_emotions),
              "controls": controls, "skeletons": skeletons, "probe_controls": probe_controls,
              "random_features": random_features,
              "max_new_tokens": max_new_tokens, "top_k": top_k, "influence_prompts": influence_prompts,
              "budget": budget, "steer_emotions": list(steer_emotions), "steer_skeletons": steer_skeletons,
              "steer_methods": steer_methods, "events_per_label": events_per_label, "all_examples": all_examples, "n_pairs": n_pairs,
              "stride": stride}
    from emocircuits.jobs.demo import run_tour

    result = run_tour(config, out, quiet=quiet, echo=typer.echo)
    typer.echo(f"\nrun directory: {out}\nreport: {result['report']}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
