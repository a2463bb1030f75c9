"""The sweep engine: expand a config into cells, run the missing ones, store each as it finishes."""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emocircuits.base.errors import EmocircuitsError, spell
from emocircuits.base.io import atomic_path
from emocircuits.runs.rundir import MANIFEST, open_run, read_manifest
from emocircuits.sweeps.base import cell_dict, cell_id
from emocircuits.sweeps.config import EXECUTORS, SweepConfig, as_dict
from emocircuits.sweeps.executors import make_executor
from emocircuits.sweeps.registry import expand, from_dict, get_analysis, load_config
from emocircuits.sweeps.store import RESERVED, RESULTS, CellStore

COMMAND = "sweep"


@dataclass
class SweepResult:
    """What ``run_sweep`` did: ``table`` is ``results.parquet`` (one row per cell, grid order)."""

    out: Path
    table: Any
    n_cells: int
    n_run: int
    n_failed: int
    seconds: float

    @property
    def n_failed_total(self) -> int:
        """Failed cells in the whole table (this run and earlier ones)."""
        return int((self.table["status"] == "failed").sum()) if "status" in self.table else 0

    def summary(self) -> dict[str, Any]:
        """``out, n_cells, n_run, n_failed, seconds``: what the CLI prints."""
        return {"out": str(self.out), "n_cells": self.n_cells, "n_run": self.n_run, "n_failed": self.n_failed_total,
                "seconds": round(self.seconds, 2)}


def plan_tasks(cfg: SweepConfig, cells: list[Any], ids: list[str], done: set[str]) -> list[list[dict[str, Any]]]:
    """Group the cells still to run, in grid order, into tasks of ``cells_per_task`` cells."""
    analysis = get_analysis(cfg.analysis)
    size = cfg.sweep.cells_per_task or analysis.default_cells_per_task
    todo = [{"index": i, "cell_id": cid, "cell": cell_dict(c)}
            for i, (c, cid) in enumerate(zip(cells, ids, strict=True)) if cid not in done]
    return [todo[i:i + size] for i in range(0, len(todo), size)]


