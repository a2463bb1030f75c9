"""`emocircuits inference probe|knockout|patch|attribute|promote|appraisal`: thin fronts over
``emocircuits.methods.inference`` (Tak et al. 2025's emotion-inference analyses).

Each command builds a plain config dict and calls :func:`emocircuits.methods.inference.run_inference` (which
validates it before the model loads and writes a run directory: manifest, Parquet tables, JSON summary).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from emocircuits.base.constants import DEFAULT_CALIBRATION, DEFAULT_TEMPLATE, PROBE_MAX_ITER, PROBE_SEED
from emocircuits.base.errors import EmocircuitsError
from emocircuits.cli.options import apply_preset, at_least, auto_or, number_list, option, split_list, strength

inference_app = typer.Typer(help="Emotion inference (Tak et al. 2025): probes, knockout, patching, attribution, "
                                 "promotion, appraisal steering.", no_args_is_help=True)


MODEL_HELP = "Model spec: default (embedded SmolLM2-135M-Instruct), a .gguf path, a local HF dir, a cached hub id."


DATA_HELP = "Data spec (appraisal ratings in meta for probes/steering): builtin:appraisal_events, envent:PATH, ..."


def _common(model: str, data: str, split: str, limit_per_label: int | None, template: str, calibration: str,
            all_examples: bool, seed: int, dtype: str) -> dict[str, Any]:
    return {"model": model, "data": data, "split": split, "limit_per_label": limit_per_label, "template": template,
            "calibration": calibration, "all_examples": all_examples, "seed": seed, "dtype": dtype}


def _data_keys(labels: str | None, text_field: str | None, label_field: str | None,
               appraisals: str | None) -> dict[str, Any]:
    scheme = split_list(labels)
    if labels is not None and not scheme:
        raise EmocircuitsError(f"--labels {labels!r} names no label; pass comma-separated labels, e.g. anger,joy.")
    names = split_list(appraisals)
    if appraisals is not None and not names:
        raise EmocircuitsError(f"--appraisals {appraisals!r} names no rating; pass comma-separated names.")
    return {"labels": scheme, "text_field": text_field, "label_field": label_field, "appraisals": names}


def _go(cmd: str, cfg: dict[str, Any], out: Path, quiet: bool, ctx: typer.Context | None = None,
        preset: str | None = None) -> None:
    from emocircuits.jobs.inference import run_inference, validate

    if ctx is not None:
        cfg = apply_preset(ctx, preset, cfg, f"inference {cmd}")
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


LABELS = option("--labels")


DROP = option("--drop-unknown")


TF = option("--text-field")


LF = option("--label-field")


APPR = option("--appraisals")


PRESET = option("--preset")


PAIRS = option("--pairs")


@inference_app.command("probe")
def probe_cmd(ctx: typer.Context, model: str = M, data: str = D, split: str = SPLIT, limit_per_label: int | None = LIM,
              template: str = TPL, calibration: str = CAL, all_examples: bool = ALL, seed: int = SEED, dtype: str = DT,
              sites: str = option("--sites", "attn.out,mlp.out,resid.post"),
              layers: str | None = option("--layers"),
              folds: int = typer.Option(5, "--folds", help="k of the k-fold CV.", callback=at_least(2)("--folds")),
              controls: int = option("--controls", 5),
              random_features: bool = option("--random-features/--no-random-features"),
              standardise: bool = typer.Option(True, "--standardise/--no-standardise", help=(
                  "Standardise activations (train-part mean and sd) before the logistic probe (default: on, so "
                  "that C means the same at every layer and site; Tak et al.'s code: off).")),
              stratify: bool = typer.Option(True, "--stratify/--no-stratify", help=(
                  "Stratify the 80/20 split and the CV folds by label (default: on, so that rare labels land in "
                  "every part; Tak et al.'s code: off).")),
              test_share: float = typer.Option(0.2, "--test-share", help=(
                  "Share of examples in the probe's test part (default 0.2: the papers' 80/20 split)."),
                  callback=at_least(0.01)("--test-share")),
              split_seed: int = typer.Option(PROBE_SEED, "--split-seed", help=(
                  f"Seed of the probe's split, CV folds, fits and permutations (default {PROBE_SEED}, Tak et al.'s; "
                  "--seed stays the seed of sampling). Runs from before this option used --seed."),
                  callback=at_least(0)("--split-seed")),
              c: float = typer.Option(1.0, "--c", help=(
                  "Inverse regularisation C of the logistic emotion probe (default 1: the paper's and "
                  "scikit-learn's)."), callback=at_least(1e-12)("--c")),
              ridge_alpha: float = typer.Option(5.0, "--ridge-alpha", help=(
                  "Ridge α of the appraisal probes (default 5: the paper's)."),
                  callback=at_least(1e-12)("--ridge-alpha")),
              max_iter: int = typer.Option(PROBE_MAX_ITER, "--max-iter", help=(
                  f"lbfgs iterations of the logistic emotion probe (default {PROBE_MAX_ITER}: enough to converge "
                  "on raw activations; Tak et al.'s code keeps scikit-learn's 100, which stops some fits early)."),
                  callback=at_least(1)("--max-iter")),
              labels: str | None = LABELS, drop_unknown: bool = DROP, text_field: str | None = TF,
              label_field: str | None = LF,
              appraisals: str | None = APPR, preset: str | None = PRESET,
              out: Path = OUT, quiet: bool = Q) -> None:
    """Last-token logistic (emotion) and ridge (appraisal) probes at every layer, with in-range intervals, K
    label-permutation controls and selectivity with its interval."""
    _go("probe", {**_common(model, data, split, limit_per_label, template, calibration, all_examples, seed, dtype),
        **_data_keys(labels, text_field, label_field, appraisals), "drop_unknown": drop_unknown,
                  "sites": sites, "layers": layers, "folds": folds, "controls": controls,
                  "random_features": random_features, "standardise": standardise, "stratify": stratify,
                  "test_share": test_share, "split_seed": split_seed, "c": c, "ridge_alpha": ridge_alpha,
                  "max_iter": max_iter},
        out, quiet, ctx, preset)


@inference_app.command("knockout")
def knockout_cmd(ctx: typer.Context, model: str = M, data: str = D, split: str = SPLIT, limit_per_label: int | None = LIM,
                 template: str = TPL, calibration: str = CAL, all_examples: bool = ALL, seed: int = SEED, dtype: str = DT,
                 sites: str = option("--sites", "attn.out,mlp.out"),
                 span: int = SPAN, stride: int = STRIDE,
                 mode: str = typer.Option("zero", "--mode", help="zero | noise (norm-matched)."),
                 labels: str | None = LABELS, drop_unknown: bool = DROP, text_field: str | None = TF,
                 label_field: str | None = LF,
              appraisals: str | None = APPR, preset: str | None = PRESET,
              out: Path = OUT, quiet: bool = Q) -> None:
    """Knock out a site's last-token output over sliding layer windows; share of predictions unchanged."""
    _go("knockout", {**_common(model, data, split, limit_per_label, template, calibration, all_examples, seed, dtype),
        **_data_keys(labels, text_field, label_field, appraisals), "drop_unknown": drop_unknown,
                     "sites": sites, "span": span, "stride": stride, "mode": mode}, out, quiet, ctx, preset)


