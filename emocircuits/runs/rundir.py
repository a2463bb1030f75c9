"""Run directories: the only place results are written.

A run directory holds ``manifest.json`` (command, full config, model spec with weights hash, dtype,
device, seed, package versions, start/end times, status, and the list of files written), tables as
Parquet, tensors as safetensors, and small JSON documents. Every write is atomic: data goes to a
temporary file in the same directory, is flushed and fsynced, then renamed over the target, so a
killed process leaves the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import tempfile
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

    A run is written aside and swapped in at the end (``staged=True``, the default): the files go to a
    hidden folder beside ``path`` and replace ``path`` only when the run completes, so a new run into an
    existing run folder never mixes its files with the old run's, and the manifest lists exactly the run's
    files. On a refusal (:class:`EmocircuitsError`) ``path`` is left exactly as it was. On another
    exception an existing run is kept as it was; a new ``path`` receives the files written so far with a
    ``failed`` manifest (for diagnosis). ``staged=False`` (runs that write nested runs or are resumed
    in place: demo, sweeps) writes into ``path`` directly; a refusal then removes what it created.
    """

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest

    @classmethod
    @contextmanager
    def create(cls, path: Path | str, *, command: str, config: Mapping[str, Any], model_spec: Any = None,
               seed: int | None = None, overwrite: bool = True, staged: bool = True) -> Iterator[RunDir]:
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise EmocircuitsError(f"Output path {str(path)!r} exists and is not a directory; choose another --out.")
        if path.exists() and (path / MANIFEST).exists() and not overwrite:
            raise EmocircuitsError(f"Run directory {str(path)!r} already holds a run; choose another --out.")
        check_out_dir(path, command)
        existed = path.exists()
        created = _missing_parents(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if staged:
                work = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial-"))
            else:
                path.mkdir(exist_ok=True)
                work = path
        except OSError as exc:
            _remove_created(created)
            raise EmocircuitsError(f"--out {str(path)!r} cannot be created ({exc.strerror or type(exc).__name__}); "
                                   "choose a folder you can write to.") from exc
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
            "cwd": os.getcwd(),  # relative paths in ``config`` are relative to this folder (see rerun)
            "started": _now(),
            "finished": None,
            "status": "running",
            "files": {},
        }
        run = cls(work, manifest)
        try:
            run._flush()
            yield run
        except BaseException as exc:
            if isinstance(exc, EmocircuitsError) or (staged and existed):
                # a refusal, or a new run over an old one that did not finish: --out stays as it was
                if staged:
                    shutil.rmtree(work, ignore_errors=True)
                elif not existed:
                    shutil.rmtree(path, ignore_errors=True)
                if not existed:
                    _remove_created(created)
                if isinstance(exc, PermissionError | OSError) and not isinstance(exc, EmocircuitsError):
                    raise _unwritable(path, exc) from exc
                raise
            manifest["status"] = "failed"
            manifest["error"] = f"{type(exc).__name__}: {exc}"
            manifest["finished"] = _now()
            with contextlib.suppress(OSError):
                run._flush()
                if staged:
                    os.replace(work, path) if not path.exists() else shutil.rmtree(work, ignore_errors=True)
            if isinstance(exc, OSError):
                raise _unwritable(path, exc) from exc
            raise
        manifest["status"] = "complete"
        manifest["finished"] = _now()
        run._flush()
        if staged:
            _swap_in(work, path)
        run.path = path

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


# The keys every manifest has, with their JSON types: the schema checked whenever a manifest is read.
MANIFEST_KEYS: dict[str, type | tuple[type, ...]] = {"command": str, "config": dict}


