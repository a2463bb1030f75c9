"""The ``inference ...`` jobs (Tak et al.): one validated config per command in, run directory out.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import emocircuits.methods.inference as inf
from emocircuits.base.constants import KNOCKOUT_SITES, PROBE_MAX_ITER, PROBE_SITES
from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.models import load_for_config
from emocircuits.core.readout import CALIBRATIONS
from emocircuits.core.sites import check_layer_range, layer_range
from emocircuits.data import load_data, load_pairs, rated_only
from emocircuits.jobs.common import parse_numbers
from emocircuits.methods.circuits.steer import AUTO, check_strength
from emocircuits.methods.inference.appraisal_theory import get_setting, theory_table
from emocircuits.runs.rundir import RunDir

CALIBRATION_NAMES = tuple("none" if c is False else c for c in CALIBRATIONS)  # as the command line names them


COMMANDS = ("probe", "knockout", "patch", "attribute", "promote", "appraisal")


PROBE_TABLE_DESCRIPTION = (
    "site, layer, target, metric, value (80/20) with value_low/high (Wilson 95%), cv_mean (pooled out-of-fold "
    "accuracy; R2: fold mean), ci_low, ci_high (accuracy: Wilson 95% over the n_oof held-out examples; R2: 95% t "
    "over folds, upper end clipped at 1, ci_clipped), control (mean of k_controls label permutations) with "
    "control_std, control_low, control_high, selectivity (cv_mean - control) with selectivity_low/high "
    "(bootstrap over examples and permutations; R2: paired t over folds), random_features (Gaussian-feature "
    "control, NaN when off) with its interval, n_train, n_test")
"""What ``probes.parquet`` holds (the run directory's description of the table)."""


def _sites(text: str, allowed: tuple[str, ...]) -> list[str]:
    sites = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in sites if s not in allowed]
    if bad or not sites or len(set(sites)) < len(sites):
        raise EmocircuitsError(f"--sites {text!r} is not valid; use a comma list of {', '.join(allowed)}.")
    return sites


def _floats(text: str, name: str) -> list[float]:
    return parse_numbers(text, name, example="1,2,4")


def _record_choice(run: RunDir, summary: dict[str, Any], choice: Any, quiet: bool) -> None:
    """Write an auto β's search (``strength.parquet``), record it in the summary and print its line."""
    run.write_table("strength", choice.curve.assign(name=choice.name), "name, strength, ppl, ppl_ratio, distinct2, "
                    "distinct2_ratio, empty, cut_off, n, fluent (strength 0: the unsteered reference)")
    summary["strength_choice"] = choice.summary()
    if not quiet:
        print(choice.line(), file=sys.stderr)


def _auto(value: Any) -> bool:
    return value is None or str(value).strip().lower() == AUTO


