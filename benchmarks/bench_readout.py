"""Batched label scoring vs one prompt at a time, on the same prompts; prints JSON.

Data: 360 short texts of ``builtin:appraisal_events`` (60 per label, ``limit_per_label=60, seed=0``;
``--data builtin:dialogues --split train`` for the older 120-dialogue setting) in the default template
(``prompts.DEFAULT_TEMPLATE``, ``chat_short``). ``one_at_a_time``: a plain forward of each prompt (full
logits at every position), label log-probs read at the last position — what a researcher writes first.
``batched``: :class:`LabelReadout` (token-budget batches, right padding, the shared prefix computed once
per pass, unembedding only at the read position).

The texts are split into ``--chunks`` groups and the two sides alternate chunk by chunk, so both see the
same machine load; each side's time is the sum over chunks. ``ratio`` = one-at-a-time time / batched
time (target ≥ 3×). ``predictions_identical``: the argmax label of every prompt agrees; ``max_abs_diff``:
the largest label-score difference. ``--also-no-prefix`` also times batching without prefix sharing.

Usage: ``python benchmarks/bench_readout.py [--model default] [--n-per-label 60] [--chunks 6]``
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from emocircuits.core.models import load_model
from emocircuits.core.prompts import DEFAULT_TEMPLATE
from emocircuits.core.readout import LabelReadout
from emocircuits.data import load_data


def main() -> None:
    """Run the benchmark and print one JSON object."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default="builtin:appraisal_events")
    ap.add_argument("--split", default=None, help="train/test (data without its own split: leave unset)")
    ap.add_argument("--n-per-label", type=int, default=60)
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--template", default=DEFAULT_TEMPLATE)
    ap.add_argument("--chunks", type=int, default=6, help="alternate the two sides over this many chunks")
    ap.add_argument("--also-no-prefix", action="store_true", help="also time batching without prefix sharing")
    args = ap.parse_args()
    bridge, spec = load_model(args.model, progress=False)
    ds = load_data(args.data, split=args.split, limit_per_label=args.n_per_label, seed=0)
    labels = ds.labels
    ro = LabelReadout(bridge, labels, args.template, max_tokens=args.max_tokens)
    ro_np = LabelReadout(bridge, labels, args.template, share_prefix=False, max_tokens=args.max_tokens)
    ids = ro.encode(ds)
    first = torch.tensor(ro.first_ids)
    if ro.scoring != "first_token":
        raise SystemExit(f"Template {args.template!r} needs full-label scoring; this benchmark compares first-token scores.")

    def batched(r: LabelReadout, chunk: list[int]) -> torch.Tensor:
        return r.scores_of([ids[i] for i in chunk])

    def singles(chunk: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return torch.stack([bridge(torch.tensor([ids[i]]))[0, -1].log_softmax(-1)[first] for i in chunk])

    with torch.inference_mode():  # warm-up (allocator, kernels)
        bridge(torch.tensor([ids[0]]))
    # chunks interleave the labels (every chunk holds every label), so each is a realistic pass
    order = list(range(len(ids)))
    chunks = [order[k::args.chunks] for k in range(args.chunks)]
    t = {"batched": 0.0, "single": 0.0, "no_prefix": 0.0}
    s_batched, s_single, s_np = (torch.empty(len(ids), len(labels)) for _ in range(3))
    for chunk in chunks:
        for name, fn, out in (("batched", lambda c: batched(ro, c), s_batched), ("single", singles, s_single),
                              *([("no_prefix", lambda c: batched(ro_np, c), s_np)] if args.also_no_prefix else [])):
            t0 = time.perf_counter()
            out[chunk] = fn(chunk)
            t[name] += time.perf_counter() - t0
    n_tok = sum(len(i) for i in ids)
    prefix = ro.runner.shared_prefix(ro.batches([ids[i] for i in chunks[0]]))
    extra = {}
    if args.also_no_prefix:
        extra = {"batched_no_prefix_sharing_s": round(t["no_prefix"], 2),
                 "ratio_no_prefix_sharing": round(t["single"] / t["no_prefix"], 2),
                 "max_abs_diff_no_prefix_sharing": float((s_np - s_single).abs().max()),
                 "predictions_identical_no_prefix_sharing": bool(torch.equal(s_np.argmax(-1), s_single.argmax(-1)))}
    print(
        json.dumps(
            {
                "model": spec.model_id,
                "data": f"{args.data} split={args.split} limit_per_label={args.n_per_label} seed=0",
                "template": ro.template.name,
                "dtype": spec.dtype,
                "n_prompts": len(ids),
                "tokens": n_tok,
                "mean_prompt_tokens": round(n_tok / len(ids), 1),
                "shared_prefix_tokens": prefix,
                "max_tokens_per_batch": args.max_tokens,
                "chunks": args.chunks,
                "threads": torch.get_num_threads(),
                "one_at_a_time_s": round(t["single"], 2),
                "batched_s": round(t["batched"], 2),
                "one_at_a_time_tokens_per_s": round(n_tok / t["single"], 1),
                "batched_tokens_per_s": round(n_tok / t["batched"], 1),
                "ratio": round(t["single"] / t["batched"], 2),
                "target_ratio": 3.0,
                "predictions_identical": bool(torch.equal(s_batched.argmax(-1), s_single.argmax(-1))),
                "n_predictions_differ": int((s_batched.argmax(-1) != s_single.argmax(-1)).sum()),
                "max_abs_diff": float((s_batched - s_single).abs().max()),
                **extra,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
