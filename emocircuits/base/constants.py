"""Every constant more than one module needs, spelled once (label sets, layer ranges, seeds, shares, grids).

Light on purpose (no torch, no pandas): the command line reads its defaults from here before any model loads.
"""

from __future__ import annotations

EKMAN6: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "sadness", "surprise")
"""Ekman's six basic emotions: the default label scheme."""
VALENCES: tuple[str, ...] = ("positive", "neutral", "negative")
"""The valences of the SEV scenarios (Wang et al. 2025)."""
LABEL_ALIASES: dict[str, str] = {"joy": "happiness", "happy": "happiness", "sad": "sadness", "angry": "anger"}
"""Label spellings mapped onto the scheme (only when the raw label is not itself in the scheme)."""

SPLIT_SEED = 20250
"""Seed of the stratified train/test split of data without its own split."""
TEST_SHARE = 0.05
"""Share of each label held out as test when a data set has no split of its own."""

LAYER_RANGES: tuple[str, ...] = ("bottom", "middle", "top", "all")
"""Named layer ranges: thirds of the layers, and all (Lee et al. 2025's RQ3)."""
SUBLAYER_SITES: dict[str, str] = {"attn": "attn.out", "mlp": "mlp.out"}
"""Where each kind of sublayer writes into the residual stream."""
PROBE_SITES: tuple[str, ...] = ("attn.out", "mlp.out", "resid.post")
"""Sites read by probes and patching (Tak et al. 2025)."""
KNOCKOUT_SITES: tuple[str, ...] = tuple(SUBLAYER_SITES.values())
"""Sites knocked out (whole sublayer outputs)."""

MASK_RATIOS: tuple[float, ...] = (0.01, 0.02, 0.03, 0.04, 0.05)
"""Masking ratios of the RQ3 sweep (Lee et al. 2025)."""
VALIDATION_SCALES: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
"""Ablation (0) and enhancement factors of the component validation (Wang et al. 2025)."""

