"""emocircuits: find and manipulate how language models represent and express emotion.

Quick start::

    import emocircuits as ec
    model, spec = ec.load_model("default")
"""

from emocircuits.components import Circuit, Direction, HeadSet, NeuronSet, SublayerSet
from emocircuits.data import EKMAN6, Dataset, Example, load_data
from emocircuits.errors import EmocircuitsError
from emocircuits.generation import generate
from emocircuits.interventions import (
    AddDirection,
    AddToHeads,
    AddToNeurons,
    Compose,
    Intervention,
    Noise,
    PatchFrom,
    ScaleHeads,
    ScaleNeurons,
    ScaleSite,
    ZeroHeads,
    ZeroNeurons,
    batch_context,
    capture,
    observe,
)
from emocircuits.models import ModelSpec, load_model, spec_of, tiny_model
from emocircuits.readout import LabelReadout, classify

__version__ = "0.1.0"

_SUBMODULES = ("neurons", "viz", "sweeps", "runs", "sites", "interventions", "prompts", "readout", "data",
               "tokenviews", "runner", "generation", "judges", "components", "circuits",
               "inference", "appraisal_theory", "heads", "jobs", "circuit_build", "steering")


def __getattr__(name: str):  # lazy submodules: `ec.neurons`, `ec.viz` import on first use
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"emocircuits.{name}")
    raise AttributeError(f"module 'emocircuits' has no attribute {name!r}")

__all__ = [
    "AddToHeads", "AddToNeurons", "Circuit", "Direction", "SublayerSet", "generate", "AddDirection", "Compose", "EmocircuitsError", "HeadSet", "Intervention", "ModelSpec",
    "NeuronSet", "Noise", "PatchFrom", "ScaleHeads", "ScaleNeurons", "ScaleSite", "ZeroHeads", "ZeroNeurons",
    "batch_context", "capture", "load_model", "observe", "spec_of", "tiny_model", "EKMAN6", "Dataset", "Example",
    "load_data", "LabelReadout", "classify",
]
