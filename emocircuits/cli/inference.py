"""`emocircuits inference probe|knockout|patch|attribute|promote|appraisal`: thin fronts over
``emocircuits.methods.inference`` (Tak et al. 2025's emotion-inference analyses).

Each command builds a plain config dict and calls :func:`emocircuits.methods.inference.run_inference` (which
validates it before the model loads and writes a run directory: manifest, Parquet tables, JSON summary).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from emocircuits.base.constants import DEFAULT_CALIBRATION, DEFAULT_TEMPLATE
from emocircuits.cli.options import at_least, finite, number_list, option

inference_app = typer.Typer(help="Emotion inference (Tak et al. 2025): probes, knockout, patching, attribution, "
                                 "promotion, appraisal steering.", no_args_is_help=True)


MODEL_HELP = "Model spec: default (embedded SmolLM2-135M-Instruct), a .gguf path, a local HF dir, a cached hub id."


DATA_HELP = "Data spec (appraisal ratings in meta for probes/steering): builtin:appraisal_events, envent:PATH, ..."


def _common(model: str, data: str, split: str, limit_per_label: int | None, template: str, calibration: str,
            all_examples: bool, seed: int, dtype: str) -> dict[str, Any]:
    return {"model": model, "data": data, "split": split, "limit_per_label": limit_per_label, "template": template,
            "calibration": calibration, "all_examples": all_examples, "seed": seed, "dtype": dtype}


def _go(cmd: str, cfg: dict[str, Any], out: Path, quiet: bool) -> None:
    from emocircuits.jobs.inference import run_inference, validate

    validate(cmd, cfg)
    summary = run_inference(cmd, cfg, out, quiet)
    ex = summary["examples"]
    typer.echo(f"inference {cmd}: {ex['n_kept']} of {ex['n_total']} examples kept -> {out}")


M = option("--model")


D = option("--data", "builtin:appraisal_events")


SPLIT = option("--split", "all")


LIM = option("--limit-per-label")


TPL = option("--template", DEFAULT_TEMPLATE)


CAL = option("--calibration", str(DEFAULT_CALIBRATION))


ALL = option("--all-examples")


SEED = option("--seed")


DT = option("--dtype")


SPAN = option("--span")


STRIDE = option("--stride")


OUT = option("--out")


Q = option("--quiet")


@inference_app.command("probe")
def probe_cmd(model: str = M, data: str = D, split: str = SPLIT, limit_per_label: int | None = LIM,
              template: str = TPL, calibration: str = CAL, all_examples: bool = ALL, seed: int = SEED, dtype: str = DT,
              sites: str = option("--sites", "attn.out,mlp.out,resid.post"),
              layers: str | None = option("--layers"),
              folds: int = typer.Option(5, "--folds", help="k of the k-fold CV.", callback=at_least(2)("--folds")),
              controls: int = option("--controls", 5),
              random_features: bool = option("--random-features/--no-random-features"),
              out: Path = OUT, quiet: bool = Q) -> None:
    """Last-token logistic (emotion) and ridge (appraisal) probes at every layer, with in-range intervals, K
    label-permutation controls and selectivity with its interval."""
    _go("probe", {**_common(model, data, split, limit_per_label, template, calibration, all_examples, seed, dtype),
                  "sites": sites, "layers": layers, "folds": folds, "controls": controls,
                  "random_features": random_features}, out, quiet)


@inference_app.command("knockout")
def knockout_cmd(model: str = M, data: str = D, split: str = SPLIT, limit_per_label: int | None = LIM,
                 template: str = TPL, calibration: str = CAL, all_examples: bool = ALL, seed: int = SEED, dtype: str = DT,
                 sites: str = option("--sites", "attn.out,mlp.out"),
                 span: int = SPAN, stride: int = STRIDE,
                 mode: str = typer.Option("zero", "--mode", help="zero | noise (norm-matched)."),
                 out: Path = OUT, quiet: bool = Q) -> None:
    """Knock out a site's last-token output over sliding layer windows; share of predictions unchanged."""
    _go("knockout", {**_common(model, data, split, limit_per_label, template, calibration, all_examples, seed, dtype),
                     "sites": sites, "span": span, "stride": stride, "mode": mode}, out, quiet)


