"""Sweep engine vs independent runs: 12 neuron-masking conditions on the same prompts.

Arm ``engine``: one ``python -m emocircuits.sweeps`` process runs 12 cells (6 emotions x 2 layer ranges):
one model load, one tokenisation, one clean pass, then one masked pass per cell.
Arm ``independent``: 12 separate ``emocircuits neurons mask`` processes, one per condition (each loads
the model, tokenises and runs its own clean pass). When the ``neurons mask`` command is not available
the arm runs the same library calls (``emocircuits.methods.neurons.mask``) in a fresh process per condition.
Both arms use the same neurons.json (found once beforehand, not timed) and no random controls.

    python benchmarks/bench_sweep.py                        # 120 prompts (20 per label), embedded model
    python benchmarks/bench_sweep.py --per-label 2 --model tiny-llama   # a quick smoke run

Prints one JSON object: both wall times, the ratio, and the settings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from emocircuits.data import EKMAN6 as EMOTIONS

LAYERS = ("middle", "all")

MASK_SNIPPET = """
import sys
from emocircuits.data import load_data
from emocircuits.core.models import load_model
from emocircuits.methods.neurons import Selection, mask
model, _ = load_model(sys.argv[1], progress=False)
data = load_data("builtin:dialogues", split="test", limit_per_label=int(sys.argv[2]), seed=0)
res = mask(model, data, Selection.load(sys.argv[3]), emotions=[sys.argv[4]], layers=sys.argv[5], controls=0,
           progress=False)
print(res.effects.iloc[0]["acc_masked"])
"""


def _run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def _has_neurons_cli() -> bool:
    proc = subprocess.run([sys.executable, "-m", "emocircuits.cli", "neurons", "mask", "--help"], capture_output=True,
                          text=True)
    return proc.returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--per-label", type=int, default=20, help="test prompts per label (6 labels; 20 -> 120 prompts)")
    ap.add_argument("--find-per-label", type=int, default=10, help="train texts per label for finding neurons")
    args = ap.parse_args()

    from emocircuits.base.io import write_json
    from emocircuits.core.models import load_model
    from emocircuits.data import load_data
    from emocircuits.methods.neurons.find import collect

    work = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    try:
        model, spec = load_model(args.model, progress=False)
        train = load_data("builtin:dialogues", split="train", limit_per_label=args.find_per_label, seed=0)
        sel = collect(model, train, progress=False).select(top_rate=0.01)
        neurons = work / "neurons.json"
        write_json(neurons, sel.to_json())
        del model
        n_prompts = len(load_data("builtin:dialogues", split="test", limit_per_label=args.per_label, seed=0))

        cfg = work / "bench.toml"
        cfg.write_text(f"""
[sweep]
analysis = "neuron_masking"
seed = 0
[model]
spec = "{args.model}"
[data]
split = "test"
limit_per_label = {args.per_label}
[analysis]
neurons = "{neurons}"
controls = 0
n_boot = 200
[grid]
emotion = {json.dumps(list(EMOTIONS))}
layers = {json.dumps(list(LAYERS))}
""")
        t_engine = _run([sys.executable, "-m", "emocircuits.sweeps", str(cfg), "--out", str(work / "sweep"), "--quiet"])

        cli = _has_neurons_cli()
        t_indep = 0.0
        for e in EMOTIONS:
            for layers in LAYERS:
                if cli:
                    cmd = [sys.executable, "-m", "emocircuits.cli", "neurons", "mask", "--model", args.model,
                           "--neurons", str(neurons), "--emotion", e, "--layers", layers, "--controls", "0",
                           "--limit-per-label", str(args.per_label), "--out", str(work / f"mask_{e}_{layers}"),
                           "--quiet"]
                else:
                    cmd = [sys.executable, "-c", MASK_SNIPPET, args.model, str(args.per_label), str(neurons), e, layers]
                t_indep += _run(cmd)
        print(json.dumps({
            "benchmark": "sweep_engine_vs_independent_runs", "model": spec.model_id, "n_conditions": 12,
            "n_prompts": n_prompts, "engine_s": round(t_engine, 2), "independent_s": round(t_indep, 2),
            "ratio": round(t_indep / t_engine, 2), "independent_arm": "neurons mask CLI" if cli else "library fallback",
        }))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
