"""Artifacts: what a sweep computes once, in the driver, and every worker loads.

Declared as ``[analysis.artifacts.NAME]`` tables with a ``kind``; interventions refer to them as
``"@NAME"`` or ``"@NAME:KEY"`` (KEY: an emotion label, usually ``{emotion}``)::

    kind         keys (defaults)                                   holds; @NAME:KEY gives
    -----------  ------------------------------------------------  ----------------------------------------
    neurons      split="train", limit_per_label=0, reading="gated",  the LAPE selection and statistics;
                 tokens="all", top_rate=0.01, assign="argmax"        KEY's NeuronSet
    direction    split="train", limit_per_label=0,                   one Direction per label: mean last-token
                 site="resid.post", layers="all", unit=true          activation of its texts − mean of the rest
    activations  site="resid.post", layers="all",                    last-token activations of the evaluated
                 pair="other_label"                                  texts, row i taken from a seeded partner
                                                                     (other_label | same_label | shuffle);
                                                                     the PatchFrom source of every layer
    file         path                                                a component saved with ``.save(path)``
                                                                     (NeuronSet, HeadSet, SublayerSet, Direction,
                                                                     Circuit), a ``neurons.json`` or a stored
                                                                     artifact folder of another sweep

Computed artifacts are stored in ``DIR/artifacts/<NAME>-<hash>/`` (``artifact.json`` is written last and
marks the folder complete). The hash covers what made the artifact: its table, the model spec and dtype,
the data spec, labels and template, and the sweep seed. ``setup`` reuses a complete folder with the same
hash (a resumed or grown sweep never recomputes it) and otherwise computes it with the driver's model.
Workers receive the folder's files as bytes, so Ray actors on other machines need no shared disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.io import write_json, write_tensors
from emocircuits.base.seeds import derive_seed
from emocircuits.core.components import Direction, from_dict
from emocircuits.core.readout import LabelReadout
from emocircuits.core.sites import READINGS, check_layer_range, layer_range, site_info
from emocircuits.methods.neurons.find import ASSIGN_MODES, TOKEN_MODES, NeuronStats, Selection, collect
from emocircuits.sweeps.config import SPLITS, choice, from_mapping
from emocircuits.sweeps.shared import cached_model

ARTIFACT_DIR = "artifacts"
MARKER = "artifact.json"
PAIRINGS = ("other_label", "same_label", "shuffle")


@dataclass(frozen=True)
class NeuronFind:
    """How to find emotion neurons by LAPE statistics (emocircuits.methods.neurons): also ``[analysis.find]`` of
    ``neuron_masking``."""

    split: str = "train"
    limit_per_label: int = 0
    reading: str = "gated"
    tokens: str = "all"  # all | text | last (see emocircuits.methods.neurons)
    top_rate: float = 0.01
    assign: str = "argmax"


@dataclass(frozen=True)
class NeuronsArtifact(NeuronFind):
    """``kind = "neurons"``: emotion neurons found with :class:`NeuronFind`'s settings."""

    kind: str = "neurons"


@dataclass(frozen=True)
class DirectionArtifact:
    """``kind = "direction"``: per-label difference-of-means directions at a site's last token."""

    kind: str = "direction"
    split: str = "train"
    limit_per_label: int = 0
    site: str = "resid.post"
    layers: str = "all"
    unit: bool = True


@dataclass(frozen=True)
class ActivationsArtifact:
    """``kind = "activations"``: last-token activations of the evaluated texts, re-paired between texts."""

    kind: str = "activations"
    site: str = "resid.post"
    layers: str = "all"
    pair: str = "other_label"


@dataclass(frozen=True)
class FileArtifact:
    """``kind = "file"``: a saved component, a neurons.json / run directory, or another sweep's artifact folder."""

    kind: str = "file"
    path: str = ""


KINDS: dict[str, type] = {"neurons": NeuronsArtifact, "direction": DirectionArtifact,
                          "activations": ActivationsArtifact, "file": FileArtifact}


