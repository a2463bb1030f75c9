"""`emocircuits inference probe|knockout|patch|attribute|promote|appraisal`: thin fronts over
``emocircuits.methods.inference`` (Tak et al. 2025's emotion-inference analyses).

Each command builds a plain config dict and calls :func:`emocircuits.methods.inference.run_inference` (which
validates it before the model loads and writes a run directory: manifest, Parquet tables, JSON summary).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from emocircuits.core.prompts import DEFAULT_CALIBRATION, DEFAULT_TEMPLATE
from emocircuits.jobs.inference import run_inference, validate

inference_app = typer.Typer(help="Emotion inference (Tak et al. 2025): probes, knockout, patching, attribution, "
                                 "promotion, appraisal steering.", no_args_is_help=True)


MODEL_HELP = "Model spec: default (embedded SmolLM2-135M-Instruct), a .gguf path, a local HF dir, a cached hub id."


DATA_HELP = "Data spec (appraisal ratings in meta for probes/steering): builtin:appraisal_events, envent:PATH, ..."


def _common(model: str, data: str, split: str, limit_per_label: int | None, template: str, calibration: str,
            all_examples: bool, seed: int, dtype: str) -> dict[str, Any]:
    return {"model": model, "data": data, "split": split, "limit_per_label": limit_per_label, "template": template,
            "calibration": calibration, "all_examples": all_examples, "seed": seed, "dtype": dtype}


def _go(cmd: str, cfg: dict[str, Any], out: Path, quiet: bool) -> None:
    validate(cmd, cfg)
    summary = run_inference(cmd, cfg, out, quiet)
    ex = summary["examples"]
    typer.echo(f"inference {cmd}: {ex['n_kept']} of {ex['n_total']} examples kept -> {out}")


M = typer.Option("default", "--model", help=MODEL_HELP)


D = typer.Option("builtin:appraisal_events", "--data", help=DATA_HELP)


SPLIT = typer.Option("all", "--split", help="train, test or all.")


LIM = typer.Option(None, "--limit-per-label", help="At most N examples per emotion (seeded).")


TPL = typer.Option(DEFAULT_TEMPLATE, "--template", help="Prompt template (fewshot + --calibration none: the paper's "
                   "plain few-shot readout).")


CAL = typer.Option(str(DEFAULT_CALIBRATION), "--calibration", help="prior (label prior of a train split), "
                   "content_free, batch or none.")


ALL = typer.Option(False, "--all-examples", help="Keep wrongly predicted examples too (default: only correct ones).")


SEED = typer.Option(0, "--seed", help="Seed (sampling, pairs, noise, random controls).")


DT = typer.Option("float32", "--dtype", help="float32 | bfloat16.")


SPAN = typer.Option(3, "--span", help="Layers per sliding window.")


STRIDE = typer.Option(1, "--stride", help="Start a window every N layers (the last window still ends at the "
                      "last layer).")


OUT = typer.Option(..., "--out", help="Run directory to write.")


Q = typer.Option(False, "--quiet", help="No progress bars.")


@inference_app.command("probe")
def probe_cmd(model: str = M, data: str = D, split: str = SPLIT, limit_per_label: int | None = LIM,
              template: str = TPL, calibration: str = CAL, all_examples: bool = ALL, seed: int = SEED, dtype: str = DT,
              sites: str = typer.Option("attn.out,mlp.out,resid.post", "--sites", help="Comma list of sites."),
              layers: str | None = typer.Option(None, "--layers", help="all (default), middle, A-B, ..."),
              folds: int = typer.Option(5, "--folds", help="k of the k-fold CV."),
              out: Path = OUT, quiet: bool = Q) -> None:
    """Last-token logistic (emotion) and ridge (appraisal) probes at every layer, with CV CIs and a control."""
    _go("probe", {**_common(model, data, split, limit_per_label, template, calibration, all_examples, seed, dtype),
                  "sites": sites, "layers": layers, "folds": folds}, out, quiet)


@inference_app.command("knockout")
def knockout_cmd(model: str = M, data: str = D, split: str = SPLIT, limit_per_label: int | None = LIM,
                 template: str = TPL, calibration: str = CAL, all_examples: bool = ALL, seed: int = SEED, dtype: str = DT,
                 sites: str = typer.Option("attn.out,mlp.out", "--sites", help="attn.out and/or mlp.out."),
                 span: int = SPAN, stride: int = STRIDE,
                 mode: str = typer.Option("zero", "--mode", help="zero | noise (norm-matched)."),
                 out: Path = OUT, quiet: bool = Q) -> None:
    """Knock out a site's last-token output over sliding layer windows; share of predictions unchanged."""
    _go("knockout", {**_common(model, data, split, limit_per_label, template, calibration, all_examples, seed, dtype),
                     "sites": sites, "span": span, "stride": stride, "mode": mode}, out, quiet)


