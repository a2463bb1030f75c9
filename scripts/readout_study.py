"""Choose the default label readout on several event-style sets, not on the dialogues alone (issue #14).

For each template the label scores are computed once per set (test texts, the train sample a "prior"
calibration is fitted on, content-free inputs); each calibration is then applied to the same scores
through :meth:`LabelReadout.calibrated`, exactly as :func:`emocircuits.classify` applies it.

Sets (fixed, seeded): ``builtin:events`` test split; ``builtin:appraisal_events`` test split; the
implicit (no emotion keyword) dialogues of the ``builtin:dialogues`` test split (stratified, capped).
"prior" is fitted on the same set's train split (:func:`emocircuits.core.readout.train_split_of`), never on
the test texts; "prior@events" reuses the prior fitted on ``builtin:events`` train for every set (does a
reference prior transfer to data without a train split?).

Writes ``docs/readout_study.md`` (tables, the choice and why) and ``docs/readout_study.json``.

    OMP_NUM_THREADS=1 python scripts/readout_study.py            # about 15 minutes on one CPU thread
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from emocircuits.base.constants import DEFAULT_CALIBRATION, DEFAULT_CLASSIFY_TEMPLATE, EKMAN6
from emocircuits.core.models import load_model
from emocircuits.core.prompts import ensemble_members
from emocircuits.core.readout import LabelReadout, metrics_from_predictions, train_split_of
from emocircuits.data import Dataset, load_data
from emocircuits.data.generate import keyword_predict

TEMPLATES = ("chat_short", "fewshot", "chat_fewshot", "chat_fewshot2")
ENSEMBLES = ("chat_short+chat_fewshot", "chat_short+fewshot", "chat_short+fewshot+chat_fewshot")
"""Prompt ensembles (as :func:`emocircuits.classify` reads them): the mean of the members' calibrated label
log-probs, each member with its own prior; scored from the members' stored scores, no extra model run."""
CALIBRATIONS = ("none", "content_free", "prior", "prior@events", "batch")
CHOICES = ("none", "content_free", "prior")  # batch needs the whole test set at once: reported, not chosen
FLOOR = 0.25  # every emotion at least this accurate on every set
DIALOGUE_CAP = 300
APPRAISAL_PER_LABEL = 20  # a fixed stratified 120 of the appraisal test split
PRIOR_SAMPLE = 10  # train examples per label the study fits each "prior" on (classify() uses PRIOR_PER_LABEL)
SEED = 0
ROOT = Path(__file__).resolve().parents[1]


