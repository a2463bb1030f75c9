"""Steered generation at the last prompt token, prefill reusing the unsteered prompts' keys/values vs computing them.

Both sides generate greedily from the same chat prompts (test dialogues) under the same ``AddDirection`` at
``positions="last"`` (the residual-steering pattern): once without a store, once inside ``clean_kv(model)``
after an unsteered generation of the same prompts has filled it (not timed). The tokens must be identical.

    python benchmarks/bench_steered_generation.py
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from emocircuits.core.generation import generate
from emocircuits.core.interventions import AddDirection
from emocircuits.core.models import load_model
from emocircuits.core.runner import clean_kv
from emocircuits.data import load_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-label", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=24)
    a = ap.parse_args()
    model, spec = load_model("default", progress=False)
    data = load_data("builtin:dialogues", split="test", limit_per_label=a.per_label, seed=0)
    prompts = [[{"role": "user", "content": ex.text}] for ex in data]
    kw = {"max_new_tokens": a.new_tokens, "system": "Reply in at most two sentences."}
    torch.manual_seed(0)
    steer = AddDirection(torch.randn(spec.d_model), "resid.post", (10, 11, 12), 0.5, positions="last",
                         rms_scaled=True, unit=True)
    generate(model, prompts[:2], **kw)  # warm-up
    t0 = time.perf_counter()
    with steer.apply(model):
        full = generate(model, prompts, **kw)
    t_full = time.perf_counter() - t0
    with clean_kv(model) as store:
        generate(model, prompts, **kw)  # the unsteered reference fills the store
        t0 = time.perf_counter()
        with steer.apply(model):
            reuse = generate(model, prompts, **kw)
        t_reuse = time.perf_counter() - t0
    print(json.dumps({"benchmark": "steered_generation", "n_examples": len(prompts), "new_tokens": a.new_tokens,
                      "baseline_s": round(t_full, 2), "this_tree_s": round(t_reuse, 2),
                      "ratio": round(t_full / t_reuse, 2), "same_tokens": full.token_ids == reuse.token_ids,
                      "positions_reused": store.served, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
