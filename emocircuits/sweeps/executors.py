"""Where the tasks of a sweep run: in this process, in local worker processes, or on Ray actors.

Every executor has the same shape: ``iterate(tasks)`` yields each task's outcomes as soon as the task
finishes (in completion order), and ``model_spec`` is the ModelSpec dict of a worker's model. A
worker prepares its state once (model load, tokenisation, clean pass) and then runs task after task.
An exception escaping a task is fatal (it means ``prepare`` failed); a failing cell is an outcome.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

from emocircuits.base.errors import EmocircuitsError
from emocircuits.sweeps.base import Analysis
from emocircuits.sweeps.registry import from_dict, get_analysis

Task = list[dict[str, Any]]  # [{"index", "cell_id", "cell"}], cells in grid order
Outcome = dict[str, Any]  # {"index", "cell_id", "cell", "status", "metrics", "error", "traceback", "seconds", "arrays"}


def execute_task(analysis: Analysis, state: Any, task: Task) -> list[Outcome]:
    """Run one task's cells with ``analysis.run``; a cell that raises becomes a ``failed`` outcome.

    When the whole batch raises, each cell is retried alone so the failure is pinned to its cell.
    """
    cells = [analysis.Cell(**t["cell"]) for t in task]
    t0 = time.perf_counter()
    try:
        results: list[Any] = list(analysis.run(state, cells))
        if len(results) != len(cells):
            raise RuntimeError(f"analysis {analysis.name!r} returned {len(results)} results for {len(cells)} cells")
    except Exception as exc:
        if len(cells) == 1:
            results = [exc]
        else:
            results = []
            for cell in cells:
                try:
                    results.extend(analysis.run(state, [cell]))
                except Exception as one:
                    results.append(one)
    seconds = (time.perf_counter() - t0) / max(len(cells), 1)
    out = []
    for t, res in zip(task, results, strict=True):
        rec: Outcome = {"index": t["index"], "cell_id": t["cell_id"], "cell": t["cell"], "seconds": seconds,
                        "worker": f"{os.uname().nodename}:{os.getpid()}"}
        if isinstance(res, BaseException):
            tb = "".join(traceback.format_exception(type(res), res, res.__traceback__))
            rec.update(status="failed", metrics={}, error=f"{type(res).__name__}: {res}", traceback=tb, arrays=None)
        else:
            metrics = dict(res)
            arrays = metrics.pop("__arrays__", None)
            rec.update(status="ok", metrics=_scalars(metrics), error=None, traceback=None, arrays=arrays)
        out.append(rec)
    return out


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics as JSON scalars (numpy numbers become Python numbers; lists/dicts become JSON strings)."""
    import json

    import numpy as np

    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, list | tuple | dict):
            v = json.dumps(v, sort_keys=True, default=float)
        out[k] = v
    return out


# ----------------------------------------------------------------------------- in this process


class InProcessExecutor:
    """Runs tasks one after another in this process (the default; shares this process' model cache)."""

    def __init__(self, cfg: Any, shared: dict[str, Any], *, progress: bool = True) -> None:
        self.analysis = get_analysis(cfg.analysis)
        self.state = self.analysis.prepare(cfg, shared, progress=progress)
        self.model_spec = self.analysis.model_spec(self.state)

    def iterate(self, tasks: Sequence[Task]) -> Iterator[list[Outcome]]:
        for task in tasks:
            yield execute_task(self.analysis, self.state, task)

    def close(self) -> None:
        self.state = None


# ----------------------------------------------------------------------------- local worker processes

_WORKER: dict[str, Any] = {}


