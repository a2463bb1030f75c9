"""How far does bfloat16 move the emotion-neuron results against float32? Writes JSON + a markdown table.

On ``builtin:dialogues`` with the embedded SmolLM2-135M-Instruct, for each dtype (float32, bfloat16):

1. statistics (``neurons.collect``, gated reading, all prompt tokens) on a seeded train subset and the
   selection (``top_rate`` 1%, argmax assignment);
2. clean classification accuracy on a seeded test subset (first-token label scoring);
3. an RQ2-style masking effect per emotion: zero that dtype's own selected neurons of the emotion and
   measure the accuracy drop on the emotion's own test texts, with the repo's bootstrap CI
   (``neurons.mask`` on a masking engine over those texts, so each test text runs twice: clean and
   masked; ``--controls`` random same-size sets per emotion, 0 = CI of the masked effect alone).

Drift is compared against noise of the same size: selection Jaccard fp32-vs-bf16 against the Jaccard
between two fp32 selections from *disjoint* train samples of the same size (CPU float32 is bit-for-bit
deterministic, so sampling is the run-to-run noise a study sees), and accuracy / masking differences
against their bootstrap CIs. Also reported: the share of test texts whose predicted label agrees.

Defaults are a modest subset (6 train + 4 test dialogues per emotion) because bf16 matmuls are ~14×
slower than fp32 on CPUs without AVX-512 BF16 / AMX; ``--train-per-label 0 --test-per-label 0`` runs
the full splits (2,904 + 156 dialogues: hours on such a CPU).

    python scripts/bf16_drift.py [--train-per-label 6] [--test-per-label 4] [--controls 0] [--out runs/bf16_drift]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emocircuits.base.constants import DEFAULT_TEMPLATE
from emocircuits.core.models import load_model
from emocircuits.data import load_data
from emocircuits.methods import neurons

DTYPES = ("float32", "bfloat16")


def jaccard_sets(a: Any, b: Any) -> dict[str, Any]:
    """Jaccard per emotion and over all (emotion, layer, neuron) triples of two selections."""
    per, all_a, all_b = {}, set(), set()
    for e in a.labels:
        sa, sb = {tuple(p) for p in a[e].pairs()}, {tuple(p) for p in b[e].pairs()}
        per[e] = round(len(sa & sb) / len(sa | sb), 4) if sa | sb else 1.0
        all_a |= {(e, *p) for p in sa}
        all_b |= {(e, *p) for p in sb}
    return {"overall": round(len(all_a & all_b) / len(all_a | all_b), 4), "per_emotion": per}


def acc_ci(ok: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% bootstrap CI of the mean of 0/1 ``ok``."""
    rng = np.random.default_rng(seed)
    means = ok[rng.integers(0, len(ok), size=(n_boot, len(ok)))].mean(1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def run_dtype(dtype: str, train: Any, test: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Statistics, selection, clean accuracy and per-emotion masking for one dtype."""
    model, spec = load_model("default", dtype=dtype, progress=False)
    t0 = time.perf_counter()
    stats = neurons.collect(model, train, reading="gated", tokens="all", template=args.template,
                            progress=not args.quiet)
    t_stats = time.perf_counter() - t0
    sel = stats.select(top_rate=args.top_rate, assign="argmax")
    t0 = time.perf_counter()
    masking, clean, y = {}, [], []
    for e in test.labels:  # one engine per emotion's texts: a clean and one masked pass over each text
        own = test.filter(lambda ex, e=e: ex.label == e)
        engine = neurons.MaskingEngine(model, own, labels=test.labels, template=args.template, progress=False)
        res = neurons.mask(model, own, sel, emotions=[e], controls=args.controls, seed=args.seed,
                           n_boot=args.n_boot, engine=engine, progress=False)
        row = res.effects[res.effects.true_label == e].iloc[0]
        masking[e] = {"n_neurons": int(row.n_neurons), "own_acc_normal": float(row.acc_normal),
                      "own_acc_masked": float(row.acc_masked), "own_delta": float(row["diff"]),
                      "own_ci": [float(row.ci_low), float(row.ci_high)]}
        clean.append(engine.clean)
        y.append(engine.y)
    t_mask = time.perf_counter() - t0
    clean_pred, y_all = np.concatenate(clean), np.concatenate(y)
    ok = (clean_pred == y_all).astype(float)
    return {"dtype": dtype, "stats": stats, "selection": sel, "clean_pred": clean_pred,
            "clean_accuracy": float(ok.mean()), "clean_accuracy_ci": acc_ci(ok, args.n_boot, args.seed),
            "masking": masking, "seconds": {"stats": round(t_stats, 1), "classify_and_mask": round(t_mask, 1)},
            "torch_dtype": spec.dtype}


def markdown(doc: dict[str, Any]) -> str:
    """The results table (one row per emotion plus an overall row)."""
    r32, r16 = doc["float32"], doc["bfloat16"]
    lines = [
        f"bf16 drift on `builtin:dialogues` (train {doc['n_train']} texts for statistics, test {doc['n_test']} "
        f"texts for accuracy/masking, template `{doc['template']}`, top {doc['top_rate']:.0%}, "
        f"controls={doc['controls']}, {doc['threads']} thread(s)).",
        "",
        "| emotion | Jaccard fp32 vs bf16 | Jaccard fp32 vs fp32 (disjoint sample) | |S| fp32 / bf16 "
        "| own-acc Δ masked fp32 [95% CI] | own-acc Δ masked bf16 [95% CI] |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(m: dict[str, Any]) -> str:
        return f"{m['own_delta']:+.2f} [{m['own_ci'][0]:+.2f}, {m['own_ci'][1]:+.2f}]"

    for e in doc["labels"]:
        m32, m16 = r32["masking"][e], r16["masking"][e]
        lines.append(f"| {e} | {doc['jaccard_fp32_bf16']['per_emotion'][e]:.3f} "
                     f"| {doc['jaccard_fp32_resample']['per_emotion'][e]:.3f} "
                     f"| {m32['n_neurons']} / {m16['n_neurons']} | {fmt(m32)} | {fmt(m16)} |")
    lines.append(f"| **overall** | {doc['jaccard_fp32_bf16']['overall']:.3f} | {doc['jaccard_fp32_resample']['overall']:.3f} "
                 f"| | clean acc fp32 {r32['clean_accuracy']:.3f} [{r32['clean_accuracy_ci'][0]:.2f}, "
                 f"{r32['clean_accuracy_ci'][1]:.2f}] | clean acc bf16 {r16['clean_accuracy']:.3f} "
                 f"[{r16['clean_accuracy_ci'][0]:.2f}, {r16['clean_accuracy_ci'][1]:.2f}] |")
    lines += ["", f"Predicted label agreement fp32 vs bf16 on the test texts: {doc['prediction_agreement']:.3f}. "
              f"Masking deltas where the fp32 and bf16 CIs overlap: {doc['masking_cis_overlap']}/{len(doc['labels'])}. "
              f"Time (s): fp32 {r32['seconds']}, bf16 {r16['seconds']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-per-label", type=int, default=6, help="0 = the whole train split")
    ap.add_argument("--test-per-label", type=int, default=4, help="0 = the whole test split")
    ap.add_argument("--template", default=DEFAULT_TEMPLATE)
    ap.add_argument("--top-rate", type=float, default=0.01)
    ap.add_argument("--controls", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bf16_drift")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()

    def subset(split: str, n: int, seed: int, exclude: set[str] = frozenset()):
        d = load_data("builtin:dialogues", split=split)
        d = d.filter(lambda ex: ex.id not in exclude)
        return d.limit_per_label(n, seed=seed) if n else d

    train = subset("train", args.train_per_label, args.seed)
    test = subset("test", args.test_per_label, args.seed)
    # the noise yardstick: an fp32 selection from a disjoint train sample of the same size
    # (with the whole train split: between its two seeded halves)
    if args.train_per_label:
        yard_a, yard_b = train, subset("train", args.train_per_label, args.seed + 1, exclude={ex.id for ex in train})
    else:
        half = subset("train", len(train) // 2 // len(train.labels), args.seed + 1)
        yard_a, yard_b = half, train.filter(lambda ex: ex.id not in {h.id for h in half})
    runs = {dt: run_dtype(dt, train, test, args) for dt in DTYPES}
    r32, r16 = runs["float32"], runs["bfloat16"]
    model32, _ = load_model("default", dtype="float32", progress=False)

    def select32(data: Any) -> Any:
        return neurons.collect(model32, data, reading="gated", tokens="all", template=args.template,
                               progress=not args.quiet).select(top_rate=args.top_rate, assign="argmax")

    sel_a = r32["selection"] if yard_a is train else select32(yard_a)
    sel_b = select32(yard_b)
    overlap = sum(
        1 for e in test.labels
        if max(r32["masking"][e]["own_ci"][0], r16["masking"][e]["own_ci"][0])
        <= min(r32["masking"][e]["own_ci"][1], r16["masking"][e]["own_ci"][1])
    )
    counts32, counts16 = r32["stats"].counts, r16["stats"].counts
    doc: dict[str, Any] = {
        "model": "default", "data": "builtin:dialogues", "template": args.template, "top_rate": args.top_rate,
        "controls": args.controls, "n_boot": args.n_boot, "seed": args.seed, "threads": torch.get_num_threads(),
        "labels": list(test.labels), "n_train": len(train), "n_test": len(test), "n_resample": [len(yard_a), len(yard_b)],
        "jaccard_fp32_bf16": jaccard_sets(r32["selection"], r16["selection"]),
        "jaccard_fp32_resample": jaccard_sets(sel_a, sel_b),
        "counts_share_differ": float((counts32 != counts16).double().mean()),
        "counts_mean_abs_rel_diff": float(((counts32 - counts16).abs().sum() / counts32.sum().clamp(min=1)).item()),
        "prediction_agreement": float((r32["clean_pred"] == r16["clean_pred"]).mean()),
        "masking_cis_overlap": overlap,
    }
    for dt, r in runs.items():
        doc[dt] = {k: r[k] for k in ("clean_accuracy", "clean_accuracy_ci", "masking", "seconds", "torch_dtype")}
    doc["within_noise"] = {
        "selection": doc["jaccard_fp32_bf16"]["overall"] >= doc["jaccard_fp32_resample"]["overall"],
        "clean_accuracy": r32["clean_accuracy_ci"][0] <= r16["clean_accuracy"] <= r32["clean_accuracy_ci"][1],
        "masking": overlap == len(test.labels),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bf16_drift.json").write_text(json.dumps(doc, indent=2, default=str))
    md = markdown(doc)
    (out / "bf16_drift.md").write_text(md)
    print(md)
    print(json.dumps({k: doc[k] for k in ("jaccard_fp32_bf16", "jaccard_fp32_resample", "prediction_agreement",
                                          "within_noise")}, indent=2))


if __name__ == "__main__":
    main()