def precheck(cfg: SweepConfig, spec: dict[str, Any], tasks: list[list[dict[str, Any]]]
             ) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Check every cell against the loaded model's spec before any runs: ``(tasks left, failed outcomes)``.

    A cell the analysis rejects (e.g. a layer outside the model) is recorded as failed with its sentence
    (its ``worker`` is ``"precheck"``: it never reached a worker).
    """
    import traceback

    analysis = get_analysis(cfg.analysis)
    kept, failed = [], []
    for task in tasks:
        ok = []
        for entry in task:
            try:
                analysis.check_cell(cfg, spec, analysis.Cell(**entry["cell"]))
            except EmocircuitsError as exc:
                tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                failed.append({**entry, "status": "failed", "metrics": {}, "error": f"{type(exc).__name__}: {exc}",
                               "traceback": tb, "seconds": 0.0, "worker": "precheck"})
                continue
            ok.append(entry)
        if ok:
            kept.append(ok)
    return kept, failed


def failed_cells_text(table: Any) -> str:
    """The failed cells of a results table, one line each: ``cell_index {axis=value ...}: error`` ("" if none)."""

    if table is None or table.empty or "status" not in table:
        return ""
    bad = table[table["status"] == "failed"]
    if bad.empty:
        return ""
    metrics_start = list(table.columns).index("error") + 1 if "error" in table.columns else len(table.columns)
    axes = [c for c in table.columns[:metrics_start] if c not in RESERVED]
    lines = [f"{len(bad)} of {len(table)} cells failed:"]
    for _, row in bad.iterrows():
        where = " ".join(f"{a}={row[a]!r}" for a in axes)
        lines.append(f"  cell {row['cell_index']} ({where}): {row['error']}")
    return "\n".join(lines)


def _check_resumable(out: Path, cfg: SweepConfig) -> None:
    manifest = read_manifest(out)
    if manifest.get("command") != COMMAND:
        raise EmocircuitsError(f"{str(out)!r} holds a {manifest.get('command')!r} run, not a sweep; choose another --out.")
    old = from_dict(manifest["config"]).identity()
    new = cfg.identity()
    for section in ("analysis", "seed", "model", "data", "params"):
        if old[section] != new[section]:
            if isinstance(new[section], dict):
                key = next(k for k in sorted(set(old[section]) | set(new[section]))
                           if old[section].get(k) != new[section].get(k))
                name = {"params": "analysis"}.get(section, section)
                raise EmocircuitsError(
                    f"Cannot resume {str(out)!r}: key '{name}.{key}' was {old[section].get(key)!r} there but is "
                    f"{new[section].get(key)!r} now; only [grid] and [executor] may change on resume.")
            raise EmocircuitsError(f"Cannot resume {str(out)!r}: '{section}' was {old[section]!r} there but is "
                                   f"{new[section]!r} now; only [grid] and [executor] may change on resume.")


def run_sweep(
    config: SweepConfig | Mapping[str, Any] | str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    executor: str | None = None,
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
) -> SweepResult:
    """Run (or with ``resume`` continue) a sweep into the run directory ``out``; ``config``: a parsed config,
    its dict (the content of a sweep TOML) or a TOML path.

    Cells already stored in ``out/cells`` are skipped on resume (failed ones are retried); each finished
    cell is written atomically and ``results.parquet`` rebuilt at once, so a killed sweep loses at most
    the tasks in flight. ``executor``/``workers``/``address`` override the config's ``[executor]``.
    """
    t0 = time.perf_counter()
    if isinstance(config, SweepConfig):
        cfg = config
    else:
        cfg = from_dict(config) if isinstance(config, Mapping) else load_config(config)
    if executor is not None and executor not in EXECUTORS:
        raise EmocircuitsError(f"{spell('executor', '--executor')} {executor!r} is not valid; use one of "
                               f"{', '.join(EXECUTORS)}.")
    cfg = cfg.with_executor(kind=executor, workers=workers, address=address)
    for note in cfg.preset_notes:  # the preset, printed at the start as the commands' --preset is
        print(note, file=sys.stderr)
    preset = {"name": cfg.sweep.preset, "settings": cfg.preset_settings} if cfg.sweep.preset else None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EmocircuitsError(f"--out {str(out)!r} exists and is not a directory; choose another --out.")
    store = CellStore(out)
    has_run = (out / MANIFEST).exists()
    if has_run and not resume:
        other = read_manifest(out).get("command")
        if other != COMMAND:
            raise EmocircuitsError(f"--out {str(out)!r} already holds a {other or 'damaged'!r} run, not a 'sweep' run; "
                                   "choose another --out so that run is kept.")
        raise EmocircuitsError(f"{str(out)!r} already holds a sweep; pass --resume to continue it or choose another --out.")
    if has_run:
        _check_resumable(out, cfg)
    analysis = get_analysis(cfg.analysis)
    cells = expand(cfg)
    ident = cfg.identity_hash()
    ids = [cell_id(ident, c) for c in cells]
    store.clean_temporaries()
    existing = store.load() if resume else {}
    wanted = set(ids)
    records = {cid: rec for cid, rec in existing.items() if cid in wanted and rec.get("status") == "ok"}
    done = set(records)
    tasks = plan_tasks(cfg, cells, ids, done)
    n_failed = 0
    n_run = 0
    from tqdm.auto import tqdm

    with open_run(out, command=COMMAND, config=cfg.to_dict(with_executor=False), seed=cfg.seed, resume=resume) as run:
        run.update(sweep={"analysis": cfg.analysis, "n_cells": len(cells), "identity_hash": ident,
                          "executor": as_dict(cfg.executor), "n_cells_done_at_start": len(done)})
        if preset:
            run.update(preset=preset)
        _write_text(out / "sweep.toml", cfg.to_toml())
        store.write_results(records, ids)
        if tasks:
            shared = analysis.setup(cfg, out, progress=progress)
            ex = make_executor(cfg, shared, progress=progress)
            try:
                spec = ex.model_spec or {}
                run.update(model=spec, dtype=spec.get("dtype"), device=spec.get("device"))
                tasks, rejected = precheck(cfg, spec, tasks)
                bar = tqdm(total=len(cells), initial=len(done), desc=f"sweep {cfg.analysis}", unit="cell",
                           disable=not progress, dynamic_ncols=True)
                for outcomes in itertools.chain([rejected] if rejected else [], ex.iterate(tasks)):
                    for o in outcomes:
                        arrays = o.pop("arrays", None)
                        if preset:  # each cell's record names the preset it ran under
                            o["preset"] = preset
                        store.write(o, arrays)
                        records[o["cell_id"]] = o
                        done.add(o["cell_id"])
                        n_run += 1
                        n_failed += o["status"] == "failed"
                        bar.update(1)
                    store.write_results(records, ids)
                    if n_failed:
                        bar.set_postfix(failed=n_failed)
                bar.close()
            finally:
                ex.close()
        store.write_results(records, ids)
        table = store.read_results()
        files = dict(run.manifest["files"])
        files[RESULTS] = {"kind": "parquet", "description": "one row per cell: config columns, status, error, metrics"}
        files["sweep.toml"] = {"kind": "toml", "description": "the resolved sweep config"}
        files["cells/"] = {"kind": "json", "description": "one JSON record per finished cell (source of results)"}
        run.update(files=files, summary={"n_cells": len(cells), "n_ok": int((table["status"] == "ok").sum()),
                                         "n_failed": int((table["status"] == "failed").sum()),
                                         "n_run_this_time": n_run, "seconds": round(time.perf_counter() - t0, 3)})
    return SweepResult(out, table, len(cells), n_run, n_failed, time.perf_counter() - t0)


def _write_text(path: Path, text: str) -> None:

    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _rerun_sweep(config: dict[str, Any], out: Path) -> SweepResult:
    """Re-create a sweep from its manifest's config (locally, in this process)."""
    return run_sweep(from_dict(config), out, progress=True)



__all__ = ["SweepResult", "failed_cells_text", "plan_tasks", "precheck", "run_sweep"]