def parse_artifacts(tables: Mapping[str, Any], where: str = "analysis.artifacts") -> dict[str, Any]:
    """``{name: spec dataclass}`` from the ``[analysis.artifacts]`` tables; one sentence on a bad key or value."""

    out: dict[str, Any] = {}
    for name, table in tables.items():
        key = f"{where}.{name}"
        if not name.isidentifier():
            raise EmocircuitsError(f"Artifact name {key!r} is not valid; use letters, digits and underscores.")
        if not isinstance(table, Mapping) or "kind" not in table:
            raise EmocircuitsError(f"Artifact [{key}] needs a 'kind'; allowed kinds: {', '.join(KINDS)}.")
        choice(f"{key}.kind", table["kind"], tuple(KINDS))
        spec = from_mapping(KINDS[table["kind"]], table, key)
        if isinstance(spec, NeuronsArtifact | DirectionArtifact):
            choice(f"{key}.split", spec.split, SPLITS)
            if spec.limit_per_label < 0:
                raise EmocircuitsError(f"Key '{key}.limit_per_label' has value {spec.limit_per_label}; allowed: "
                                       "integers >= 0.")
        if isinstance(spec, NeuronsArtifact):
            choice(f"{key}.reading", spec.reading, tuple(READINGS))
            choice(f"{key}.tokens", spec.tokens, TOKEN_MODES)
            choice(f"{key}.assign", spec.assign, ASSIGN_MODES)
            if not 0 < spec.top_rate <= 1:
                raise EmocircuitsError(f"Key '{key}.top_rate' has value {spec.top_rate}; allowed: numbers in (0, 1].")
        if isinstance(spec, DirectionArtifact | ActivationsArtifact):
            try:
                site_info(spec.site)
            except EmocircuitsError as exc:
                raise EmocircuitsError(f"Key '{key}.site': {exc}") from None
            check_layer_range(spec.layers, f"{key}.layers")
        if isinstance(spec, ActivationsArtifact):
            choice(f"{key}.pair", spec.pair, PAIRINGS)
        if isinstance(spec, FileArtifact) and not Path(spec.path).exists():
            raise EmocircuitsError(f"Key '{key}.path' names {spec.path!r}, which does not exist; save the component "
                                   "there first (component.save(path)).")
        out[name] = spec
    return out


def artifact_hash(name: str, spec: Any, cfg: Any) -> str:
    """12 hex digits of sha256 over what makes the artifact (its table, model, data, template, seed)."""
    d = cfg.to_dict(with_executor=False)
    payload = {"name": name, "spec": dataclasses.asdict(spec), "model": {k: d["model"][k] for k in ("spec", "dtype")},
               "data": {k: d["data"][k] for k in ("spec", "labels", "template")}, "seed": cfg.seed}
    if isinstance(spec, ActivationsArtifact):  # computed on the evaluated texts themselves
        payload["data"] = d["data"]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- driver side


def prepare_artifacts(specs: Mapping[str, Any], cfg: Any, run_dir: Path, *, progress: bool = True
                      ) -> dict[str, dict[str, Any]]:
    """Load or compute every artifact in the driver; ``{name: {"kind", "folder", "files": {file: bytes}}}``."""
    out = {}
    for name, spec in specs.items():
        if isinstance(spec, FileArtifact):
            out[name] = read_artifact_path(Path(spec.path))
            continue
        folder = Path(run_dir) / ARTIFACT_DIR / f"{name}-{artifact_hash(name, spec, cfg)}"
        if not (folder / MARKER).is_file():
            _compute(name, spec, cfg, folder, progress=progress)
        out[name] = _read_folder(folder)
    return out


def _read_folder(folder: Path) -> dict[str, Any]:
    meta = json.loads((folder / MARKER).read_text())
    files = {f: (folder / f).read_bytes() for f in meta["files"]}
    return {"kind": meta["kind"], "folder": str(folder), "files": files}


def read_artifact_path(path: Path) -> dict[str, Any]:
    """A ``file`` artifact as ``{"kind", "folder", "files"}``: a stored artifact folder, a neurons.json or a
    run directory holding one, or a component saved with ``.save(path)``."""
    if path.is_dir() and (path / MARKER).is_file():
        return _read_folder(path)
    if path.is_dir() and (path / "neurons.json").is_file():  # a `neurons find` run / an older sweep directory
        files = {"neurons.json": (path / "neurons.json").read_bytes()}
        for name in ("neuron_stats.safetensors", "stats.safetensors"):
            if (path / name).is_file():
                files["neuron_stats.safetensors"] = (path / name).read_bytes()
                break
        return {"kind": "neurons", "folder": str(path), "files": files}
    if path.suffix == ".json" and path.is_file():
        doc = json.loads(path.read_text())
        if "neurons" in doc and "format" not in doc:  # a neurons.json
            return {"kind": "neurons", "folder": str(path.parent), "files": {"neurons.json": path.read_bytes()}}
    base = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    json_path, tensor_path = base.parent / f"{base.name}.json", base.parent / f"{base.name}.safetensors"
    if not json_path.is_file():
        raise EmocircuitsError(f"Artifact file {str(path)!r} is neither a saved component, a neurons.json nor an "
                               "artifact folder; save a component with .save(path).")
    files = {"component.json": json_path.read_bytes()}
    if tensor_path.is_file():
        files["component.safetensors"] = tensor_path.read_bytes()
    return {"kind": "component", "folder": str(path.parent), "files": files}


