"""Masking engine, knockout windows and patching windows on this tree vs the baseline revision.

Same inputs on both sides (the default template ``chat_short``, the embedded model, test dialogues), fresh
processes one after the other:

* ``masking``: the masking engine's scores under each emotion's neurons restricted to bottom / middle / top /
  all layers (the 21 non-empty RQ3 masks), after its clean pass;
* ``knockout``: Tak et al.'s knockout of ``attn.out`` and ``mlp.out`` at the last token over every 3-layer
  window (zero mode), after ``prepare`` (the clean pass, timed on its own);
* ``patching``: 50 source→target pairs patched at the last token's ``resid.post`` over every 3-layer window.

Outputs must agree to 1e-5 (label scores; knockout and patching tables). Prints one JSON object with each
part's times, ratio and largest difference.

    python benchmarks/bench_windows.py                  # 4 test dialogues per emotion (24 prompts)
    python benchmarks/bench_windows.py --per-label 0    # the whole test split
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _baseline import ROOT, baseline_args, readme_neurons, run_side, unpack  # noqa: E402

TARGET = "≥ 1.8× each, outputs equal to 1e-5"

WORKER = r'''
import json, sys, time
import numpy as np, torch
import emocircuits
from emocircuits.data import load_data
try:
    from emocircuits.core.models import load_model
    from emocircuits.methods.neurons import Selection, MaskingEngine, Condition, condition_set
    from emocircuits.methods.inference import prepare, knockout, patch, capture_sites, make_pairs
except ImportError:  # the baseline's flat layout
    from emocircuits.models import load_model
    from emocircuits.neurons import Selection, MaskingEngine, Condition, condition_set
    from emocircuits.inference import prepare, knockout, patch, capture_sites, make_pairs
neurons, per_label, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
model, _ = load_model("default", progress=False)
data = load_data("builtin:dialogues", split="test", limit_per_label=per_label or None, seed=0)
sel = Selection.load(neurons)
t = {}
t0 = time.perf_counter()
engine = MaskingEngine(model, data, labels=sel.labels, template="chat_short", progress=False)
t["masking_clean_pass"] = time.perf_counter() - t0
sets = [condition_set(sel, Condition(e, lr, None, "truncate"), None) for e in sel.labels
        for lr in ("bottom", "middle", "top", "all")]
sets = [s for s in sets if len(s)]
t0 = time.perf_counter()
masked = torch.stack([engine.scores(s) for s in sets])
t["masking"] = time.perf_counter() - t0
t0 = time.perf_counter()
prep = prepare(model, list(data), labels=sel.labels, template="chat_short", calibrate=False, only_correct=False)
t["prepare"] = time.perf_counter() - t0
t0 = time.perf_counter()
ko = knockout(prep, sites=("attn.out", "mlp.out"), span=3, mode="zero", n_boot=200)
t["knockout"] = time.perf_counter() - t0
acts = capture_sites(model, prep.token_ids, ["resid.post"])
pairs = make_pairs(prep.pred, 50, 0)
t0 = time.perf_counter()
pt = patch(prep, sites=("resid.post",), span=3, pairs=pairs, n_boot=200, acts=acts)
t["patching"] = time.perf_counter() - t0
torch.save({"masked": masked, "knockout": ko, "patching": pt, "n_sets": len(sets)}, out)
print(json.dumps({"seconds": {k: round(v, 2) for k, v in t.items()}, "package": emocircuits.__file__,
                  "n_examples": len(data), "n_masks": len(sets), "n_knockout_windows": len(ko),
                  "n_patch_windows": len(pt)}))
'''


def _table_diff(a, b) -> float:
    """Largest difference over the numeric columns both tables have (the newer one may have more)."""
    numbers = [c for c in a.columns if c in b.columns and a[c].dtype.kind in "fi"]
    if len(a) != len(b) or not numbers:
        return float("inf")
    return float((a[numbers] - b[numbers]).abs().to_numpy().max())


def main() -> None:
    ap = baseline_args(__doc__)
    a = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        neurons = readme_neurons(a.neurons, tmp)
        old_tree = unpack(a.baseline, tmp / "baseline")
        old = run_side(WORKER, [neurons, str(a.per_label), str(tmp / "old.pt")], old_tree, a.threads)
        new = run_side(WORKER, [neurons, str(a.per_label), str(tmp / "new.pt")], ROOT, a.threads)
        o, n = torch.load(tmp / "old.pt", weights_only=False), torch.load(tmp / "new.pt", weights_only=False)
    diffs = {"masking": float((o["masked"] - n["masked"]).abs().max()),
             "knockout": _table_diff(o["knockout"], n["knockout"]),
             "patching": _table_diff(o["patching"], n["patching"])}
    so, sn = old["seconds"], new["seconds"]
    parts = {k: {"baseline_s": so[k], "this_tree_s": sn[k], "ratio": round(so[k] / sn[k], 2),
                 "max_abs_diff": diffs[k], "equal_to_1e-5": diffs[k] <= 1e-5}
             for k in ("masking", "knockout", "patching")}
    print(json.dumps({
        "benchmark": "windows", "baseline": a.baseline, "template": "chat_short", "n_examples": new["n_examples"],
        "n_masks": new["n_masks"], "knockout_windows": new["n_knockout_windows"], "patch_windows": new["n_patch_windows"],
        "parts": parts,
        "clean_passes": {"masking_baseline_s": so["masking_clean_pass"], "masking_this_tree_s": sn["masking_clean_pass"],
                         "prepare_baseline_s": so["prepare"], "prepare_this_tree_s": sn["prepare"]},
        "threads": a.threads, "packages": [old["package"], new["package"]],
    }))


if __name__ == "__main__":
    main()
