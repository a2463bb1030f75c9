"""Sublayer influence: the KV-cached last-token path (every injection re-runs only the last prompt token,
many injections per batch) vs re-running whole prompts once per injection, on the same prompts and
injections, in one run.

Prints JSON: both times, the ratio, the number of injections and the largest difference of the injected
projections between the two paths.

    python benchmarks/bench_influence.py [--model tiny-llama | tiny | default] [--prompts 2] [--emotions 2]
        [--alphas 0.1,0.5] [--layers all] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="default", help="default (embedded SmolLM2), tiny (= tiny-llama), tiny-gpt2 ...")
    ap.add_argument("--prompts", type=int, default=2, help="emotion-free SEV prompts (skeleton x valence).")
    ap.add_argument("--emotions", type=int, default=2, help="emotions injected (random unit directions).")
    ap.add_argument("--alphas", default="0.1,0.5")
    ap.add_argument("--layers", default="all", help="all | A-B: layers injected.")
    ap.add_argument("--max-rows", type=int, default=128, help="injections per last-token batch (fast path).")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from emocircuits.core.models import load_model
    from emocircuits.core.sites import layer_range
    from emocircuits.data import load_data
    from emocircuits.methods import circuits as B
    from emocircuits.methods import circuits as C

    name = "tiny-llama" if args.model == "tiny" else args.model
    model, spec = load_model(name, progress=False)
    items = B.neutral_items(C.elicitation_items(load_data("builtin:sev"), limit=max(1, args.prompts // 3 + 1)))
    ids = B.chat_ids(model, items.iloc[: args.prompts])
    layers = layer_range(spec.n_layers, args.layers)
    alphas = [float(a) for a in args.alphas.split(",")]
    g = torch.Generator().manual_seed(0)
    plan = []
    for e in range(args.emotions):
        ref = torch.nn.functional.normalize(torch.randn(spec.d_model, generator=g), dim=0)
        for layer in layers:
            for p in B.SUBLAYERS:
                v = torch.nn.functional.normalize(torch.randn(spec.d_model, generator=g), dim=0)
                plan += [B.Injection(f"e{e}", layer, p, a, 1.0, v, ref) for a in alphas]
    B.injection_scores_fast(model, ids[:1], plan[:2])  # warm-up

    t = time.perf_counter()
    _, fast = B.injection_scores_fast(model, ids, plan, max_rows=args.max_rows)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    _, full = B.injection_scores_full(model, ids, plan)
    t_full = time.perf_counter() - t
    print(json.dumps({
        "model": spec.model_id, "n_prompts": len(ids), "n_tokens": sum(map(len, ids)),
        "mean_prompt_tokens": round(sum(map(len, ids)) / len(ids), 1), "layers": len(layers),
        "injections": len(plan), "fast_s": round(t_fast, 3), "full_s": round(t_full, 3),
        "ratio": round(t_full / t_fast, 1), "max_abs_diff": float((fast - full).abs().max()),
        "threads": torch.get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()