def resolve_paths(value: Any, cwd: Path | str | None) -> Any:
    """``value`` (a manifest's config) with each relative path that exists under ``cwd`` made absolute.

    A path is a string naming a file or folder (``runs/find``) or a data spec's path (``jsonl:data/x.jsonl``);
    it is resolved only when the file exists under ``cwd``, so other strings pass unchanged. This is what
    lets ``rerun`` replay a run made with relative paths from any working folder.
    """
    if cwd is None:
        return value
    base = Path(cwd)
    if isinstance(value, Mapping):
        return {k: resolve_paths(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_paths(v, base) for v in value]
    if not isinstance(value, str) or not value or len(value) > 4096:
        return value
    kind, sep, rest = value.partition(":")
    candidates = [("", value)] + ([(kind + sep, rest)] if sep and kind.isalpha() and len(kind) > 1 else [])
    for prefix, rel in candidates:
        if rel and not Path(rel).is_absolute() and not rel.startswith("~"):
            with contextlib.suppress(OSError, ValueError):
                if (base / rel).exists():
                    return prefix + str((base / rel).resolve())
    return value


def remake_advice(folder: Path | str) -> str:
    """Which command remakes the files of run directory ``folder`` (from its manifest, when readable)."""
    try:
        command = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8-sig")).get("command")
    except (OSError, ValueError, AttributeError):
        command = None
    if isinstance(command, str) and command:
        return f"re-create it with `emocircuits {command}`"
    return "re-create it with the emocircuits command that wrote it"


def _missing_parents(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet (innermost first), to undo on a refusal."""
    out = []
    p = path
    while not p.exists() and p != p.parent:
        out.append(p)
        p = p.parent
    return out


def _remove_created(created: list[Path]) -> None:
    for p in created:
        with contextlib.suppress(OSError):
            if p.is_dir():
                p.rmdir() if not any(p.iterdir()) else None


def _unwritable(path: Path, exc: OSError) -> EmocircuitsError:
    return EmocircuitsError(f"--out {str(path)!r} cannot be written ({exc.strerror or type(exc).__name__}); "
                            "choose a folder you can write to.")


def _swap_in(work: Path, path: Path) -> None:
    """Replace ``path`` by the finished run in ``work``: the old run moves aside, the new one in, the old goes."""
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
        os.rmdir(old)
        os.replace(path, old)
    try:
        os.replace(work, path)
    except OSError:
        if old is not None:
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(path: Path | str) -> dict[str, Any]:
    """The manifest of a run directory, checked against :data:`MANIFEST_KEYS`, or one sentence saying why not."""
    path = Path(path)
    file = path / MANIFEST if path.is_dir() else path
    if not file.exists():
        raise EmocircuitsError(f"{str(path)!r} is not a run directory (no {MANIFEST}); pass a directory an "
                               "emocircuits command wrote.")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise EmocircuitsError(f"{str(file)!r} is not valid JSON (line {exc.lineno}); the run directory is damaged, "
                               f"so {remake_advice(file.parent)}.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise EmocircuitsError(f"{str(file)!r} cannot be read ({type(exc).__name__}); the run directory is "
                               "damaged or not readable.") from exc
    if not isinstance(manifest, dict):
        raise EmocircuitsError(f"{str(file)!r} holds a JSON {type(manifest).__name__}, not a manifest object; the "
                               "run directory is damaged, so re-create it with the command that wrote it.")
    for key, kind in MANIFEST_KEYS.items():
        if not isinstance(manifest.get(key), kind):
            what = "has no" if key not in manifest else "has a damaged"
            raise EmocircuitsError(f"{str(file)!r} {what} {key!r} entry; the run directory is damaged, so "
                                   f"{remake_advice(file.parent)}.")
    return manifest


def read_table(file: Path | str) -> Any:
    """A Parquet table a run wrote, or one sentence naming the file, what is wrong and what remakes it."""
    import pandas as pd

    file = Path(file)
    if not file.is_file():
        raise EmocircuitsError(f"{str(file)!r} is missing from its run directory; {remake_advice(file.parent)}.")
    try:
        return pd.read_parquet(file)
    except Exception as exc:  # pyarrow raises several types for a truncated or hand-edited file
        raise EmocircuitsError(f"{str(file)!r} is not a readable Parquet table (truncated or damaged: "
                               f"{type(exc).__name__}); {remake_advice(file.parent)}.") from exc


def read_tensors(file: Path | str) -> dict[str, Any]:
    """The tensors of a safetensors file a run wrote, or one sentence naming the file and what remakes it."""
    from safetensors.torch import load_file

    file = Path(file)
    if not file.is_file():
        raise EmocircuitsError(f"{str(file)!r} is missing from its run directory; {remake_advice(file.parent)}.")
    try:
        return load_file(str(file))
    except Exception as exc:  # safetensors raises SafetensorError / OSError on a truncated header or body
        raise EmocircuitsError(f"{str(file)!r} is not a readable safetensors file (truncated or damaged: "
                               f"{type(exc).__name__}); {remake_advice(file.parent)}.") from exc


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
        with RunDir.create(path, command=command, config=config, model_spec=model_spec, seed=seed,
                           staged=False) as run:
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
