"""Re-create any run from its manifest: the one table of re-runnable commands (jobs and sweeps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emocircuits.base.errors import EmocircuitsError
from emocircuits.jobs.registry import JOBS, JobFn
from emocircuits.runs.rundir import read_manifest, resolve_paths
from emocircuits.sweeps.analyses.neuron_masking import rq3_config
from emocircuits.sweeps.engine import COMMAND, _rerun_sweep, run_sweep


def _sweep_jobs() -> dict[str, JobFn]:
    return {COMMAND: _rerun_sweep, "neurons sweep": rerun_neurons_sweep}


def registered_commands() -> list[str]:
    """Commands ``rerun`` can re-create."""
    return sorted({**JOBS, **_sweep_jobs()})


def rerun(path: Path | str, out: Path | str) -> Any:
    """Re-create the run in ``path`` from its manifest alone, writing a new run to ``out``.

    Looks up the manifest's ``command`` among the jobs (:data:`emocircuits.jobs.registry.JOBS`) and the
    sweeps and calls it with the manifest's ``config``; returns what that function returns.
    """
    manifest = read_manifest(path)
    command = manifest.get("command")
    table = {**JOBS, **_sweep_jobs()}
    if command not in table:
        raise EmocircuitsError(f"Cannot re-run command {command!r} from {str(path)!r}; re-runnable commands: "
                               f"{', '.join(sorted(table))}.")
    out = Path(out)
    if out.resolve() == Path(path).resolve():
        raise EmocircuitsError("rerun needs a new --out directory; it never overwrites the original run.")
    if "config" not in manifest:
        raise EmocircuitsError(f"The manifest in {str(path)!r} has no 'config'; it cannot be re-run.")
    return table[command](resolve_paths(dict(manifest["config"]), manifest.get("cwd")), out)


def rerun_neurons_sweep(config: dict[str, Any], out: Path) -> Any:
    """Re-run a manifest of the old ``neurons sweep`` command through the sweep engine (``neuron_masking``)."""
    cfg = rq3_config(neurons=config["neurons"], model=config["model"], data=config["data"], split=config["split"],
                     limit_per_label=config.get("limit_per_label"), template=config["template"],
                     ratios=config["ratios"], layer_ranges=config["layer_ranges"], ratio_mode=config["ratio_mode"],
                     controls=config["controls"], seed=config["seed"], dtype=config.get("dtype", "float32"),
                     emotions=config.get("emotions") or None)
    return run_sweep(cfg, out, progress=False)
