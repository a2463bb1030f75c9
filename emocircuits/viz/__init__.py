"""Visualisations: pure functions from results to plotly figures or CircuitsVis token views, and the
self-contained HTML report. Nothing here runs a model (see :mod:`emocircuits.methods.tokenviews` for that).

    import emocircuits as ec
    ec.viz.layer_distribution(selection)          # Fig. 1 of Lee et al. (2025)
    ec.viz.write_report(["runs/demo"], "report.html")
"""

from emocircuits.viz.colors import EMOTION_COLORS, EMOTIONS, FALLBACK_PALETTE, color_map, order_labels
from emocircuits.viz.figures import (
    accuracy_change_heatmap,
    layer_distribution,
    layer_range_sweep,
    masking_accuracy,
    misclassification_heatmap,
    neuron_sets_table,
    overlap_heatmap,
    overlap_table,
    ratio_sweep,
)
from emocircuits.viz.report import Report, build_report, write_report
from emocircuits.viz.tokens import TokenView, attention_heads, circuitsvis_js, neuron_set_tokens, top_examples

__all__ = [
    "EMOTIONS", "EMOTION_COLORS", "FALLBACK_PALETTE", "Report", "TokenView", "accuracy_change_heatmap",
    "attention_heads", "build_report", "circuitsvis_js", "color_map", "layer_distribution", "layer_range_sweep",
    "masking_accuracy", "misclassification_heatmap", "neuron_set_tokens", "neuron_sets_table", "order_labels",
    "overlap_heatmap", "overlap_table", "ratio_sweep", "top_examples", "write_report",
]