def validate(cmd: str, cfg: dict[str, Any]) -> None:
    """Check a config without a model (one sentence per problem)."""

    if cmd not in COMMANDS:
        raise EmocircuitsError(f"Unknown inference command {cmd!r}; use one of {', '.join(COMMANDS)}.")
    for key in ("span", "stride", "n_pairs", "folds", "controls"):
        if key in cfg and int(cfg[key]) < 1:
            raise EmocircuitsError(f"--{key.replace('_', '-')} must be at least 1 (got {cfg[key]}).")
    if "sites" in cfg:
        allowed = KNOCKOUT_SITES if cmd == "knockout" else PROBE_SITES
        _sites(cfg["sites"], allowed)
    calibration = cfg.get("calibration", "none")
    if calibration not in CALIBRATION_NAMES:
        raise EmocircuitsError(f"--calibration {calibration!r} is not valid; use one of {', '.join(CALIBRATION_NAMES)}.")
    if cmd == "knockout" and cfg["mode"] not in inf.KNOCKOUT_MODES:
        raise EmocircuitsError(f"--mode {cfg['mode']!r} is not valid; use one of {', '.join(inf.KNOCKOUT_MODES)}.")
    if "layers" in cfg and cfg["layers"] is not None:
        check_layer_range(cfg["layers"], "layers")
    if "betas" in cfg and not _auto(cfg["betas"]):
        _floats(str(cfg["betas"]), "betas")
    if "beta" in cfg:
        check_strength(cfg["beta"], "--beta")
    if "n_random" in cfg and int(cfg["n_random"]) < 0:
        raise EmocircuitsError(f"--n-random must be at least 0 (got {cfg['n_random']}).")
    if cmd == "appraisal":
        for name in [s for s in cfg["settings"].split(",") if s.strip()] or ["?"]:
            get_setting(name.strip())
    if cfg.get("limit_per_label") is not None and int(cfg["limit_per_label"]) < 1:
        raise EmocircuitsError(f"--limit-per-label must be at least 1 (got {cfg['limit_per_label']}).")
    if cfg.get("labels") is not None and not [x for x in cfg["labels"] if str(x).strip()]:
        raise EmocircuitsError("--labels names no label; pass comma-separated labels, e.g. anger,joy.")
    share = cfg.get("test_share")
    if share is not None and not 0 < float(share) < 1:
        raise EmocircuitsError(f"--test-share {share} is not allowed; use a share strictly between 0 and 1, e.g. 0.2.")
    for key in ("c", "ridge_alpha"):
        if cfg.get(key) is not None and not float(cfg[key]) > 0:
            raise EmocircuitsError(f"--{key.replace('_', '-')} {cfg[key]} is not allowed; use a positive number.")
    if cfg.get("max_iter") is not None and not int(cfg["max_iter"]) >= 1:
        raise EmocircuitsError(f"--max-iter {cfg['max_iter']} is not allowed; use a whole number >= 1, e.g. 2000.")


def _ratings_for(cmd: str, data: Any, config: dict[str, Any], quiet: bool) -> tuple[Any, str | None]:
    """Probe: the rated examples when the data has ratings (else emotion probes only, said once); appraisal
    steering: the rated examples, or one sentence that the file has none. Other commands: the data as is."""

    if cmd not in ("probe", "appraisal"):
        return data, None
    if cmd == "probe" and not data.info.get("ratings", {}).get("columns") and config.get("appraisals") is None:
        note = f"ratings: none in {config['data']}, so emotion probes only (no appraisal probes)"
    else:
        data, note = rated_only(data, config.get("appraisals"))
    if not quiet:
        print(note, file=sys.stderr)
    return data, note


def _pair_rows(pairs: list[tuple[str, str]], prep: Any, source: str) -> Any:
    import numpy as np

    index = {ex.id: i for i, ex in enumerate(prep.examples)}
    missing = sorted({x for p in pairs for x in p if x not in index})
    if missing:
        raise EmocircuitsError(
            f"{source}: {len(missing)} example id(s) of the pairs are not among the {len(index)} kept examples "
            f"(first: {missing[0]!r}); pairs must name kept examples (see examples.json of a run).")
    return np.array([(index[s], index[t]) for s, t in pairs], dtype=int)