@inference_app.command("patch")
def patch_cmd(ctx: typer.Context, model: str = M, data: str = D, split: str = SPLIT, limit_per_label: int | None = LIM,
              template: str = TPL, calibration: str = CAL, all_examples: bool = ALL, seed: int = SEED, dtype: str = DT,
              sites: str = option("--sites", "attn.out,mlp.out,resid.post"),
              span: int = SPAN, stride: int = STRIDE,
              n_pairs: int = option("--n-pairs"), pairs: str | None = PAIRS,
              labels: str | None = LABELS, drop_unknown: bool = DROP, text_field: str | None = TF,
                 label_field: str | None = LF,
              appraisals: str | None = APPR, preset: str | None = PRESET,
              out: Path = OUT, quiet: bool = Q) -> None:
    """Patch sources' last-token activations into targets over layer windows: flip / stay / other shares."""
    _go("patch", {**_common(model, data, split, limit_per_label, template, calibration, all_examples, seed, dtype),
        **_data_keys(labels, text_field, label_field, appraisals), "drop_unknown": drop_unknown,
                  "sites": sites, "span": span, "stride": stride, "n_pairs": n_pairs, "pairs": pairs}, out, quiet, ctx, preset)


@inference_app.command("attribute")
def attribute_cmd(ctx: typer.Context, model: str = M, data: str = D, split: str = SPLIT, limit_per_label: int | None = LIM,
                  template: str = TPL, calibration: str = CAL, all_examples: bool = ALL, seed: int = SEED, dtype: str = DT,
                  sites: str = option("--sites", "attn.out,mlp.out,resid.post"),
                  span: int = option("--span"), stride: int = STRIDE,
                  n_pairs: int = option("--n-pairs"), pairs: str | None = PAIRS,
                  compare: bool = typer.Option(False, "--compare", help="Also run real patching; Spearman per site."),
                  labels: str | None = LABELS, drop_unknown: bool = DROP, text_field: str | None = TF,
                 label_field: str | None = LF,
              appraisals: str | None = APPR, preset: str | None = PRESET,
              out: Path = OUT, quiet: bool = Q) -> None:
    """Attribution patching: gradient x activation difference for every layer, site and head, in one backward."""
    _go("attribute", {**_common(model, data, split, limit_per_label, template, calibration, all_examples, seed, dtype),
        **_data_keys(labels, text_field, label_field, appraisals), "drop_unknown": drop_unknown,
                      "sites": sites, "span": span, "stride": stride, "n_pairs": n_pairs,
                      "pairs": pairs, "compare": compare}, out, quiet, ctx, preset)