def _pool_init(cfg_dict: dict[str, Any], shared: dict[str, Any], threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER.update(cfg_dict=cfg_dict, shared=shared)


def _pool_state() -> tuple[Analysis, Any]:
    if "state" not in _WORKER:

        cfg = from_dict(_WORKER["cfg_dict"])
        analysis = get_analysis(cfg.analysis)
        _WORKER.update(analysis=analysis, state=analysis.prepare(cfg, _WORKER["shared"], progress=False))
    return _WORKER["analysis"], _WORKER["state"]


def _pool_run(task: Task) -> list[Outcome]:
    analysis, state = _pool_state()
    return execute_task(analysis, state, task)


def _pool_spec() -> dict[str, Any] | None:
    analysis, state = _pool_state()
    return analysis.model_spec(state)


class ProcessPoolExecutor:
    """``workers`` local processes (spawned), each holding one model; torch threads split between them."""

    def __init__(self, cfg: Any, shared: dict[str, Any], *, progress: bool = True) -> None:
        import concurrent.futures as cf
        import multiprocessing as mp

        n = cfg.executor.workers
        threads = max(1, (os.cpu_count() or 1) // n)
        self.pool = cf.ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"), initializer=_pool_init,
                                           initargs=(cfg.to_dict(), shared, threads))
        self.model_spec = self.pool.submit(_pool_spec).result()

    def iterate(self, tasks: Sequence[Task]) -> Iterator[list[Outcome]]:
        import concurrent.futures as cf

        futures = [self.pool.submit(_pool_run, t) for t in tasks]
        try:
            for fut in cf.as_completed(futures):
                yield fut.result()
        finally:
            for fut in futures:
                fut.cancel()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- Ray


class RayWorker:
    """The body of a Ray actor: prepares once (model load, tokenisation, clean pass), then runs tasks."""

    def __init__(self, cfg_dict: dict[str, Any], shared: dict[str, Any]) -> None:

        # An exception in an actor's __init__ reaches the driver without its type (ActorDiedError), so a
        # failed prepare is kept and re-raised by the first method call, where Ray preserves it.
        self.error: BaseException | None = None
        try:
            cfg = from_dict(cfg_dict)
            self.analysis = get_analysis(cfg.analysis)
            self.state = self.analysis.prepare(cfg, shared, progress=False)
        except Exception as exc:
            self.error = exc

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def spec(self) -> dict[str, Any] | None:
        self._check()
        return self.analysis.model_spec(self.state)

    def run(self, task: Task) -> list[Outcome]:
        self._check()
        return execute_task(self.analysis, self.state, task)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise EmocircuitsError("Key 'executor.kind' is 'ray' but Ray is not installed; run "
                               "`pip install 'emocircuits[ray]'` or use --executor local.") from None
    return ray


def _unwrap_ray(exc: BaseException) -> BaseException:
    """The user's exception inside Ray's wrappers (task errors, actors that died in ``__init__``)."""
    for _ in range(5):
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException):
            break
        exc = cause
    return exc


class RayExecutor:
    """One model-holding Ray actor per worker on an existing cluster (``address`` / ``RAY_ADDRESS``) or a
    local instance; tasks are handed to whichever actor is free."""

    def __init__(self, cfg: Any, shared: dict[str, Any], *, progress: bool = True) -> None:
        ray = _import_ray()
        self.ray = ray
        ex = cfg.executor
        self.started = False
        if not ray.is_initialized():
            address = ex.address or os.environ.get("RAY_ADDRESS") or None
            kwargs: dict[str, Any] = {"address": address, "log_to_driver": False}
            if address is None:
                kwargs.update(num_cpus=ex.workers * ex.cpus_per_worker, include_dashboard=False)
            ray.init(**kwargs)
            self.started = True
        remote = ray.remote(num_cpus=ex.cpus_per_worker, num_gpus=ex.gpus_per_worker)(RayWorker)
        self.actors = [remote.remote(cfg.to_dict(), shared) for _ in range(ex.workers)]
        try:
            self.model_spec = ray.get([a.spec.remote() for a in self.actors])[0]
        except Exception as exc:
            self.close()
            raise _unwrap_ray(exc) from None

    def iterate(self, tasks: Sequence[Task]) -> Iterator[list[Outcome]]:
        ray = self.ray
        queue = list(tasks)[::-1]
        pending: dict[Any, Any] = {}
        for actor in self.actors:
            if queue:
                pending[actor.run.remote(queue.pop())] = actor
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            actor = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:
                raise _unwrap_ray(exc) from None
            if queue:
                pending[actor.run.remote(queue.pop())] = actor
            yield result

    def close(self) -> None:
        for actor in getattr(self, "actors", []):
            try:
                self.ray.kill(actor)
            except Exception:
                pass
        self.actors = []
        if self.started:
            self.ray.shutdown()
            self.started = False


def make_executor(cfg: Any, shared: dict[str, Any], *, progress: bool = True) -> Any:
    """The executor the config names (``local`` with 1 worker runs in this process)."""
    if cfg.executor.kind == "ray":
        return RayExecutor(cfg, shared, progress=progress)
    if cfg.executor.workers > 1:
        return ProcessPoolExecutor(cfg, shared, progress=progress)
    return InProcessExecutor(cfg, shared, progress=progress)
