"""emocircuits: find and manipulate how language models represent and express emotion.

Quick start::

    import emocircuits as ec
    model, spec = ec.load_model("default")
"""

from emocircuits.components import HeadSet, NeuronSet
from emocircuits.errors import EmocircuitsError
from emocircuits.interventions import (
    AddDirection,
    Compose,
    Intervention,
    MultiplyNeuronsPerRow,
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

__version__ = "0.1.0"

__all__ = [
    "AddDirection", "Compose", "EmocircuitsError", "HeadSet", "Intervention", "ModelSpec", "MultiplyNeuronsPerRow",
    "NeuronSet", "Noise", "PatchFrom", "ScaleHeads", "ScaleNeurons", "ScaleSite", "ZeroHeads", "ZeroNeurons",
    "batch_context", "capture", "load_model", "observe", "spec_of", "tiny_model",
]
