"""Batched label scoring vs one prompt at a time, on the same 120 prompts; prints JSON.

Both paths score the chat-template prompts of 120 ``builtin:dialogues`` train dialogues (20 per label,
seed 0) with the same model. ``one_at_a_time``: a plain forward of each prompt (full logits), label
log-probs read at the last position. ``batched``: :class:`LabelReadout` (token-budget batches, right
padding, shared prefix computed once per batch, unembedding only at the read position). With
``--also-no-prefix`` also times batching without prefix sharing. ``max_abs_diff`` checks both give the same scores.

Usage: ``python benchmarks/bench_readout.py [--model default] [--n-per-label 20] [--max-tokens 4096]``
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from emocircuits.data import EKMAN6, load_data
from emocircuits.models import load_model
from emocircuits.readout import LabelReadout


def main() -> None:
    """Run the benchmark and print one JSON object."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="default")
    ap.add_argument("--n-per-label", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--template", default="chat")
    ap.add_argument("--also-no-prefix", action="store_true", help="also time batching without prefix sharing")
    args = ap.parse_args()
    bridge, spec = load_model(args.model, progress=False)
    ds = load_data("builtin:dialogues", split="train", limit_per_label=args.n_per_label, seed=0)
    ro = LabelReadout(bridge, EKMAN6, args.template, max_tokens=args.max_tokens)
    ids = ro.encode(ds)
    first = torch.tensor(ro.first_ids)

    def run_batched(r: LabelReadout) -> tuple[float, torch.Tensor]:
        t = time.perf_counter()
        s = torch.empty(len(ids), len(EKMAN6))
        for b in r.batches(ids):
            s[b.rows] = r.scores(b)
        return time.perf_counter() - t, s

    with torch.inference_mode():  # warm-up (allocator, kernels)
        bridge(torch.tensor([ids[0]]))
    t_batched, s_batched = run_batched(ro)
    extra: dict[str, float] = {}
    if args.also_no_prefix:
        t_np, s_np = run_batched(
            LabelReadout(bridge, EKMAN6, args.template, share_prefix=False, max_tokens=args.max_tokens)
        )
        extra = {"batched_no_prefix_sharing_s": round(t_np, 2)}
    t = time.perf_counter()
    singles = []
    with torch.inference_mode():
        for i in ids:
            singles.append(bridge(torch.tensor([i]))[0, -1].log_softmax(-1)[first])
    t_single = time.perf_counter() - t
    s_single = torch.stack(singles)
    if args.also_no_prefix:
        extra["ratio_no_prefix_sharing"] = round(t_single / extra["batched_no_prefix_sharing_s"], 2)
        extra["max_abs_diff_no_prefix_sharing"] = float((s_np - s_single).abs().max())
    n_tok = sum(len(i) for i in ids)
    print(
        json.dumps(
            {
                "model": spec.model_id if hasattr(spec, "model_id") else str(args.model),
                "n_prompts": len(ids),
                "tokens": n_tok,
                "mean_prompt_tokens": round(n_tok / len(ids), 1),
                "max_tokens_per_batch": args.max_tokens,
                "threads": torch.get_num_threads(),
                "one_at_a_time_s": round(t_single, 2),
                "batched_s": round(t_batched, 2),
                "ratio": round(t_single / t_batched, 2),
                "max_abs_diff": float((s_batched - s_single).abs().max()),
                **extra,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