def stratified_cap(ds: Dataset, cap: int, seed: int = SEED) -> Dataset:
    """At most ``cap`` examples, about the same number per label (seeded)."""
    return ds.limit_per_label(max(1, cap // len(ds.labels)), seed=seed) if len(ds) > cap else ds


def load_sets(limit: int | None) -> dict[str, Dataset]:
    """The three evaluation sets (test splits); ``limit``: examples per label (quick runs)."""
    sets = {
        "events": load_data("builtin:events", split="test"),
        "appraisal": load_data("builtin:appraisal_events", split="test").limit_per_label(APPRAISAL_PER_LABEL, seed=SEED),
        "dialogues-implicit": stratified_cap(
            load_data("builtin:dialogues", split="test").filter(lambda ex: not ex.meta.get("explicit")), DIALOGUE_CAP
        ),
    }
    if limit:
        sets = {k: v.limit_per_label(limit, seed=SEED) for k, v in sets.items()}
    return sets


def macro_f1(true: list[str], pred: list[str | None], labels: tuple[str, ...]) -> float:
    f1 = []
    for lab in labels:
        tp = sum(t == lab and p == lab for t, p in zip(true, pred, strict=True))
        fp = sum(t != lab and p == lab for t, p in zip(true, pred, strict=True))
        fn = sum(t == lab and p != lab for t, p in zip(true, pred, strict=True))
        f1.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1) / len(f1)


def summarise(ds: Dataset, pred: list[str | None]) -> dict:
    import pandas as pd

    true = [ex.label for ex in ds]
    m = metrics_from_predictions(pd.DataFrame({"true": true, "predicted": pred}), ds.labels)
    per = {k: v for k, v in m["per_label"].items() if v is not None}
    return {"accuracy": m["accuracy"], "per_label": per, "min_label": min(per.values()),
            "macro_f1": macro_f1(true, pred, ds.labels), "n": m["n"]}


def run(model, sets: dict[str, Dataset], templates: tuple[str, ...], ensembles: tuple[str, ...],
        progress: bool) -> dict:
    results: dict = {"keyword": {}, "configs": {}}
    for name, ds in sets.items():
        results["keyword"][name] = summarise(ds, [keyword_predict(ex.text) for ex in ds])
    trains = {name: train_split_of(ds, ds.labels, per_label=PRIOR_SAMPLE) for name, ds in sets.items()}
    calibrated: dict[tuple[str, str, str], torch.Tensor] = {}  # (template, calibration, set) -> [n, 6] log-probs
    for tname in templates:
        t0 = time.time()
        ro = LabelReadout(model, EKMAN6, tname)
        raw = {name: ro.scores_of(ro.encode(ds), f"{tname} {name}" if progress else None) for name, ds in sets.items()}
        priors = {name: ro.fit_prior(trains[name]) for name in sets}
        for cal in CALIBRATIONS:
            key = f"{tname} | {cal}"
            results["configs"][key] = {"template": tname, "calibration": cal, "sets": {}}
            for name, ds in sets.items():
                ro.calibrate = {"none": False, "prior@events": "prior"}.get(cal, cal)
                ro.prior_logp = priors["events" if cal == "prior@events" else name] if cal.startswith("prior") else None
                scores = ro.calibrated(raw[name], list(ds))
                calibrated[tname, cal, name] = torch.log_softmax(scores, dim=-1)
                pred = [ro.labels[i] for i in scores.argmax(-1).tolist()]
                r = summarise(ds, pred)
                if ro.prior_logp is not None:
                    r["prior_logp"] = dict(zip(ro.labels, [round(float(v), 4) for v in ro.prior_logp], strict=True))
                results["configs"][key]["sets"][name] = r
        print(f"{tname}: {time.time() - t0:.0f}s", file=sys.stderr)
    for ens in ensembles:
        members = ensemble_members(ens)
        for cal in CALIBRATIONS:
            key = f"{ens} | {cal}"
            results["configs"][key] = {"template": ens, "calibration": cal, "sets": {}}
            for name, ds in sets.items():
                mean = sum(calibrated[m, cal, name] for m in members) / len(members)
                results["configs"][key]["sets"][name] = summarise(ds, [EKMAN6[i] for i in mean.argmax(-1).tolist()])
    for cfg in results["configs"].values():
        accs = [r["accuracy"] for r in cfg["sets"].values()]
        cfg["mean_accuracy"] = sum(accs) / len(accs)
        cfg["min_label"] = min(r["min_label"] for r in cfg["sets"].values())
        cfg["mean_macro_f1"] = sum(r["macro_f1"] for r in cfg["sets"].values()) / len(accs)
    return results


TIE = 0.01  # candidates within this much robust mean accuracy of the best count as tied: the cheapest wins


def robust(results: dict, cfg: dict) -> tuple[float, float]:
    """(mean accuracy, lowest per-label accuracy) a config keeps on data with and without a train split of its
    own: a ``prior`` config is averaged with its ``prior@events`` twin (the reference prior that classify()
    falls back to), the floor is the lower of the two."""
    if cfg["calibration"] != "prior":
        return cfg["mean_accuracy"], cfg["min_label"]
    twin = results["configs"][f"{cfg['template']} | prior@events"]
    return (cfg["mean_accuracy"] + twin["mean_accuracy"]) / 2, min(cfg["min_label"], twin["min_label"])


def choose(results: dict) -> str:
    """Best robust mean accuracy among the configs whose every label clears FLOOR on every set, with and
    without the data's own train prior (else best floor); within TIE of the best, the fewest templates."""
    cands = {k: v for k, v in results["configs"].items() if v["calibration"] in CHOICES}
    scored = {k: robust(results, v) for k, v in cands.items()}
    ok = {k: sc for k, sc in scored.items() if sc[1] >= FLOOR} or scored
    best = max(sc[0] for sc in ok.values())
    tied = [k for k, sc in ok.items() if sc[0] >= best - TIE]
    return min(tied, key=lambda k: (len(ensemble_members(cands[k]["template"])), -ok[k][0]))


def write_md(results: dict, chosen: str, sets: dict[str, Dataset], path: Path, seconds: float) -> None:
    names = list(sets)
    head = "| template | calibration | " + " | ".join(names) + " | mean | min label | mean macro-F1 |"
    lines = [head, "|" + "---|" * (len(names) + 5)]
    kw = results["keyword"]
    lines.append("| keyword baseline | - | " + " | ".join(f"{kw[n]['accuracy']:.3f}" for n in names)
                 + f" | {sum(kw[n]['accuracy'] for n in names) / len(names):.3f} | "
                 f"{min(kw[n]['min_label'] for n in names):.2f} | "
                 f"{sum(kw[n]['macro_f1'] for n in names) / len(names):.3f} |")
    for key, cfg in results["configs"].items():
        bold = "**" if key == chosen else ""
        cells = [f"{cfg['sets'][n]['accuracy']:.3f} ({cfg['sets'][n]['min_label']:.2f})" for n in names]
        lines.append(f"| {bold}{cfg['template']}{bold} | {bold}{cfg['calibration']}{bold} | " + " | ".join(cells)
                     + f" | {bold}{cfg['mean_accuracy']:.3f}{bold} | {cfg['min_label']:.2f} | {cfg['mean_macro_f1']:.3f} |")
    c = results["configs"][chosen]
    per = ["| set | " + " | ".join(EKMAN6) + " |", "|" + "---|" * 7]
    for n in names:
        per.append(f"| {n} | " + " | ".join(f"{c['sets'][n]['per_label'].get(lab, float('nan')):.2f}" for lab in EKMAN6) + " |")
    sizes = ", ".join(f"{n} n={len(ds)}" for n, ds in sets.items())
    text = f"""# Label readout study (issue #14)

Generated by `scripts/readout_study.py` on the embedded SmolLM2-135M-Instruct (float32, first-token
scoring: every leading-space Ekman label is one token, so full-label scoring gives the same numbers)
in {seconds / 60:.0f} minutes (one CPU thread on a shared 2-core machine). Raw numbers: `readout_study.json`.

Sets ({sizes}): `builtin:events` test split (short first-person event reports, 87% with no emotion
word); `builtin:appraisal_events` test split (event descriptions with appraisal phrasing);
the implicit dialogues (no emotion keyword) of the `builtin:dialogues` test split. All are synthetic:
the maintainers' human-written event text is held out and never seen here, so nothing is tuned to one set.

Calibrations: `none`; `content_free` (Zhao et al., 2021: the prior of "N/A", "", "[MASK]");
`prior` (the class-balanced mean label log-prob on {PRIOR_SAMPLE} examples per label of the same data's **train**
split, fitted once and reused for the test texts, which never enter it); `prior@events` (the prior fitted on
`builtin:events` train applied to every set: does a reference prior transfer to data without a train split?);
`batch` (Zhou et al., 2024: the prior of the test texts themselves; shown for reference, not a candidate
default, since it needs the whole test set at once and uses its label mix).

Ensembles (`a+b`, as `classify --template a+b` reads them): each member scores the text under the same
calibration with its own prior; the prediction is the argmax of the mean of the members' calibrated label
log-probs. The members' forward passes are the only cost (about one more pass per member; the shared
demonstrations of the few-shot templates are computed once per pass).

## Accuracy per set (lowest per-label accuracy in brackets)

{chr(10).join(lines)}

## Chosen default: `{c['template']}` + `{c['calibration']}` calibration, first-token scoring

Rule: among `none` / `content_free` / `prior` configs, the highest *robust* mean accuracy over the three sets,
where a `prior` config counts as the mean of itself and its `prior@events` twin (what `classify` does on data
without a train split of its own), and every emotion must be at least {FLOOR} accurate on every set in both;
configs within {TIE} of the best count as tied and the one with the fewest templates (the cheapest) wins.
Chosen: robust mean {robust(results, c)[0]:.3f}, floor {robust(results, c)[1]:.2f}.

Per-label accuracy of the chosen default:

{chr(10).join(per)}

{results.get('why', '')}
"""
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--templates", default=",".join(TEMPLATES))
    ap.add_argument("--ensembles", default=",".join(ENSEMBLES), help="comma list of +-joined members of --templates")
    ap.add_argument("--limit-per-label", type=int, default=None, help="quick run: examples per label per set")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "readout_study.md")
    ap.add_argument("--why", default="", help="paragraph explaining the choice, written into the markdown")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--from-json", type=Path, default=None,
                    help="rewrite the markdown from a stored readout_study.json (no model run)")
    args = ap.parse_args()
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        results["why"] = args.why or results.get("why", "")
        sets = load_sets(None)
        write_md(results, results["chosen"], sets, args.out, results.get("seconds", 0.0))
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
        return
    torch.set_num_threads(1)
    t0 = time.time()
    model, _ = load_model("default", dtype=torch.float32, progress=False)
    sets = load_sets(args.limit_per_label)
    with torch.inference_mode():
        results = run(model, sets, tuple(args.templates.split(",")),
                      tuple(e for e in args.ensembles.split(",") if e), progress=not args.quiet)
    chosen = choose(results)
    results.update({"chosen": chosen, "floor": FLOOR, "why": args.why,
                    "current_default": {"template": DEFAULT_CLASSIFY_TEMPLATE, "calibration": DEFAULT_CALIBRATION or "none"},
                    "sets": {n: {"n": len(ds), "spec": ds.name} for n, ds in sets.items()}})
    seconds = time.time() - t0
    results["seconds"] = round(seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_md(results, chosen, sets, args.out, seconds)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    c = results["configs"][chosen]
    print(f"chosen: {chosen}  mean {c['mean_accuracy']:.3f}  min label {c['min_label']:.2f}  ({seconds:.0f}s)")


if __name__ == "__main__":
    main()
