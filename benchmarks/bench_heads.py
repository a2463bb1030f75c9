"""Head scoring: one forward pass (``head.z`` captured, projected through W_O) vs one ablation pass per
head (``ZeroHeads`` + ``mlp.in`` or ``resid.mid`` capture, by ``--head-score``), on the same prompts, in one run.

Prints JSON: both times, the ratio, the number of ablation passes and the largest score difference.

    python benchmarks/bench_heads.py [--model tiny-llama | default] [--prompts 6] [--layers 0-29] [--threads N]
                                     [--head-score mlp_in | resid]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--prompts", type=int, default=6, help="SEV prompts (skeleton x valence x emotion rows).")
    ap.add_argument("--layers", default="all", help="all | A-B: layers scored (ablation cost grows with them).")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--head-score", default="mlp_in", help="mlp_in | resid (emocircuits.methods.circuits.HEAD_SCORES).")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from emocircuits.core.models import load_model
    from emocircuits.core.sites import layer_range
    from emocircuits.data import load_data
    from emocircuits.methods import circuits as C

    model, spec = load_model(args.model, progress=False)
    items = C.elicitation_items(load_data("builtin:sev"), limit=max(1, args.prompts // 18 + 1)).iloc[: args.prompts]
    ids = C.prompt_ids(model, items)
    layers = layer_range(spec.n_layers, args.layers)
    g = torch.Generator().manual_seed(0)
    v = {layer: torch.randn(spec.d_model, generator=g) for layer in layers}
    C.head_scores_onepass(model, ids[:1], {layers[0]: v[layers[0]]})  # warm-up

    t = time.perf_counter()
    one = C.head_scores_onepass(model, ids, v, head_score=args.head_score)
    t_one = time.perf_counter() - t
    t = time.perf_counter()
    abl = C.head_scores_ablation(model, ids, v, head_score=args.head_score)
    t_abl = time.perf_counter() - t
    print(json.dumps({
        "model": spec.model_id, "n_prompts": len(ids), "n_tokens": sum(map(len, ids)), "layers": len(layers),
        "n_heads": spec.n_heads, "head_score": args.head_score, "ablation_passes": len(layers) * (spec.n_heads + 1),
        "onepass_s": round(t_one, 3), "ablation_s": round(t_abl, 3), "ratio": round(t_abl / t_one, 1),
        "max_abs_diff": float((one - abl).abs().max()), "threads": torch.get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()
