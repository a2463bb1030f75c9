"""Emotion neurons (Lee et al. 2025): statistics, selection, masking.

    stats = ec.neurons.collect(model, train); sel = stats.select(top_rate=0.01)
"""

from emocircuits.methods.neurons.find import (  # noqa: F401
    ASSIGN_MODES,
    RATIO_MODES,
    STABILITY_CHUNKS,
    TOKEN_MODES,
    Condition,
    NeuronStats,
    Selection,
    collect,
    condition_set,
    entropy,
    normalise,
    random_control,
    select_neurons,
    selection_stability,
    text_spans,
    tie_summary,
)
from emocircuits.methods.neurons.masking import (  # noqa: F401
    MASK_METRICS,
    SWEEP_AXES,
    MaskingEngine,
    MaskResult,
    mask,
    sweep,
    sweep_row,
)