@inference_app.command("patch")
def patch_cmd(model: str = M, data: str = D, split: str = SPLIT, limit_per_label: int | None = LIM,
              template: str = TPL, calibration: str = CAL, all_examples: bool = ALL, seed: int = SEED, dtype: str = DT,
              sites: str = option("--sites", "attn.out,mlp.out,resid.post"),
              span: int = SPAN, stride: int = STRIDE,
              n_pairs: int = option("--n-pairs"),
              out: Path = OUT, quiet: bool = Q) -> None:
    """Patch sources' last-token activations into targets over layer windows: flip / stay / other shares."""
    _go("patch", {**_common(model, data, split, limit_per_label, template, calibration, all_examples, seed, dtype),
                  "sites": sites, "span": span, "stride": stride, "n_pairs": n_pairs}, out, quiet)


@inference_app.command("attribute")
def attribute_cmd(model: str = M, data: str = D, split: str = SPLIT, limit_per_label: int | None = LIM,
                  template: str = TPL, calibration: str = CAL, all_examples: bool = ALL, seed: int = SEED, dtype: str = DT,
                  sites: str = option("--sites", "attn.out,mlp.out,resid.post"),
                  span: int = option("--span"), stride: int = STRIDE,
                  n_pairs: int = option("--n-pairs"),
                  compare: bool = typer.Option(False, "--compare", help="Also run real patching; Spearman per site."),
                  out: Path = OUT, quiet: bool = Q) -> None:
    """Attribution patching: gradient x activation difference for every layer, site and head, in one backward."""
    _go("attribute", {**_common(model, data, split, limit_per_label, template, calibration, all_examples, seed, dtype),
                      "sites": sites, "span": span, "stride": stride, "n_pairs": n_pairs,
                      "compare": compare}, out, quiet)


@inference_app.command("promote")
def promote_cmd(model: str = M, data: str = D, split: str = SPLIT, limit_per_label: int | None = LIM,
                template: str = TPL, calibration: str = CAL, all_examples: bool = ALL, seed: int = SEED, dtype: str = DT,
                layers: str | None = option("--layers"),
                betas: str = typer.Option("1,2,4", "--betas", help="Comma list of β.", callback=number_list()("--betas")),
                n_random: int = option("--n-random", 20),
                rms_scaled: bool = typer.Option(False, "--rms-scaled", help="Scale the added vector by RMS(h)."),
                out: Path = OUT, quiet: bool = Q) -> None:
    """Add β·(unit emotion probe weight) to resid.post at the last token; success over headroom vs random."""
    _go("promote", {**_common(model, data, split, limit_per_label, template, calibration, all_examples, seed, dtype),
                    "layers": layers, "betas": betas, "n_random": n_random, "rms_scaled": rms_scaled}, out, quiet)


@inference_app.command("appraisal")
def appraisal_cmd(model: str = M, data: str = D, split: str = SPLIT, limit_per_label: int | None = LIM,
                  template: str = TPL, calibration: str = CAL, all_examples: bool = ALL, seed: int = SEED, dtype: str = DT,
                  layers: str | None = option("--layers"),
                  settings: str = typer.Option("anger,surprise,happiness,fear_sadness,disgust", "--settings",
                                               help="Theory settings (emocircuits.methods.inference.appraisal_theory.THEORY)."),
                  beta: float = typer.Option(8.0, "--beta", help="Norm of the added direction.", callback=finite("--beta")),
                  n_random: int = option("--n-random", 100),
                  out: Path = OUT, quiet: bool = Q) -> None:
    """Steer along orthogonalised appraisal directions; compare the shift with appraisal theory and random."""
    _go("appraisal", {**_common(model, data, split, limit_per_label, template, calibration, all_examples, seed, dtype),
                      "layers": layers, "settings": settings, "beta": beta, "n_random": n_random}, out, quiet)


def register(app: typer.Typer) -> None:
    app.add_typer(inference_app, name="inference")
