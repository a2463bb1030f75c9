"""The jobs ``rerun`` can re-create: a manifest's ``command`` → the job that wrote it.

Each entry takes ``(config_dict, out_dir)``: the manifest's ``config`` and a new run directory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from emocircuits.jobs import (
    circuit_build,
    circuits,
    classify,
    demo,
    inference,
    judge,
    neurons,
    steer,
    triangulate,
)

JobFn = Callable[[dict[str, Any], Path], Any]

JOBS: dict[str, JobFn] = {
    "classify": lambda cfg, out: classify.run_classify(dict(cfg), Path(out), quiet=True),
    "judge": lambda cfg, out: judge.run_judge(dict(cfg), Path(out), quiet=True),
    "neurons find": lambda cfg, out: neurons.run_find(dict(cfg), Path(out), quiet=True),
    "neurons mask": lambda cfg, out: neurons.run_mask(dict(cfg), Path(out), quiet=True),
    "circuits elicit": lambda cfg, out: circuits.run_elicit(dict(cfg), Path(out), quiet=True),
    "circuits directions": lambda cfg, out: circuits.run_directions(dict(cfg), Path(out), quiet=True),
    "circuits components": lambda cfg, out: circuits.run_components(dict(cfg), Path(out), quiet=True),
    "circuits influence": lambda cfg, out: circuit_build.run_influence(dict(cfg), Path(out), quiet=True),
    "circuits assemble": lambda cfg, out: circuit_build.run_assemble(dict(cfg), Path(out), quiet=True),
    "circuits steer": lambda cfg, out: steer.run_steer(dict(cfg), Path(out), quiet=True),
    "demo": lambda cfg, out: demo.run_tour(dict(cfg), Path(out), quiet=True, echo=None),
    "triangulate": lambda cfg, out: triangulate.run_triangulate(dict(cfg), Path(out), quiet=True),
    **{f"inference {cmd}": (lambda cfg, out, _c=cmd: inference.run_inference(_c, dict(cfg), Path(out), quiet=True))
       for cmd in inference.COMMANDS},
}
