"""Run directories: the only place results are written.

A run directory holds ``manifest.json`` (command, full config, model spec with weights hash, dtype,
device, seed, package versions, start/end times, status, and the list of files written), tables as
Parquet, tensors as safetensors, and small JSON documents. Every write is atomic: data goes to a
temporary file in the same directory, is flushed and fsynced, then renamed over the target, so a
killed process leaves the old file or the new one, never a torn one.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.io import write_json, write_table, write_tensors

MANIFEST = "manifest.json"


SCHEMA_VERSION = 1


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("emocircuits", "torch", "transformer-lens", "transformers", "numpy", "pandas"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def check_out_dir(path: Path | str, command: str) -> None:
    """Refuse to write a ``command`` run into ``path`` when that would orphan or mix with other files.

    Allowed: a missing or empty directory, or one holding a run of the same ``command`` (re-running it
    replaces its files, as before). Refused, before anything is written: a directory holding another
    command's run, or files that are not a run at all (hidden files such as ``.DS_Store`` are ignored).
    """
    path = Path(path)
    if not path.is_dir():
        return
    if (path / MANIFEST).exists():
        try:
            other = json.loads((path / MANIFEST).read_text()).get("command")
        except (json.JSONDecodeError, AttributeError):
            other = None
        if other != command:
            raise EmocircuitsError(f"--out {str(path)!r} already holds a {other or 'damaged'!r} run, not a "
                                   f"{command!r} run; choose another --out so that run is kept.")
        return
    visible = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    if visible:
        shown = ", ".join(visible[:3]) + (", ..." if len(visible) > 3 else "")
        raise EmocircuitsError(f"--out {str(path)!r} is not empty and holds no emocircuits run ({shown}); "
                               "choose a new or empty directory for --out.")


class RunDir:
    """A run directory being written. Use ``RunDir.create(...)`` as a context manager::

        with RunDir.create(out, command="classify", config=cfg, model_spec=spec, seed=0) as run:
            run.write_table("predictions", df)
            run.write_json("metrics", metrics)

    On normal exit the manifest's status becomes ``complete``; on an exception ``failed`` with the
    error, and the files already written stay.
    """

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest

    @classmethod
    @contextmanager
    def create(cls, path: Path | str, *, command: str, config: Mapping[str, Any], model_spec: Any = None,
               seed: int | None = None, overwrite: bool = True) -> Iterator[RunDir]:
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise EmocircuitsError(f"Output path {str(path)!r} exists and is not a directory; choose another --out.")
        if path.exists() and (path / MANIFEST).exists() and not overwrite:
            raise EmocircuitsError(f"Run directory {str(path)!r} already holds a run; choose another --out.")
        check_out_dir(path, command)
        path.mkdir(parents=True, exist_ok=True)
        spec = model_spec.to_dict() if hasattr(model_spec, "to_dict") else model_spec
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "command": command,
            "config": dict(config),
            "model": spec,
            "dtype": (spec or {}).get("dtype"),
            "device": (spec or {}).get("device"),
            "seed": seed,
            "versions": package_versions(),
            "host": platform.node(),
            "started": _now(),
            "finished": None,
            "status": "running",
            "files": {},
        }
        run = cls(path, manifest)
        run._flush()
        try:
            yield run
        except BaseException as exc:
            manifest["status"] = "failed"
            manifest["error"] = f"{type(exc).__name__}: {exc}"
            manifest["finished"] = _now()
            run._flush()
            raise
        manifest["status"] = "complete"
        manifest["finished"] = _now()
        run._flush()

    def _flush(self) -> None:
        write_json(self.path / MANIFEST, self.manifest)

    def _record(self, name: str, kind: str, description: str = "") -> Path:
        self.manifest["files"][name] = {"kind": kind, "description": description}
        self._flush()
        return self.path / name

    def write_json(self, name: str, data: Any, description: str = "") -> Path:
        path = self.path / f"{name}.json"
        write_json(path, data)
        return self._record(path.name, "json", description)

    def write_table(self, name: str, frame: Any, description: str = "") -> Path:
        path = self.path / f"{name}.parquet"
        write_table(path, frame)
        return self._record(path.name, "parquet", description)

    def write_tensors(self, name: str, tensors: Mapping[str, Any], description: str = "") -> Path:
        path = self.path / f"{name}.safetensors"
        write_tensors(path, tensors)
        return self._record(path.name, "safetensors", description)

    def update(self, **fields: Any) -> None:
        """Add top-level fields (e.g. summary numbers) to the manifest."""
        self.manifest.update(fields)
        self._flush()


def read_manifest(path: Path | str) -> dict[str, Any]:
    """The manifest of a run directory, or one sentence saying why it cannot be read."""
    path = Path(path)
    file = path / MANIFEST if path.is_dir() else path
    if not file.exists():
        raise EmocircuitsError(f"{str(path)!r} is not a run directory (no {MANIFEST}); pass a directory an "
                               "emocircuits command wrote.")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise EmocircuitsError(f"{str(file)!r} is not valid JSON (line {exc.lineno}); the run directory is damaged.") from exc


def finished_run(path: Path | str, need: str, command: str) -> dict[str, Any]:
    """The manifest of an earlier run of ``emocircuits <command>`` that holds file ``need``; one sentence if not."""
    manifest = read_manifest(path)
    if manifest.get("command") != command or not (Path(path) / need).exists():
        raise EmocircuitsError(f"{str(path)!r} is not a finished `emocircuits {command}` run (no {need}); "
                               f"pass the --out directory of `emocircuits {command}`.")
    return manifest


@contextmanager
def open_run(path: Path | str, *, command: str, config: Mapping[str, Any], model_spec: Any = None,
             seed: int | None = None, resume: bool = False) -> Iterator[RunDir]:
    """Like ``RunDir.create``, but with ``resume`` an existing run directory is continued.

    A resumed manifest keeps its original ``started`` time and gains ``resumed: [times]``; its
    ``config`` is replaced by ``config`` (the caller checks the two are compatible). Without an
    existing manifest ``resume`` simply starts a new run.
    """
    path = Path(path)
    if not (resume and (path / MANIFEST).exists()):
        with RunDir.create(path, command=command, config=config, model_spec=model_spec, seed=seed) as run:
            yield run
        return
    manifest = read_manifest(path)
    if manifest.get("command") != command:
        raise EmocircuitsError(f"{str(path)!r} holds a {manifest.get('command')!r} run, not {command!r}; "
                               "choose another --out.")
    manifest.update(config=dict(config), seed=seed, status="running", finished=None, versions=package_versions())
    manifest.pop("error", None)
    manifest.setdefault("resumed", []).append(_now())
    if model_spec is not None:
        spec = model_spec.to_dict() if hasattr(model_spec, "to_dict") else model_spec
        manifest.update(model=spec, dtype=spec.get("dtype"), device=spec.get("device"))
    run = RunDir(path, manifest)
    run._flush()
    try:
        yield run
    except BaseException as exc:
        manifest.update(status="failed", error=f"{type(exc).__name__}: {exc}", finished=_now())
        run._flush()
        raise
    manifest.update(status="complete", finished=_now())
    run._flush()
