"""Paper presets: each paper's own settings, one name away (``--preset tak2025``), defined here once.

A preset maps setting names (the config keys: the command-line flag without dashes, ``-`` as ``_``) to a
value and its source (the paper's section, or the file of the authors' public code it follows). A
command applies the settings it has (:func:`resolve`); a flag given explicitly wins over the preset, with a
note. The README's preset table lists exactly these entries (``tests/test_paper_settings.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from emocircuits.base.errors import EmocircuitsError


@dataclass(frozen=True)
class Setting:
    """One setting of a preset: its value and where it comes from."""

    value: Any
    source: str
    commands: tuple[str, ...] | None = None
    """The commands it applies to (None: every command that has the setting)."""


PRESETS: dict[str, dict[str, Setting]] = {
    # Tak et al. 2025, "Mechanistic Interpretability of Emotion Inference in Large Language Models"
    "tak2025": {
        "template": Setting("tak2025", "authors' public code, prompt_manager.py (main.py default joy_sadness_0): plain "
                             "few-shot prompt, joy and sadness demos, no chat template"),
        "calibration": Setting("none", "paper, Readout: argmax over the label tokens' logits, uncalibrated"),
        "all_examples": Setting(False, "paper, Readout: analyses keep only correctly predicted samples"),
        "sites": Setting("attn.out,mlp.out,resid.post", "paper, Probing: attention output, MLP output, residual stream",
                         ("inference probe", "inference patch", "inference attribute")),
        "standardise": Setting(False, "authors' public code (issue 24): raw activations into the probes"),
        "stratify": Setting(False, "authors' public code (issue 24): unstratified split"),
        "test_share": Setting(0.2, "paper, Probing: 80/20 split"),
        "split_seed": Setting(42, "paper, Probing: seed 42"),
        "c": Setting(1.0, "paper, Probing: logistic regression, C = 1"),
        "ridge_alpha": Setting(5.0, "paper, Probing: ridge regression, alpha = 5"),
        "max_iter": Setting(100, "authors' public code, utils.py probe_classification: LogisticRegression's default "
                                 "max_iter = 100 (some raw-activation fits stop before converging)"),
        "span": Setting(5, "authors' public code, main.py activation_patching: windows of span = 5 layers (knockout "
                           "keeps 3, the default)", ("inference patch",)),
        "n_pairs": Setting(200, "authors' public code, main.py activation_patching: num_experiments = 200 random "
                                "pairs per window", ("inference patch",)),
    },
    # Lee et al. 2025, emotion neurons (LAPE-style selection on EmoPrism dialogues)
    "lee2025": {
        "template": Setting("lee2025", "Appendix, Used Prompt (Figure 5): the system and user prompt"),
        "tokens": Setting("all", "§3.4: activation frequency over all T_e tokens of an emotion's inputs"),
        "top_rate": Setting(0.01, "§3.4: the top 1% of neurons with the lowest entropy"),
    },
    # Wang et al. 2025, emotion circuits: only the settings the toolkit exposes as options today
    "wang2025": {
        "groups": Setting("accepted", "paper, Directions: only groups where every emotion's reply was judged correct"),
    },
}
"""``{preset: {setting: Setting}}``."""


def preset_names() -> list[str]:
    return list(PRESETS)


def resolve(name: str, config: Mapping[str, Any], explicit: Iterable[str], command: str) -> tuple[dict[str, Any],
                                                                                                  list[str]]:
    """``config`` with preset ``name``'s settings that the command has (keys of ``config``), except those in
    ``explicit`` (given on the command line), and the notes to print: the preset and each override.

    The returned config records ``preset`` (the name) and ``preset_settings`` (the settings it resolved to).
    """
    if name not in PRESETS:
        raise EmocircuitsError(f"Unknown preset {name!r}; use one of {', '.join(PRESETS)}.")
    explicit = set(explicit)
    out = dict(config)
    applied: dict[str, Any] = {}
    notes = []
    for key, setting in PRESETS[name].items():
        if key not in config or (setting.commands is not None and command not in setting.commands):
            continue
        if key in explicit and config[key] != setting.value:
            notes.append(f"preset {name}: --{key.replace('_', '-')} {config[key]} given, overriding the preset's "
                         f"{setting.value}")
            applied[key] = config[key]
            continue
        out[key] = setting.value
        applied[key] = setting.value
    if not applied:
        raise EmocircuitsError(f"Preset {name!r} sets nothing that {command} has; its settings are "
                               f"{', '.join(PRESETS[name])}.")
    notes.insert(0, f"preset {name}: " + ", ".join(f"{k}={v}" for k, v in applied.items()))
    out["preset"] = name
    out["preset_settings"] = applied
    return out, notes