@inference_app.command("patch")
def patch_cmd(model: str = M, data: str = D, split: str = SPLIT, limit_per_label: int | None = LIM,
              template: str = TPL, calibration: str = CAL, all_examples: bool = ALL, seed: int = SEED, dtype: str = DT,
              sites: str = typer.Option("attn.out,mlp.out,resid.post", "--sites", help="Comma list of sites."),
              span: int = SPAN, stride: int = STRIDE,
              n_pairs: int = typer.Option(50, "--n-pairs", help="Random (source, target) pairs with different labels."),
              out: Path = OUT, quiet: bool = Q) -> None:
    """Patch sources' last-token activations into targets over layer windows: flip / stay / other shares."""
    _go("patch", {**_common(model, data, split, limit_per_label, template, calibration, all_examples, seed, dtype),
                  "sites": sites, "span": span, "stride": stride, "n_pairs": n_pairs}, out, quiet)


@inference_app.command("attribute")
def attribute_cmd(model: str = M, data: str = D, split: str = SPLIT, limit_per_label: int | None = LIM,
                  template: str = TPL, calibration: str = CAL, all_examples: bool = ALL, seed: int = SEED, dtype: str = DT,
                  sites: str = typer.Option("attn.out,mlp.out,resid.post", "--sites", help="Comma list of sites."),
                  span: int = typer.Option(3, "--span", help="Window for summed estimates."), stride: int = STRIDE,
                  n_pairs: int = typer.Option(50, "--n-pairs", help="Random (source, target) pairs."),
                  compare: bool = typer.Option(False, "--compare", help="Also run real patching; Spearman per site."),
                  out: Path = OUT, quiet: bool = Q) -> None:
    """Attribution patching: gradient x activation difference for every layer, site and head, in one backward."""
    _go("attribute", {**_common(model, data, split, limit_per_label, template, calibration, all_examples, seed, dtype),
                      "sites": sites, "span": span, "stride": stride, "n_pairs": n_pairs,
                      "compare": compare}, out, quiet)


@inference_app.command("promote")
def promote_cmd(model: str = M, data: str = D, split: str = SPLIT, limit_per_label: int | None = LIM,
                template: str = TPL, calibration: str = CAL, all_examples: bool = ALL, seed: int = SEED, dtype: str = DT,
                layers: str | None = typer.Option(None, "--layers", help="Window A-B (default: first 3 middle layers)."),
                betas: str = typer.Option("1,2,4", "--betas", help="Comma list of β."),
                n_random: int = typer.Option(20, "--n-random", help="Random unit directions per β."),
                rms_scaled: bool = typer.Option(False, "--rms-scaled", help="Scale the added vector by RMS(h)."),
                out: Path = OUT, quiet: bool = Q) -> None:
    """Add β·(unit emotion probe weight) to resid.post at the last token; success over headroom vs random."""
    _go("promote", {**_common(model, data, split, limit_per_label, template, calibration, all_examples, seed, dtype),
                    "layers": layers, "betas": betas, "n_random": n_random, "rms_scaled": rms_scaled}, out, quiet)


@inference_app.command("appraisal")
def appraisal_cmd(model: str = M, data: str = D, split: str = SPLIT, limit_per_label: int | None = LIM,
                  template: str = TPL, calibration: str = CAL, all_examples: bool = ALL, seed: int = SEED, dtype: str = DT,
                  layers: str | None = typer.Option(None, "--layers", help="Window A-B (default: first 3 middle)."),
                  settings: str = typer.Option("anger,surprise,happiness,fear_sadness,disgust", "--settings",
                                               help="Theory settings (emocircuits.methods.inference.appraisal_theory.THEORY)."),
                  beta: float = typer.Option(8.0, "--beta", help="Norm of the added direction."),
                  n_random: int = typer.Option(100, "--n-random", help="Random directions of the same norm."),
                  out: Path = OUT, quiet: bool = Q) -> None:
    """Steer along orthogonalised appraisal directions; compare the shift with appraisal theory and random."""
    _go("appraisal", {**_common(model, data, split, limit_per_label, template, calibration, all_examples, seed, dtype),
                      "layers": layers, "settings": settings, "beta": beta, "n_random": n_random}, out, quiet)


def register(app: typer.Typer) -> None:
    app.add_typer(inference_app, name="inference")
