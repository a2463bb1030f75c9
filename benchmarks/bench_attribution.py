"""Attribution patching vs real activation patching: time and agreement; prints JSON.

Both run on the same (source, target) pairs of correctly classified ``builtin:appraisal_events`` events
(``fewshot`` template). ``attribution``: one clean capture pass plus one forward+backward per batch of
pairs, giving an estimate for every layer and site (and head). ``patching``: one batched pass per
(site, window). ``ratio`` = patching seconds / attribution seconds; ``spearman`` per site compares the
window-summed estimates with the real change of the target-minus-source logit difference.

Usage: ``python benchmarks/bench_attribution.py [--model default] [--n-per-label 8] [--n-pairs 20] [--span 3]``
"""

from __future__ import annotations

import argparse
import json
import time

from emocircuits.core.models import load_model
from emocircuits.data import load_data
from emocircuits.methods import inference as inf


def main() -> None:
    """Run the benchmark and print one JSON object."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="default")
    ap.add_argument("--n-per-label", type=int, default=8)
    ap.add_argument("--n-pairs", type=int, default=20)
    ap.add_argument("--span", type=int, default=3)
    ap.add_argument("--template", default="fewshot")
    ap.add_argument("--sites", default="attn.out,mlp.out,resid.post")
    args = ap.parse_args()
    model, spec = load_model(args.model, progress=False)
    data = load_data("builtin:appraisal_events", limit_per_label=args.n_per_label, seed=0)
    prep = inf.prepare(model, data, template=args.template, only_correct=True)
    sites = args.sites.split(",")
    pairs = inf.make_pairs(prep.pred, args.n_pairs, seed=0)
    t0 = time.perf_counter()
    att = inf.attribute(prep, sites=sites, pairs=pairs)
    t_att = time.perf_counter() - t0
    t0 = time.perf_counter()
    real = inf.patch(prep, sites=sites, span=args.span, pairs=pairs)
    t_real = time.perf_counter() - t0
    cmp_ = inf.compare_attribution(att.windows(args.span), real)
    print(json.dumps({
        "model": args.model, "n_layers": spec.n_layers, "n_examples": len(prep), "n_total": prep.n_total,
        "n_pairs": len(pairs), "span": args.span, "sites": sites,
        "attribution_seconds": round(t_att, 2), "patching_seconds": round(t_real, 2),
        "ratio": round(t_real / t_att, 2),
        "spearman": {r["site"]: round(r["spearman"], 3) for r in cmp_.to_dict("records")},
    }, indent=2))


if __name__ == "__main__":
    main()
