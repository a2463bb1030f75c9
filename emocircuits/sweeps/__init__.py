"""Scripted sweeps: a TOML config → a grid of cells → one row per cell in ``DIR/results.parquet``.

    from emocircuits.sweeps import load_config, run_sweep
    result = run_sweep(load_config("examples/sweeps/quick.toml"), "runs/quick")   # resume=True continues
    result.table                                                                   # pandas DataFrame

See :mod:`emocircuits.sweeps.config` for the TOML schema, :mod:`emocircuits.sweeps.base` for the
analysis protocol, :mod:`emocircuits.sweeps.templates` for intervention templates (the ``intervention``
analysis), :mod:`emocircuits.sweeps.artifacts` for what a sweep computes once, and
:mod:`emocircuits.sweeps.store` for the directory layout.
"""

from emocircuits.sweeps.base import Analysis, TemplateCell, cell_id, derive_seed
from emocircuits.sweeps.config import SweepConfig, dumps_toml
from emocircuits.sweeps.engine import SweepResult, failed_cells_text, plan_tasks, run_sweep
from emocircuits.sweeps.registry import (
    analysis_names,
    expand,
    from_dict,
    get_analysis,
    load_config,
    register_analysis,
)
from emocircuits.sweeps.rerun import rerun

__all__ = [
    "Analysis", "SweepConfig", "SweepResult", "TemplateCell", "analysis_names", "cell_id", "derive_seed", "dumps_toml",
    "expand", "failed_cells_text", "from_dict", "get_analysis", "load_config", "plan_tasks", "register_analysis", "rerun", "run_sweep",
]
