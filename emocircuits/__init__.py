"""emocircuits: find and manipulate how language models represent and express emotion.

Quick start::

    import emocircuits as ec
    model, spec = ec.load_model("default")

Every name below loads its module on first use, so ``import emocircuits`` (and the command line's
``--help``) costs no torch import. The folders are the layers: ``base``, ``data``, ``core``, ``runs``,
``viz``, ``judges``, ``methods``, ``jobs``, ``sweeps``, ``cli``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_NAMES = {
    "core.components": ("Circuit", "Direction"),
    "core.units": ("HeadSet", "NeuronSet", "SublayerSet"),
    "data": ("EKMAN6", "Dataset", "Example", "load_data"),
    "base.errors": ("EmocircuitsError",),
    "core.generation": ("generate",),
    "core.interventions": ("AddDirection", "AddToHeads", "AddToNeurons", "Compose", "Intervention", "Noise",
                           "PatchFrom", "ScaleHeads", "ScaleNeurons", "ScaleSite", "ZeroHeads", "ZeroNeurons",
                           "batch_context", "capture", "observe"),
    "core.models": ("ModelSpec", "load_model", "spec_of", "tiny_model"),
    "core.readout": ("LabelReadout", "classify"),
    "sweeps.rerun": ("rerun",),
}
_HOME = {name: module for module, names in _NAMES.items() for name in names}
_SUBMODULES = {
    "neurons": "methods.neurons", "circuits": "methods.circuits", "inference": "methods.inference",
    "heads": "methods.heads", "tokenviews": "methods.tokenviews", "judges": "judges", "viz": "viz",
    "sweeps": "sweeps", "runs": "runs", "jobs": "jobs", "data": "data", "sites": "core.sites",
    "interventions": "core.interventions", "prompts": "core.prompts", "readout": "core.readout",
    "runner": "core.runner", "generation": "core.generation", "components": "core.components",
    "models": "core.models", "stats": "base.stats",
}
"""``ec.<name>`` → the module it names (``ec.neurons`` is ``emocircuits.methods.neurons``)."""


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(f"emocircuits.{_HOME[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"emocircuits.{_SUBMODULES[name]}")
    else:
        raise AttributeError(f"module 'emocircuits' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME, *_SUBMODULES])


__all__ = sorted(_HOME)
