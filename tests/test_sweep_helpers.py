"""Shared helpers of the sweep tests: small head-scaling configs (the generic ``intervention`` analysis with a
ScaleHeads template) on the tiny random Llama."""

from __future__ import annotations

from pathlib import Path

TINY_TOML = """
[sweep]
analysis = "intervention"
seed = {seed}
cells_per_task = {cells_per_task}

[model]
spec = "tiny-llama"

[data]
limit_per_label = 1

[analysis]
n_boot = 50

[analysis.intervention]
type = "ScaleHeads"
heads = "{{layers}}:all"
factor = "{{factor}}"

[grid]
layers = {layers}
factor = {factors}
"""


def write_config(tmp: Path, *, layers: str = '["0", "1-2"]', factors: str = "[0.0, 2.0]", seed: int = 0,
                 cells_per_task: int = 1, name: str = "cfg.toml") -> Path:
    path = Path(tmp) / name
    path.write_text(TINY_TOML.format(layers=layers, factors=factors, seed=seed, cells_per_task=cells_per_task))
    return path
