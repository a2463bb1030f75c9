"""Batched generation vs one prompt at a time, on the same prompts in one run; prints JSON.

Both sides greedily generate ``--new-tokens`` tokens (the minimum is forced, so both produce exactly the
same number of tokens) for ``--n`` SEV elicitation prompts (system "Always reply in {emotion}. ...",
user "{scenario}\\n{event}", emotions cycling through the Ekman six) with
:func:`emocircuits.core.generation.generate`: ``one_at_a_time`` calls it once per prompt, ``batched`` once for
all (token-budget batches, one shared-prefix pass, a key/value cache). ``same_tokens`` checks that both
produced identical token ids.

Usage: ``python benchmarks/bench_generate.py [--model default] [--n 48] [--new-tokens 48]``
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from emocircuits.core.generation import generate
from emocircuits.core.models import load_model
from emocircuits.data import EKMAN6, load_data


def main() -> None:
    """Run the benchmark and print one JSON object."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=8192)
    args = ap.parse_args()
    model, spec = load_model(args.model, progress=False)
    sev = list(load_data("builtin:sev"))[: args.n]
    prompts = []
    for i, ex in enumerate(sev):
        emotion = EKMAN6[i % len(EKMAN6)]
        prompts.append([
            {"role": "system", "content": f"Always reply in {emotion}. Keep the reply to at most two sentences."},
            {"role": "user", "content": f"{ex.meta['scenario']}\n{ex.meta['event']}"},
        ])
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    generate(model, prompts[:2], max_new_tokens=2)  # warm-up

    t0 = time.perf_counter()
    batched = generate(model, prompts, max_tokens=args.max_tokens, **kw)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    singles = [generate(model, [p], **kw) for p in prompts]
    t_single = time.perf_counter() - t0

    n_tokens = sum(len(t) for t in batched.token_ids)
    print(json.dumps({
        "benchmark": "generate",
        "model": spec.model_id,
        "n_prompts": len(prompts),
        "new_tokens_per_prompt": args.new_tokens,
        "torch_threads": torch.get_num_threads(),
        "one_at_a_time_tokens_per_s": round(n_tokens / t_single, 1),
        "batched_tokens_per_s": round(n_tokens / t_batched, 1),
        "one_at_a_time_s": round(t_single, 2),
        "batched_s": round(t_batched, 2),
        "ratio": round(t_single / t_batched, 2),
        "same_tokens": all(batched.token_ids[i] == s.token_ids[0] for i, s in enumerate(singles)),
    }, indent=2))


if __name__ == "__main__":
    main()