FLUENCY_MAX_PPL_RATIO = 1.5
"""Fluency rule: steered replies' perplexity (under the unsteered model) at most this × the unsteered replies'."""
FLUENCY_MIN_DISTINCT2_RATIO = 0.9
"""Fluency rule: steered replies' distinct-2 at least this × the unsteered replies'."""
FLUENCY_MAX_EMPTY_RISE = 0.1
"""Fluency rule: the share of empty replies at most this much above the unsteered replies'."""
STRENGTH_GRIDS: dict[str, tuple[float, ...]] = {
    "alpha": (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
    "scale": (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
    "beta": (0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
}
"""Strengths tried by ``auto``, weakest first: residual ``α`` (× RMS of the residual; Wang et al. used 8 on an 8B
model), circuit ``s`` (× Δμ; the paper's 1) and Tak et al.'s ``β`` (norm of the added direction)."""
CALIBRATION_PROMPTS = 8
"""Prompts of the calibration split that ``auto`` strength generates on, per emotion and strength."""
STEER_SENTENCES = 2
"""Steered replies end after this many sentences (the steering system prompt asks for at most two)."""
STEER_MAX_NEW_TOKENS = 48
"""Token limit of a steered reply: with the two-sentence stop, every unsteered reply to the built-in test
prompts ends by itself (24 of 24 measured on the embedded model; 88% without the sentence stop at 96)."""

DEFAULT_CONTROLS = 5
"""Random control sets per masked set (size- and layer-matched)."""
LARGE_WORK = 100
"""A work multiplier (--controls, --n-random, --n-pairs) from which a command prints its planned work first."""
CHECKPOINT_MEMORY = 2 * 1024**3
"""Bytes the masking engine may spend on extra residual checkpoints (each masked pass's exact start layer)."""
KV_MEMORY = 2 * 1024**3
"""Bytes a runner may spend on stored clean keys/values (knockout, patching: only the changed tokens rerun)."""
FLOOR_ACC = 0.2
"""Below this clean accuracy on a label, masking cannot show a drop there (the table marks it ``floor``)."""
STABILITY_RESAMPLES = 20
"""Bootstrap resamples over texts for the neuron-selection stability table."""
PROBE_SEED = 42
"""Seed of the probes' splits and fits (Tak et al. 2025's public code uses 42)."""
PROBE_MAX_ITER = 2000
"""lbfgs iterations of the logistic emotion probe: enough to converge on raw or standardised activations here."""

DEFAULT_TEMPLATE = "chat_short"
"""The prompt template everywhere but ``classify``: the best-scoring shipped template on the embedded model
(docs/readout_study.md). Analyses that intervene per example (masking, steering, patching) read one prompt."""
DEFAULT_CLASSIFY_TEMPLATE = "chat_short+chat_fewshot"
"""The default of ``classify``: a prompt ensemble (the mean of the calibrated label log-probs under
``chat_short`` and ``chat_fewshot``, each with its own prior); it beat either template alone on all three
sets of the readout study (docs/readout_study.md)."""
DEFAULT_CALIBRATION: bool | str = "prior"
"""The default calibration of ``classify``: a label prior fitted on the data's train split (content_free,
with a warning, when there is none). Analyses that mask or steer pass no calibration."""

DEMO_SIZES: dict[str, object] = {
    "model": "default", "dtype": "float32", "seed": 0,
    # emotion neurons (Lee et al. 2025)
    "neurons_data": "builtin:dialogues", "train_per_label": 5, "test_per_label": 3, "top_rate": 0.01,
    "mask_emotions": ["sadness", "fear"], "controls": 2, "template": DEFAULT_TEMPLATE,
    # emotion circuits (Wang et al. 2025)
    "skeletons": 1, "max_new_tokens": 16, "n_boot": 50, "shuffles": 5, "top_k": 10, "influence_prompts": 3,
    "alphas": "0.3,0.7", "budget": 60, "steer_emotions": ["anger"], "steer_skeletons": 1,
    "steer_methods": "circuit,residual,prompt,none", "steer_calibration_prompts": 4, "steer_dose": "0.5,2",
    # emotion inference (Tak et al. 2025)
    "inference_data": "builtin:appraisal_events", "events_per_label": 12, "prior_per_label": 8,
    "all_examples": False, "probe_sites": "resid.post", "folds": 3, "probe_controls": 5, "random_features": False,
    "patch_sites": "attn.out,mlp.out", "span": 3, "stride": 4, "n_pairs": 8,
}
"""Sizes of ``emocircuits demo`` (its options default to these)."""

EMOTION_SYSTEMS: dict[str, str] = {
    "short": "Always reply in {emotion}. Keep the reply to at most two sentences.",
    "two_lines": "Always reply in {emotion}.\nKeep the reply to at most two sentences.",
    "emotion_only": "Always reply in {emotion}.",
}
"""Named emotion-instruction system prompts (``{emotion}`` is filled in) of ``circuits elicit`` and the prompting
method of steering; ``short`` is the default. ``two_lines`` is the same instruction split by a newline: a
newline alone turns the directions measurably (issue 30), so the exact text is a setting, not a detail."""
DEFAULT_EMOTION_SYSTEM = "short"
"""The default of :data:`EMOTION_SYSTEMS` (today's elicitation prompt)."""
NEUTRAL_SYSTEM = "Keep the reply to at most two sentences."
"""The emotion-free system prompt of sublayer influence and of the steering comparison."""

NUMBER_BOUNDS: dict[str, tuple[float, float | None, bool]] = {
    "seed": (0, None, True), "cells_per_task": (0, None, True), "limit_per_label": (0, None, True),
    "limit": (1, None, True), "controls": (0, None, True), "n_random": (0, None, True), "n_pairs": (1, None, True),
    "n_boot": (1, None, True), "max_tokens": (1, None, True), "max_new_tokens": (1, None, True),
    "top_k": (0, None, True), "max_prompts": (0, None, True), "judge_prompts": (1, None, True),
    "workers": (1, None, True), "cpus_per_worker": (1, None, True), "gpus_per_worker": (0, None, True),
    "top_rate": (0, 1, False),
}
"""The range of each numeric config key that means a count, seed or share, by key name: ``(low, high, low
included)`` (high always included; None: no upper bound). A sweep TOML's keys are checked against it wherever they
appear (``0`` of ``limit_per_label``, ``top_k``, ``max_prompts``: all)."""
TRIANGULATE_SIZES: dict[str, object] = {
    "model": "default", "dtype": "float32", "data": "builtin:dialogues", "template": DEFAULT_TEMPLATE, "seed": 0,
    "activation": "gated", "tokens": "all", "assign": "argmax", "top_rate": 0.01,
    "train_per_label": 20, "test_per_label": 2, "controls": DEFAULT_CONTROLS, "probe_folds": 3, "probe_controls": 2,
    "n_boot": 1000,
}
"""Defaults of ``emocircuits triangulate`` (small enough for the embedded model on 2 cores; README, Triangulation)."""
TRIANGULATION_METHODS: tuple[str, ...] = ("lee", "wang", "tak")
"""The three papers' neuron sets compared by ``triangulate``, in the order tables list them."""
TRIANGULATION_COMBINED: tuple[str, ...] = ("union", "intersection")
"""Sets ``triangulate`` also masks: every neuron any method picked, and those all three picked."""
CHANCE_ALPHA = 0.05
"""Level below which an overlap's hypergeometric p-value counts as agreement beyond chance."""
MIN_CLAIM_N = 10
"""Fewest texts behind a masking effect for a generated reading to claim it or rank by it: a percentile bootstrap
over fewer examples gives intervals of zero width (e.g. [−1, −1] from two texts both flipped)."""
