"""Every notebook in notebooks/ is stored without outputs and runs top to bottom within its time budget.

Notebooks execute with nbclient in a fresh kernel inside a temporary directory (they write their run
directories under ``runs/`` there); a cell that raises fails the test with the cell's source and error.
``EC_NB_BUDGET_S`` overrides the per-notebook budget (seconds).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
BUDGET_S = float(os.environ.get("EC_NB_BUDGET_S", 900))


def test_there_are_notebooks():
    names = [p.name for p in NOTEBOOKS]
    assert {"01_emotion_neurons.ipynb", "02_masking_sweeps.ipynb", "03_emotion_directions.ipynb"} <= set(names), names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_without_outputs(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"cell {i} of {path.name} has outputs"
    # every code cell is explained by a markdown cell somewhere before it
    assert nb.cells[0].cell_type == "markdown"
    kinds = [c.cell_type for c in nb.cells]
    assert kinds.count("markdown") >= kinds.count("code") // 2


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=int(BUDGET_S), kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    start = time.monotonic()
    try:
        client.execute()
    except CellExecutionError as exc:  # the message holds the failing cell's source and traceback
        pytest.fail(f"{path.name} failed:\n{exc}", pytrace=False)
    took = time.monotonic() - start
    print(f"\n{path.name}: {took:.0f} s")
    assert took < BUDGET_S, f"{path.name} took {took:.0f} s, over its {BUDGET_S:.0f} s budget"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == []
    shown = " ".join(f"{k} {v}" for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                     for k, v in o.get("data", {}).items())
    assert "plotly" in shown.lower(), "no figure was displayed"
    assert (tmp_path / "runs").is_dir()
