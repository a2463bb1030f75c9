"""Cell-by-cell result storage of a sweep directory.

Layout (all writes atomic: temporary file in the same folder, fsync, rename)::

    DIR/manifest.json                 run manifest (emocircuits.runs)
    DIR/sweep.toml                    the resolved config; `emocircuits sweep DIR/sweep.toml` re-runs it
    DIR/cells/<cell_id>.json          one finished cell: config, status, metrics or error (the source of truth)
    DIR/arrays/<cell_id>.safetensors  optional per-cell tensors (e.g. predictions [n_examples])
    DIR/artifacts/<name>-<hash>/      artifacts found once per sweep (emocircuits.sweeps.artifacts)
    DIR/results.parquet               one row per finished cell, rebuilt from cells/ after every cell

A cell's JSON is written only after its arrays, so its presence means the cell is complete; resume
skips exactly the cells whose JSON exists. ``results.parquet`` is derived data: deleting it loses
nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from emocircuits.base.io import write_json, write_table, write_tensors

CELL_DIR = "cells"
ARRAY_DIR = "arrays"
RESULTS = "results.parquet"
RESERVED = ("cell_index", "cell_id", "status", "error")


class CellStore:
    """Read and write the finished cells of one sweep directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.cells_dir = self.root / CELL_DIR
        self.arrays_dir = self.root / ARRAY_DIR

    def clean_temporaries(self) -> int:
        """Delete temporary files a killed process left behind (never complete results); returns the count."""
        n = 0
        for folder in (self.cells_dir, self.arrays_dir, self.root):
            if folder.is_dir():
                for p in folder.glob(".*.tmp"):
                    p.unlink(missing_ok=True)
                    n += 1
        return n

    def load(self) -> dict[str, dict[str, Any]]:
        """``{cell_id: record}`` of every finished cell on disk."""
        out: dict[str, dict[str, Any]] = {}
        if not self.cells_dir.is_dir():
            return out
        for p in sorted(self.cells_dir.glob("*.json")):
            if p.name.startswith("."):
                continue
            try:
                rec = json.loads(p.read_text())
            except json.JSONDecodeError:  # cannot happen with atomic writes; treat as missing
                continue
            out[rec["cell_id"]] = rec
        return out

    def write(self, record: Mapping[str, Any], arrays: Mapping[str, Any] | None = None) -> None:
        """Persist one finished cell: arrays first, then the JSON record that marks it done."""
        cid = record["cell_id"]
        if arrays:
            import numpy as np

            write_tensors(self.arrays_dir / f"{cid}.safetensors", {k: np.array(v) for k, v in arrays.items()})
        write_json(self.cells_dir / f"{cid}.json", dict(record))

    def write_results(self, records: Mapping[str, Mapping[str, Any]], order: Sequence[str]) -> None:
        """Rebuild ``results.parquet`` from ``records`` (only ids in ``order``, in that order)."""
        write_table(self.root / RESULTS, results_frame([records[c] for c in order if c in records]))

    def read_results(self) -> Any:
        """``results.parquet`` as a DataFrame."""
        import pandas as pd

        return pd.read_parquet(self.root / RESULTS)


def results_frame(records: Sequence[Mapping[str, Any]]) -> Any:
    """One row per cell: ``cell_index, cell_id``, the cell's config columns, ``status, error``, metrics."""
    import pandas as pd

    rows = []
    axes: dict[str, None] = {}
    for rec in records:
        row: dict[str, Any] = {"cell_index": rec["index"], "cell_id": rec["cell_id"]}
        row.update(rec["cell"])
        axes.update(dict.fromkeys(rec["cell"]))
        row["status"] = rec["status"]
        row["error"] = rec.get("error")
        row.update(rec.get("metrics") or {})
        rows.append(row)
    for axis in axes:  # a column Parquet can hold: lists, or a mix of text and numbers, become text
        values = [r.get(axis) for r in rows]
        kinds = {type(v) for v in values if v is not None} - {bool}
        if any(isinstance(v, list | dict) for v in values) or (str in kinds and len(kinds) > 1):
            for r in rows:
                v = r.get(axis)
                r[axis] = v if v is None or isinstance(v, str) else json.dumps(v)
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=list(RESERVED))
    if "error" in frame:
        frame["error"] = frame["error"].astype("string")
    return frame
