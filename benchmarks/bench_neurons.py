"""Statistics pass vs bare forward, on the same batches of the same model, in one run.

Prints JSON: both times, tokens/s, the ratio (target ≤ 1.15), the hook-only overhead against a forward
truncated the same way, and peak resident memory of the statistics pass on 1× and 4× the data (each
in a fresh subprocess; target growth ≤ 10%).

    python benchmarks/bench_neurons.py [--model default] [--per-label 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def _time_passes(model_spec: str, per_label: int, rounds: int) -> dict:
    from emocircuits.core.interventions import run_until
    from emocircuits.core.models import load_model
    from emocircuits.core.readout import LabelReadout
    from emocircuits.data import load_data
    from emocircuits.methods import neurons

    model, spec = load_model(model_spec, progress=False)
    data = load_data("builtin:dialogues", split="train", limit_per_label=per_label, seed=0)
    ro = LabelReadout(model, data.labels, "chat", share_prefix=False)
    token_ids = ro.encode(list(data))
    batches = list(ro.batches(token_ids))
    n_tokens = int(sum(b.pad_mask.sum() for b in batches))

    def bare() -> None:
        with torch.inference_mode():
            for b in batches:
                model(b.input_ids)

    def truncated() -> None:
        with torch.inference_mode():
            for b in batches:
                run_until(model, b.input_ids, "neuron.gated", spec.n_layers - 1)

    def stats() -> None:
        neurons.collect(model, data, reading="gated", tokens="all", template="chat", progress=False)

    bare()  # warm-up
    best = {"bare": float("inf"), "truncated": float("inf"), "stats": float("inf")}
    for _ in range(rounds):  # interleaved, best of rounds: robust to a noisy machine
        for name, fn in (("bare", bare), ("truncated", truncated), ("stats", stats)):
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {
        "model": spec.model_id, "texts": len(data), "tokens": n_tokens, "batches": len(batches),
        "bare_forward_s": round(best["bare"], 3), "stats_pass_s": round(best["stats"], 3),
        "truncated_forward_s": round(best["truncated"], 3),
        "bare_tokens_per_s": round(n_tokens / best["bare"], 1), "stats_tokens_per_s": round(n_tokens / best["stats"], 1),
        "ratio_stats_over_bare": round(best["stats"] / best["bare"], 3),
        "ratio_stats_over_truncated_forward": round(best["stats"] / best["truncated"], 3),
        "target_ratio": 1.15,
    }


def _peak_rss_child(model_spec: str, per_label: int) -> None:
    from emocircuits.core.models import load_model
    from emocircuits.data import load_data
    from emocircuits.methods import neurons

    model, _ = load_model(model_spec, progress=False)
    small = load_data("builtin:dialogues", split="train", limit_per_label=1, seed=0)
    neurons.collect(model, small, progress=False)  # warm: allocator pools and model at steady state
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    data = load_data("builtin:dialogues", split="train", limit_per_label=per_label, seed=0)
    neurons.collect(model, data, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_mb": peak / 1024, "steady_rss_mb": base / 1024}))


def _peak_rss(model_spec: str, per_label: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child-rss", str(per_label), "--model", model_spec],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="default")
    ap.add_argument("--per-label", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child-rss", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_rss is not None:
        _peak_rss_child(args.model, args.child_rss)
        return
    result = _time_passes(args.model, args.per_label, args.rounds)
    one, four = _peak_rss(args.model, args.per_label), _peak_rss(args.model, 4 * args.per_label)
    result.update({"peak_rss_mb_1x": round(one["peak_rss_mb"], 1), "peak_rss_mb_4x": round(four["peak_rss_mb"], 1),
                   "memory_growth_4x": round(four["peak_rss_mb"] / one["peak_rss_mb"] - 1, 4),
                   "target_memory_growth": 0.10})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
