"""Measure every built-in judge on ``builtin:dialogues`` test and print accuracies and kappas as JSON.

    python scripts/measure_judges.py                       # all 156 test texts
    python scripts/measure_judges.py --limit-per-label 10  # a seeded, stratified subset

Judges: ``lexicon``, ``embedding`` (head trained on the train split, cached), ``self`` and
``llm:default`` on the embedded SmolLM2-135M-Instruct (one model load shared by both). The llm judge
is asked about each text's true label (targets); as a control it is also asked about a wrong label
(``llm_wrong_target_yes_rate``: share of "yes" when the target is not the text's label, seeded), since
a judge that always says yes would score 100% with targets; ``llm_p_yes`` gives the mean p(yes) for
true and wrong targets and the ROC AUC separating them (0.5 = no signal). ``--no-targets`` also runs
the llm judge without targets (asks all six questions per text: six times slower). ``--judges`` picks a
subset (comma-separated: lexicon, embedding, self, llm).
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np

from emocircuits.core.models import load_model
from emocircuits.data import load_data
from emocircuits.judges.panel import accuracy, get_judge, judge_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit-per-label", type=int, default=None)
    ap.add_argument("--model", default="default")
    ap.add_argument("--no-targets", action="store_true", help="Also run the llm judge without targets.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--judges", default="lexicon,embedding,self,llm",
                    help="Comma-separated subset of lexicon, embedding, self, llm.")
    args = ap.parse_args()

    data = load_data("builtin:dialogues", split="test", limit_per_label=args.limit_per_label, seed=args.seed)
    texts, labels = [ex.text for ex in data], [ex.label for ex in data]
    chosen = [j.strip() for j in args.judges.split(",") if j.strip()]
    build: dict[str, float] = {}
    bridge = None
    if {"self", "llm"} & set(chosen):
        t0 = time.perf_counter()
        bridge, _ = load_model(args.model, progress=False)
        build["load_model"] = time.perf_counter() - t0
    judges = {}
    for key, name, kw in (("lexicon", "lexicon", {}), ("embedding", "embedding", {}),
                          ("self", "self", {"model": bridge}), ("llm", f"llm:{args.model}", {"model": bridge})):
        if key not in chosen:
            continue
        t0 = time.perf_counter()
        judges[name] = get_judge(name, **kw)
        build[name] = time.perf_counter() - t0
    run = judge_dataset(judges, data)
    out = {"data": "builtin:dialogues", "split": "test", "limit_per_label": args.limit_per_label, "n": len(data),
           "accuracy": {k: v["accuracy"] for k, v in run.metrics["judges"].items()},
           "per_label": {k: v["per_label"] for k, v in run.metrics["judges"].items()},
           "none_rate": {k: v["none_rate"] for k, v in run.metrics["judges"].items()},
           "seconds": {k: v["seconds"] for k, v in run.metrics["judges"].items()},
           "build_seconds": {k: round(v, 2) for k, v in build.items()},
           "embedding_head_trained_now": getattr(judges.get("embedding"), "trained", None),
           "kappa": run.metrics["kappa"]}

    llm = judges.get(f"llm:{args.model}")
    if llm is None:
        print(json.dumps(out, indent=2))
        return
    rng = random.Random(args.seed)
    wrong = [rng.choice([lab for lab in data.labels if lab != y]) for y in labels]
    t0 = time.perf_counter()
    frame = llm.judge(texts, wrong)
    out["llm_wrong_target_yes_rate"] = accuracy(frame, wrong)["accuracy"]
    p_true = [run.frames[llm.name][f"p_{y}"][i] for i, y in enumerate(labels)]
    p_wrong = [frame[f"p_{w}"][i] for i, w in enumerate(wrong)]
    from sklearn.metrics import roc_auc_score

    out["llm_p_yes"] = {"true_target_mean": float(np.mean(p_true)), "wrong_target_mean": float(np.mean(p_wrong)),
                        "auc_true_vs_wrong": float(roc_auc_score([1] * len(p_true) + [0] * len(p_wrong),
                                                                 p_true + p_wrong))}
    out["seconds"]["llm_wrong_target"] = round(time.perf_counter() - t0, 2)
    if args.no_targets:
        t0 = time.perf_counter()
        frame = llm.judge(texts)
        m = accuracy(frame, labels)
        out["llm_no_targets"] = {"accuracy": m["accuracy"], "none_rate": m["none_rate"], "per_label": m["per_label"],
                                 "seconds": round(time.perf_counter() - t0, 2)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