@inference_app.command("promote")
def promote_cmd(ctx: typer.Context, model: str = M, data: str = D, split: str = SPLIT, limit_per_label: int | None = LIM,
                template: str = TPL, calibration: str = CAL, all_examples: bool = ALL, seed: int = SEED, dtype: str = DT,
                layers: str | None = option("--layers"),
                betas: str = typer.Option("auto", "--betas", help="Comma list of β, or auto: ¼, ½ and 1 × the strongest "
                                          "β whose replies stay fluent (perplexity ≤ 1.5×, distinct-2 ≥ 0.9×).",
                                          callback=auto_or(number_list())("--betas")),
                n_random: int = option("--n-random", 20),
                rms_scaled: bool = typer.Option(False, "--rms-scaled", help="Scale the added vector by RMS(h)."),
                labels: str | None = LABELS, drop_unknown: bool = DROP, text_field: str | None = TF,
                 label_field: str | None = LF,
              appraisals: str | None = APPR, preset: str | None = PRESET,
              out: Path = OUT, quiet: bool = Q) -> None:
    """Add β·(unit emotion probe weight) to resid.post at the last token; success over headroom vs random."""
    _go("promote", {**_common(model, data, split, limit_per_label, template, calibration, all_examples, seed, dtype),
        **_data_keys(labels, text_field, label_field, appraisals), "drop_unknown": drop_unknown,
                    "layers": layers, "betas": betas, "n_random": n_random, "rms_scaled": rms_scaled}, out, quiet, ctx, preset)


@inference_app.command("appraisal")
def appraisal_cmd(ctx: typer.Context, model: str = M, data: str = D, split: str = SPLIT, limit_per_label: int | None = LIM,
                  template: str = TPL, calibration: str = CAL, all_examples: bool = ALL, seed: int = SEED, dtype: str = DT,
                  layers: str | None = option("--layers"),
                  settings: str = typer.Option("anger,surprise,happiness,fear_sadness,disgust", "--settings",
                                               help="Theory settings (emocircuits.methods.inference.appraisal_theory.THEORY)."),
                  beta: str = typer.Option("auto", "--beta", help="Norm of the added direction, or auto: the strongest "
                                           "β whose replies stay fluent.", callback=strength("--beta")),
                  n_random: int = option("--n-random", 100),
                  labels: str | None = LABELS, drop_unknown: bool = DROP, text_field: str | None = TF,
                 label_field: str | None = LF,
              appraisals: str | None = APPR, preset: str | None = PRESET,
              out: Path = OUT, quiet: bool = Q) -> None:
    """Steer along orthogonalised appraisal directions; compare the shift with appraisal theory and random."""
    _go("appraisal", {**_common(model, data, split, limit_per_label, template, calibration, all_examples, seed, dtype),
        **_data_keys(labels, text_field, label_field, appraisals), "drop_unknown": drop_unknown,
                      "layers": layers, "settings": settings, "beta": beta, "n_random": n_random}, out, quiet, ctx, preset)


def register(app: typer.Typer) -> None:
    app.add_typer(inference_app, name="inference")
