"""Paper presets: each paper's own settings, one name away (``--preset tak2025``), defined here once.

A preset is a tuple of settings: a config key (the command-line flag without dashes, ``-`` as ``_``), a
value, its source (the paper's section, or the file of the authors' public code it follows) and the
commands it applies to (one key may hold different values for disjoint commands: ``--system`` is the
emotion instruction of ``circuits elicit`` and the emotion-free prompt of ``influence`` and steering). A
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
    """One setting of a preset: its config key, value, where it comes from and the commands it applies to."""

    key: str
    value: Any
    source: str
    commands: tuple[str, ...] | None = None
    """The commands it applies to (None: every command that has the setting)."""

    def applies(self, command: str) -> bool:
        return self.commands is None or command in self.commands


_ELICIT, _DIRS, _COMP, _VALID = "circuits elicit", "circuits directions", "circuits components", "circuits validate"
_INFL, _ASM, _CSTEER, _STEER = "circuits influence", "circuits assemble", "circuits steer", "steer"
_W = "Aurora-cx/EmotionCircuits-LLM scripts/"  # the authors' public code (Wang et al. 2025)
WANG_STEER_SYSTEM = "\n    Keep the reply to at most two sentences.\n    "
"""The system prompt of the authors' steered generation, as their code writes it (an indented triple-quoted
string, not stripped: newline, four spaces, the sentence, newline, four spaces)."""

PRESETS: dict[str, tuple[Setting, ...]] = {
    # Tak et al. 2025, "Mechanistic Interpretability of Emotion Inference in Large Language Models"
    "tak2025": (
        Setting("template", "tak2025", "authors' public code, prompt_manager.py (main.py default joy_sadness_0): plain "
                "few-shot prompt, joy and sadness demos, no chat template"),
        Setting("calibration", "none", "paper, Readout: argmax over the label tokens' logits, uncalibrated"),
        Setting("all_examples", False, "paper, Readout: analyses keep only correctly predicted samples"),
        Setting("sites", "attn.out,mlp.out,resid.post", "paper, Probing: attention output, MLP output, residual "
                "stream", ("inference probe", "inference patch", "inference attribute")),
        Setting("standardise", False, "authors' public code (issue 24): raw activations into the probes"),
        Setting("stratify", False, "authors' public code (issue 24): unstratified split"),
        Setting("test_share", 0.2, "paper, Probing: 80/20 split"),
        Setting("split_seed", 42, "paper, Probing: seed 42"),
        Setting("c", 1.0, "paper, Probing: logistic regression, C = 1"),
        Setting("ridge_alpha", 5.0, "paper, Probing: ridge regression, alpha = 5"),
        Setting("max_iter", 100, "authors' public code, utils.py probe_classification: LogisticRegression's default "
                "max_iter = 100 (some raw-activation fits stop before converging)"),
        Setting("span", 5, "authors' public code, main.py activation_patching: windows of span = 5 layers (knockout "
                "keeps 3, the default)", ("inference patch",)),
        Setting("n_pairs", 200, "authors' public code, main.py activation_patching: num_experiments = 200 random "
                "pairs per window", ("inference patch",)),
    ),
    # Lee et al. 2025, emotion neurons (LAPE-style selection on EmoPrism dialogues)
    "lee2025": (
        Setting("template", "lee2025", "Appendix, Used Prompt (Figure 5): the system and user prompt"),
        Setting("tokens", "all", "§3.4: activation frequency over all T_e tokens of an emotion's inputs"),
        Setting("top_rate", 0.01, "§3.4: the top 1% of neurons with the lowest entropy"),
    ),
    # Wang et al. 2025, emotion circuits: the settings of the authors' public scripts (paths under scripts/)
    "wang2025": (
        Setting("system", "two_lines", f"{_W}01_*/1_emotion_elicited_generation.py build_messages_for_emotion "
                "(also 02_*/1, 04_*/1-2): 'Always reply in {emotion}.' newline 'Keep the reply to at most two "
                "sentences.'", (_ELICIT,)),
        Setting("max_new_tokens", 100, f"{_W}01_*/1_emotion_elicited_generation.py and 03_*/1_steer_with_emotion_"
                "direction.py: --max_new_tokens 100, greedy", (_ELICIT, _CSTEER, _STEER)),
        Setting("max_new_tokens", 100, "the public code has no validation script: its judged replies take the "
                "length of the authors' generations (01_*/1, 03_*/1: 100 new tokens)", (_VALID,)),
        Setting("dtype", "float32", f"{_W}01_*/1, 02_*/1, 04_*/1-2: --dtype float32", (_ELICIT,)),
        Setting("groups", "accepted", f"{_W}02_*/2_compute_emotion_directions.py load_groups: only (skeleton, "
                "valence) groups whose six replies are all accepted", (_DIRS,)),
        Setting("last_after_final_norm", True, f"{_W}02_*/1_dump_residual_aligned_sublayer_activations.py: the "
                "MLP-site vector of layer L is hidden_states[L+1], the last one after the final norm", (_DIRS,)),
        Setting("head_score", "mlp_in", f"{_W}04_*/2_compute_head_contrib.py HiddenStateCollector: the projection "
                "of the MLP input (after post_attention_layernorm) when a head is zeroed before o_proj", (_COMP,)),
        Setting("use", "accepted", f"{_W}04_*/1 load_accepted_meta, 04_*/2 load_accepted_samples and 06_*/3 "
                "expand_accepted_samples: every accepted reply of the emotion", (_COMP, _INFL)),
        Setting("max_samples", 1000, f"{_W}04_*/2_compute_head_contrib.py --max_samples 1000 (the first accepted, "
                "file order)", (_COMP,)),
        Setting("per_valence", None, f"{_W}04_*/1_compute_neuron_contrib.py --max_per_valence None (all)", (_COMP,)),
        Setting("seed", 42, f"{_W}04_*/1-2 --seed 42", (_COMP,)),
        Setting("ref_layers", "paper", f"{_W}06_*/3_compute_sublayer_importance_multi_alpha.py "
                "build_global_reference: stable segment 21-25 of 28 (scaled)", (_INFL,)),
        Setting("ref_anchor", "paper", f"{_W}06_*/3 build_global_reference: signs aligned to the first vector, "
                "the attention-site (resid.mid) vector of the window's first layer", (_INFL,)),
        Setting("sigma_prompts", "elicit", f"{_W}06_*/2_compute_sigma_from_residuals.py: RMS over the residual "
                "dumps of the elicitation prompts", (_INFL,)),
        Setting("sigma_from", "resid", f"{_W}06_*/2: sigma of the residual after the sublayer "
                "(hidden_last_all_layers)", (_INFL,)),
        Setting("readout", "final.norm", f"{_W}06_*/3: hidden_states[-1] (after the final norm)", (_INFL,)),
        Setting("alphas", "0.1,0.3,0.5,0.7", f"{_W}06_*/3 --alphas 0.1,0.3,0.5,0.7", (_INFL,)),
        Setting("system", "Keep the reply to at most two sentences.", f"{_W}06_*/3 build_messages_no_emo",
                (_INFL,)),
        Setting("k_total", None, "paper, circuit integration: K = 560 components on the 28-layer model (unset: "
                "560 * n_layers / 28)", (_ASM,)),
        Setting("neuron_share", 0.7, "paper, circuit integration: 392 neurons of K = 560", (_ASM,)),
        Setting("alpha", 8.0, f"{_W}03_*/1_steer_with_emotion_direction.py --alpha 8 --scale rms --last_k 1",
                (_CSTEER,)),
        Setting("band", None, f"{_W}03_*/1 --layers 11-20 of 28 (unset: that band scaled to the model)",
                (_CSTEER, _STEER)),
        Setting("site", "resid.post", f"{_W}03_*/1 --direction_type mlp: the layer output", (_CSTEER, _STEER)),
        Setting("min_new_tokens", 10, f"{_W}03_*/1 generate_text: min_new_tokens=10", (_CSTEER, _STEER)),
        Setting("repetition_penalty", 1.05, f"{_W}03_*/1 generate_text: repetition_penalty=1.05",
                (_CSTEER, _STEER)),
        Setting("no_repeat_ngram_size", 3, f"{_W}03_*/1 generate_text: no_repeat_ngram_size=3", (_CSTEER, _STEER)),
        Setting("sentences", 0, f"{_W}03_*/1 generate_text: replies run to max_new_tokens or the end of turn (no "
                "sentence stop)", (_CSTEER, _STEER)),
        Setting("system", WANG_STEER_SYSTEM, f"{_W}03_*/1 build_messages (indented, not stripped)",
                (_CSTEER, _STEER)),
    ),
}
"""``{preset: (Setting, ...)}``; a key appears more than once only for disjoint commands."""


def preset_names() -> list[str]:
    return list(PRESETS)


def shown(value: Any) -> str:
    """A setting's value as one line (newlines and tabs escaped), as the README's preset table and the notes show it."""
    return str(value).encode("unicode_escape").decode("ascii") if isinstance(value, str) else str(value)


def settings_for(name: str, command: str) -> dict[str, Setting]:
    """``{key: Setting}`` of preset ``name`` that apply to ``command`` (at most one per key)."""
    out: dict[str, Setting] = {}
    for setting in PRESETS[name]:
        if setting.applies(command):
            if setting.key in out:
                raise EmocircuitsError(f"Preset {name!r} sets {setting.key} twice for {command}.")
            out[setting.key] = setting
    return out


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
    for key, setting in settings_for(name, command).items():
        if key not in config:
            continue
        if key in explicit and config[key] != setting.value:
            notes.append(f"preset {name}: --{key.replace('_', '-')} {shown(config[key])} given, overriding the "
                         f"preset's {shown(setting.value)}")
            applied[key] = config[key]
            continue
        out[key] = setting.value
        applied[key] = setting.value
    if not applied:
        keys = ", ".join(dict.fromkeys(s.key for s in PRESETS[name]))
        raise EmocircuitsError(f"Preset {name!r} sets nothing that {command} has; its settings are {keys}.")
    notes.insert(0, f"preset {name}: " + ", ".join(f"{k}={shown(v)}" for k, v in applied.items()))
    out["preset"] = name
    out["preset_settings"] = applied
    return out, notes
