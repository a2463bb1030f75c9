"""The RQ3 table (emotion × layer range, K = 5 random controls) on this tree vs the baseline revision.

Both sides run ``sweep`` of the Lee et al. masking analysis (the library call behind ``emocircuits neurons
sweep``) on the same neurons.json, the same test dialogues and the same seeds, in fresh processes, one after
the other. The timed part is the table (the engine's clean pass included), not the model load. The two tables
must be identical on every column they share.

    python benchmarks/bench_rq3.py                    # 4 test dialogues per emotion (24), the 24 README cells
    python benchmarks/bench_rq3.py --per-label 0      # the whole test split (156), as in the README (long)
    python benchmarks/bench_rq3.py --profile          # also a cProfile of this tree's run, time shares by kind

The neurons come from ``neurons find`` on 60 train dialogues per emotion (found once beforehand, not timed)
unless ``--neurons`` names a file. Prints one JSON object: both times, the ratio, whether the tables agree,
the settings and (``--profile``) the shares.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _baseline import ROOT, baseline_args, readme_neurons, run_side, unpack  # noqa: E402

TARGET = "≥ 3× on the README's 24 cells (K = 5), identical table"

WORKER = r'''
import json, sys, time, cProfile, pstats, io
import emocircuits
from emocircuits.data import load_data
try:
    from emocircuits.core.models import load_model
    from emocircuits.methods.neurons import Selection, sweep
except ImportError:  # the baseline's flat layout
    from emocircuits.models import load_model
    from emocircuits.neurons import Selection, sweep
neurons, per_label, out, profile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
model, _ = load_model("default", progress=False)
data = load_data("builtin:dialogues", split="test", limit_per_label=per_label or None, seed=0)
sel = Selection.load(neurons)
prof = cProfile.Profile() if profile else None
t0 = time.perf_counter()
if prof:  # the sweep as `emocircuits neurons sweep` runs it (engine, cell files, results.parquet), in this process
    import tempfile
    from emocircuits.sweeps import run_sweep
    from emocircuits.sweeps.analyses.neuron_masking import rq3_config
    from emocircuits.sweeps.registry import from_dict
    from emocircuits.sweeps.shared import cached_model
    cfg = from_dict(rq3_config(neurons=neurons, split="test", limit_per_label=per_label or None, ratios=[0.01],
                               layer_ranges=["bottom", "middle", "top", "all"], controls=5, n_boot=1000, seed=0))
    cached_model(cfg.model)  # loaded before the profile starts
    t0 = time.perf_counter()
    prof.enable()
    result = run_sweep(cfg, tempfile.mkdtemp() + "/sweep", executor="local", workers=1, progress=False)
    prof.disable()
    table = result.table
else:
    table = sweep(model, data, sel, ratios=[0.01], layer_ranges=["bottom", "middle", "top", "all"], controls=5,
                  seed=0, n_boot=1000, progress=False)
seconds = time.perf_counter() - t0
table.to_parquet(out)
shares = {}
if prof:
    stats = pstats.Stats(prof)
    kinds = {"hooks": ("emocircuits/core/interventions.py", "transformer_lens/hook_points.py"),
             "model forward": ("torch", "transformers/", "transformer_lens"),
             "tokenisation": ("tokenizers", "tokenization", "emocircuits/core/prompts.py"),
             "judges": ("emocircuits/judges",),
             "I/O": ("pyarrow", "parquet", "json", "emocircuits/runs", "emocircuits/base/io.py"),
             "statistics": ("emocircuits/base/stats.py", "numpy", "pandas")}
    total = 0.0
    for (file, _line, name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():
        where = f"{file}:{name}"
        kind = next((k for k, keys in kinds.items() if any(key in where for key in keys)), "other")
        shares[kind] = shares.get(kind, 0.0) + tottime
        total += tottime
    shares = {k: round(v / total, 4) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}
print(json.dumps({"seconds": round(seconds, 2), "rows": len(table), "package": emocircuits.__file__,
                  "n_examples": len(data), "shares": shares}))
'''


def main() -> None:
    ap = baseline_args(__doc__)
    ap.add_argument("--profile", action="store_true", help="profile this tree's run (adds a little overhead)")
    a = ap.parse_args()
    import pandas as pd

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        neurons = readme_neurons(a.neurons, tmp)
        old_tree = unpack(a.baseline, tmp / "baseline")
        old = run_side(WORKER, [neurons, str(a.per_label), str(tmp / "old.parquet"), "0"], old_tree, a.threads)
        new = run_side(WORKER, [neurons, str(a.per_label), str(tmp / "new.parquet"), "0"], ROOT, a.threads)
        t_old, t_new = pd.read_parquet(tmp / "old.parquet"), pd.read_parquet(tmp / "new.parquet")
        shared = [c for c in t_old.columns if c in t_new.columns]
        identical = bool(t_old[shared].equals(t_new[shared]))
        prof: dict = {"shares": {}, "seconds": None}
        if a.profile:
            try:
                prof = run_side(WORKER, [neurons, str(a.per_label), str(tmp / "sweep.parquet"), "1"], ROOT, a.threads)
            except SystemExit as err:  # keep the timings: say what failed instead
                prof = {"shares": {}, "seconds": None, "error": str(err)[-500:]}
            else:
                t_sweep = pd.read_parquet(tmp / "sweep.parquet")
                same = [c for c in t_new.columns if c in t_sweep.columns]
                prof["sweep_equals_library"] = bool(t_new[same].reset_index(drop=True).equals(
                    t_sweep[same].reset_index(drop=True)))
    print(json.dumps({
        "benchmark": "rq3_table", "baseline": a.baseline,
        "baseline_s": old["seconds"], "this_tree_s": new["seconds"],
        "ratio": round(old["seconds"] / new["seconds"], 2),
        "identical_table": identical, "columns_compared": len(shared), "rows": new["rows"],
        "n_examples": new["n_examples"], "cells": "6 emotions x bottom,middle,top,all; K = 5 controls; n_boot 1000",
        "threads": a.threads, "profile": {"what": "emocircuits neurons sweep (engine, in process) under cProfile, "
                                          "share of the profiled time by kind", "seconds": prof["seconds"],
                                          "shares": prof["shares"],
                                          "sweep_table_equals_library_table": prof.get("sweep_equals_library"),
                                          "error": prof.get("error")},
        "packages": [old["package"], new["package"]],
    }))


if __name__ == "__main__":
    main()