def run_inference(cmd: str, config: dict[str, Any], out: Path, quiet: bool = False, model_pair: Any = None) -> dict:
    """Run one inference analysis from its config and write the run directory ``out``; returns the summary."""

    validate(cmd, config)
    split = None if config["split"] in (None, "all") else config["split"]
    data = load_data(config["data"], split=split, limit_per_label=config["limit_per_label"], seed=config["seed"],
                     labels=config.get("labels"), text_field=config.get("text_field"),
                     label_field=config.get("label_field"), appraisals=config.get("appraisals"),
                     drop_unknown=bool(config.get("drop_unknown", False)))
    data, rating_note = _ratings_for(cmd, data, config, quiet)
    pairs_given = load_pairs(config["pairs"]) if config.get("pairs") else None
    if pairs_given is not None:
        known = {ex.id for ex in data}
        unknown = sorted({x for p in pairs_given for x in p if x not in known})
        if unknown:
            raise EmocircuitsError(f"{config['pairs']}: {len(unknown)} example id(s) of the pairs are not in "
                                   f"{config['data']} (first: {unknown[0]!r}); pairs must name the data's ids.")
    bridge, spec = load_for_config(config, quiet, model_pair)
    layers = layer_range(spec.n_layers, config["layers"]) if config.get("layers") else None
    if "span" in config:
        inf.windows(spec.n_layers, int(config["span"]), int(config.get("stride", 1)))
    with RunDir.create(out, command=f"inference {cmd}", config=config, model_spec=spec, seed=config["seed"]) as run:
        calibration = config.get("calibration", "none")  # runs made before the option read uncalibrated
        prep = inf.prepare(bridge, data, template=config["template"], only_correct=not config["all_examples"],
                           calibrate=False if calibration == "none" else calibration)
        summary: dict[str, Any] = {"examples": prep.summary()}
        if rating_note:
            summary["ratings"] = rating_note
        run.write_json("examples", {"kept": [ex.id for ex in prep.examples], "loaded": [ex.id for ex in data]},
                       "ids of the examples loaded and of those kept (in analysis order)")
        seed = int(config["seed"])
        if cmd == "probe":
            # runs made before an option existed read today's default for it (the old behaviour); the probe's
            # seed was --seed before --split-seed existed
            res = inf.probe(prep, sites=_sites(config["sites"], PROBE_SITES), layers=layers,
                            folds=int(config["folds"]), seed=int(config.get("split_seed", seed)),
                            appraisals=config.get("appraisals"),
                            controls=int(config.get("controls", 5)),
                            random_features=bool(config.get("random_features", False)),
                            c=float(config.get("c", 1.0)), alpha=float(config.get("ridge_alpha", 5.0)),
                            test_size=float(config.get("test_share", 0.2)),
                            standardise=bool(config.get("standardise", True)),
                            stratify=bool(config.get("stratify", True)),
                            max_iter=int(config.get("max_iter", PROBE_MAX_ITER)))
            ids = [ex.id for ex in prep.examples]
            run.write_json("split", {part: [ids[i] for i in idx] for part, idx in res.split.items()},
                           "ids of the probes' train and test examples (the 80/20-style split)")
            run.write_table("probes", res.table, PROBE_TABLE_DESCRIPTION)
            names = []
            for kind, dirs in (("emotion", res.emotion_directions), ("appraisal", res.appraisal_directions)):
                for name, d in dirs.items():
                    d.save(run.path / "directions" / f"{kind}_{name}")
                    names.append(f"directions/{kind}_{name}.json")
            summary["best"] = res.best().to_dict("records")
            run.update(directions=names)
        elif cmd == "knockout":
            t = inf.knockout(prep, sites=_sites(config["sites"], KNOCKOUT_SITES), span=int(config["span"]),
                             stride=int(config.get("stride", 1)), mode=config["mode"], seed=seed)
            run.write_table("knockout", t, "site, mode, start, end, unchanged, ci_low, ci_high, accuracy, n, "
                            "accuracy_low, accuracy_high (Wilson 95%)")
            summary["most_disruptive"] = t.loc[t.groupby("site")["unchanged"].idxmin()].to_dict("records")
        elif cmd in ("patch", "attribute"):
            sites = _sites(config["sites"], PROBE_SITES)
            stride = int(config.get("stride", 1))
            pairs = (_pair_rows(pairs_given, prep, config["pairs"]) if pairs_given is not None
                     else inf.make_pairs(prep.pred, int(config["n_pairs"]), seed))
            ids = [ex.id for ex in prep.examples]
            run.write_json("pairs", [{"source_id": ids[s], "target_id": ids[t]} for s, t in pairs.tolist()],
                           "the (source_id, target_id) patching pairs (replay with --pairs)")
            att = inf.attribute(prep, sites=sites, pairs=pairs) if cmd == "attribute" else None
            if att is not None:
                run.write_table("attribution_layers", att.layers, "site, layer, estimate (mean grad x delta)")
                run.write_table("attribution_heads", att.heads, "layer, head, estimate")
                run.write_table("attribution_windows", att.windows(int(config["span"]), stride),
                                "site, start, end, estimate")
                summary["attribution_seconds"] = att.seconds
            if cmd == "patch" or config.get("compare"):
                import time

                t0 = time.perf_counter()
                real = inf.patch(prep, sites=sites, span=int(config["span"]), stride=stride, pairs=pairs, seed=seed)
                summary["patch_seconds"] = time.perf_counter() - t0
                run.write_table("patching", real, "site, start, end, flip/stay/other shares with _low/_high CIs, "
                                "logit_diff_change, n_pairs")
                if att is not None:
                    cmp_ = inf.compare_attribution(att.windows(int(config["span"]), stride), real)
                    run.write_table("attribution_vs_patching", cmp_, "site, spearman, pvalue, n_windows")
                    summary["spearman"] = cmp_.to_dict("records")
        else:
            win = layers or layer_range(spec.n_layers, "middle")[:3]
            pr = inf.probe(prep, sites=["resid.post"], layers=win, folds=2, seed=42, controls=1)  # weights only
            if cmd == "promote":
                if _auto(config["betas"]):  # a dose-response up to the strongest fluent β
                    vecs = [{layer: d.vector("resid.post", layer) for layer in win}
                            for d in pr.emotion_directions.values()]
                    choice = inf.choose_beta(prep, vecs, layers=win, rms_scaled=config["rms_scaled"], seed=seed)
                    betas = [choice.chosen / 4, choice.chosen / 2, choice.chosen]
                    _record_choice(run, summary, choice, quiet)
                else:
                    betas = _floats(str(config["betas"]), "betas")
                t, ctrl = inf.promote(prep, pr.emotion_directions, layers=win, betas=betas,
                                      n_random=int(config["n_random"]), seed=seed, rms_scaled=config["rms_scaled"])
                run.write_table("promotion", t, "emotion, beta, base_share, steered_share, success, random_mean, "
                                "random_low, random_high, percentile, base_share_low/high and steered_share_low/high "
                                "(Wilson 95%)")
                run.write_table("promotion_controls", ctrl, "emotion, beta, control, success")
                summary["promotion"] = t.to_dict("records")
            else:

                layer = win[len(win) // 2]
                weights = {a: d.vector("resid.post", layer) for a, d in pr.appraisal_directions.items()}
                settings = [get_setting(s.strip()) for s in config["settings"].split(",") if s.strip()]
                beta = check_strength(config["beta"], "--beta")
                if beta is None:
                    vecs = [inf.appraisal_direction(weights, st.change, st.fixed) for st in settings]
                    choice = inf.choose_beta(prep, vecs, layers=win, seed=seed)
                    beta = choice.chosen
                    _record_choice(run, summary, choice, quiet)
                t, trans = inf.steer_appraisal(prep, weights, settings, layers=win, beta=beta,
                                               n_random=int(config["n_random"]), seed=seed)
                run.write_table("appraisal_steering", t, "setting, expected, expected_shift, as_theory, random_mean, "
                                "percentile, beta, source, shift_<emotion>")
                run.write_table("appraisal_transitions", trans, "setting, clean, steered, count")
                run.write_table("theory", theory_table(), "setting, raise, lower, fixed, expected, source, note")
                summary["steering"] = t.drop(columns=["source"]).to_dict("records")
        run.write_json("summary", summary, "counts kept after filtering and headline numbers")
        run.update(summary={"n_kept": len(prep), "n_total": prep.n_total})
    return summary