def _write_marker(folder: Path, name: str, spec: Any, files: list[str]) -> None:

    write_json(folder / MARKER, {"kind": spec.kind, "name": name, "spec": dataclasses.asdict(spec), "files": files})


def _split_data(cfg: Any, split: str, limit: int) -> Any:
    data = cfg.data.load(seed=cfg.seed, split=split)
    return data.limit_per_label(limit, seed=cfg.seed) if limit else data


def _compute(name: str, spec: Any, cfg: Any, folder: Path, *, progress: bool) -> None:

    model, model_spec = cached_model(cfg.model, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(spec, NeuronsArtifact):
        files = _compute_neurons(spec, cfg, model, folder, progress=progress)
    elif isinstance(spec, DirectionArtifact):
        files = _compute_directions(spec, cfg, model, model_spec, folder)
    else:
        files = _compute_activations(name, spec, cfg, model, model_spec, folder)
    _write_marker(folder, name, spec, files)


def _compute_neurons(spec: NeuronsArtifact, cfg: Any, model: Any, folder: Path, *, progress: bool) -> list[str]:

    train = _split_data(cfg, spec.split, spec.limit_per_label)
    stats = collect(model, train, reading=spec.reading, tokens=spec.tokens, template=cfg.data.template,
                    progress=progress)
    sel = stats.select(top_rate=spec.top_rate, assign=spec.assign)
    write_tensors(folder / "neuron_stats.safetensors", {"counts": stats.counts, "totals": stats.totals},
                  metadata={"labels": ",".join(stats.labels)})
    write_json(folder / "neurons.json", sel.to_json())
    return ["neurons.json", "neuron_stats.safetensors"]


def _encode(cfg: Any, model: Any, dataset: Any) -> tuple[Any, list[list[int]]]:

    readout = LabelReadout(model, dataset.labels, cfg.data.template)
    return readout, readout.encode(list(dataset))


def _compute_directions(spec: DirectionArtifact, cfg: Any, model: Any, model_spec: Any, folder: Path) -> list[str]:
    import torch

    data = _split_data(cfg, spec.split, spec.limit_per_label)
    readout, ids = _encode(cfg, model, data)
    layers = layer_range(model_spec.n_layers, spec.layers)
    acts = readout.runner.capture(ids, spec.site, layers)  # {layer: [n, d_model]}
    y = torch.tensor([data.labels.index(ex.label) for ex in data])
    files = []
    for j, lab in enumerate(data.labels):
        own, rest = y == j, y != j
        if not own.any() or not rest.any():
            raise EmocircuitsError(f"Direction artifact needs texts of {lab!r} and of other labels on the "
                                   f"{spec.split!r} split; raise limit_per_label or choose another split.")
        vectors = {layer: acts[layer][own].mean(0) - acts[layer][rest].mean(0) for layer in layers}
        d = Direction({spec.site: vectors}, lab, {"method": "difference of means", "site": spec.site,
                                                 "n_own": int(own.sum()), "n_rest": int(rest.sum())})
        d = d.unit() if spec.unit else d
        d.save(folder / lab)
        files += [f"{lab}.json", f"{lab}.safetensors"]
    return files


def pair_indices(labels: list[int], how: str, seed: int) -> list[int]:
    """For each row, the seeded partner row whose activation it receives (``other_label``: a text of another
    label; ``same_label``: another text of the same label, itself when alone; ``shuffle``: a permutation)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(labels)
    y = np.asarray(labels)
    if how == "shuffle":
        return [int(i) for i in rng.permutation(n)]
    out = []
    for i in range(n):
        pool = np.flatnonzero(y != y[i]) if how == "other_label" else np.setdiff1d(np.flatnonzero(y == y[i]), [i])
        out.append(int(rng.choice(pool)) if len(pool) else i)
    return out


def _compute_activations(name: str, spec: ActivationsArtifact, cfg: Any, model: Any, model_spec: Any,
                         folder: Path) -> list[str]:
    import torch

    data = cfg.data.load(seed=cfg.seed)
    readout, ids = _encode(cfg, model, data)
    layers = layer_range(model_spec.n_layers, spec.layers)
    acts = readout.runner.capture(ids, spec.site, layers)
    y = [data.labels.index(ex.label) for ex in data]
    pair = pair_indices(y, spec.pair, derive_seed(cfg.seed, "artifact", name, spec.pair))
    idx = torch.tensor(pair)
    tensors = {f"layer.{layer}": acts[layer][idx].contiguous() for layer in layers}
    tensors["pair"] = idx
    tensors["source_label"] = torch.tensor(y)[idx]
    write_tensors(folder / "activations.safetensors", tensors, metadata={"site": spec.site})
    return ["activations.safetensors"]


# ----------------------------------------------------------------------------- worker side


@dataclass
class Activations:
    """A loaded ``activations`` artifact: ``source[layer] [n, ...]`` (row i = partner ``pair[i]``'s value)."""

    site: str
    source: dict[int, Any]
    pair: Any
    source_label: Any


class Artifacts:
    """The artifacts of one worker, loaded from ``prepare_artifacts``' output; resolves ``@NAME[:KEY]``."""

    def __init__(self, shared: Mapping[str, Mapping[str, Any]]) -> None:
        self.raw = dict(shared)
        self._loaded: dict[str, Any] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.raw

    def load(self, name: str) -> Any:
        """The artifact object: ``(Selection, NeuronStats | None)``, ``{label: Direction}``, ``Activations``
        or a component."""
        if name not in self.raw:
            raise EmocircuitsError(f"Unknown artifact '@{name}'; declared artifacts: {', '.join(self.raw) or 'none'}.")
        if name not in self._loaded:
            self._loaded[name] = _load(self.raw[name])
        return self._loaded[name]

    def resolve(self, ref: str) -> Any:
        """``"@NAME"`` → the artifact; ``"@NAME:KEY"`` → its NeuronSet / Direction for label KEY."""
        name, _, key = ref.removeprefix("@").partition(":")
        obj = self.load(name)
        if not key:
            return obj
        if isinstance(obj, tuple):  # neurons: (Selection, stats)
            return obj[0][key]
        if isinstance(obj, dict):
            if key not in obj:
                raise EmocircuitsError(f"Artifact '@{name}' has no entry {key!r}; it has {', '.join(obj)}.")
            return obj[key]
        raise EmocircuitsError(f"Artifact '@{name}' holds one {type(obj).__name__}; refer to it as '@{name}' "
                               "without a ':KEY'.")


def _load(raw: Mapping[str, Any]) -> Any:
    from safetensors.torch import load as load_tensors

    files = raw["files"]
    kind = raw["kind"]
    if kind == "neurons":

        sel = Selection.from_json(json.loads(files["neurons.json"]))
        stats = None
        if "neuron_stats.safetensors" in files:
            t = load_tensors(files["neuron_stats.safetensors"])
            labels = _safetensors_metadata(files["neuron_stats.safetensors"]).get("labels", "")
            labels = tuple(labels.split(",")) if labels else sel.labels
            if t["counts"].shape[-1] != len(labels):
                raise EmocircuitsError(f"The neuron statistics count {t['counts'].shape[-1]} labels but the selection "
                                       f"has {len(labels)}; pass the statistics written with these neurons.")
            stats = NeuronStats(t["counts"], t["totals"], labels, {})
        return sel, stats
    if kind == "direction":

        out = {}
        for f in files:
            if f.endswith(".json"):
                lab = f.removesuffix(".json")
                out[lab] = Direction.from_dict(json.loads(files[f]), load_tensors(files[f"{lab}.safetensors"]))
        return out
    if kind == "activations":
        t = load_tensors(files["activations.safetensors"])
        site = _safetensors_metadata(files["activations.safetensors"]).get("site", "resid.post")
        source = {int(k.removeprefix("layer.")): v for k, v in t.items() if k.startswith("layer.")}
        return Activations(site, source, t["pair"], t["source_label"])

    tensors = load_tensors(files["component.safetensors"]) if "component.safetensors" in files else {}
    return from_dict(json.loads(files["component.json"]), tensors)


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` header of a safetensors file held in memory."""
    n = int.from_bytes(data[:8], "little")
    return dict(json.loads(data[8:8 + n]).get("__metadata__") or {})
