"""The command line's one option vocabulary: each option that means one thing is declared here once.

An :class:`Opt` holds the flag, its help, its check and its default. A command asks for it by name,
``model: str = option("--model")``, giving its own default only where the vocabulary says the default is
the command's (``per_command=True``: e.g. ``--data``, whose default is the data the command's paper uses).
The job config keys, the sweep TOML keys and the Python keywords are the flag without dashes, ``-`` as
``_`` (``--limit-per-label`` → ``limit_per_label``). ``tests/test_cli_options.py`` walks every command and
fails when two declare one flag differently.

Checks run while the command line is parsed, before any model loads: numbers must be finite and in the
documented range, and the refusal names the option (exit code 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import typer

from emocircuits.base.constants import EMOTION_SYSTEMS, LARGE_WORK, LAYER_RANGES
from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.presets import preset_names, resolve
from emocircuits.core.prompts import template_names

_UNSET: Any = object()


def _bad(flag: str, value: Any, allowed: str) -> EmocircuitsError:
    shown = (repr(value) if isinstance(value, str) and not value.strip() else str(value) if len(str(value)) <= 40
             else f"{str(value)[:20]}...({len(str(value))} characters)")
    return EmocircuitsError(f"{flag} {shown} is not allowed; {allowed}.")


def _finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (an integer too large for a float is not: no count is that big)."""
    try:
        return math.isfinite(float(value))
    except (OverflowError, TypeError, ValueError):
        return False


def at_least(low: float) -> Callable[[str], Callable[[Any], Any]]:
    """A check: a finite number ``>= low`` (None passes: the option was left out)."""
    def make(flag: str) -> Callable[[Any], Any]:
        def check(value: Any) -> Any:
            if value is None:
                return value
            if not _finite(value) or value < low:
                raise _bad(flag, value, f"use a finite number >= {low:g}")
            return value
        return check
    return make


def multiplier(low: float) -> Callable[[str], Callable[[Any], Any]]:
    """A check: a count ``>= low`` that multiplies a command's passes; from :data:`LARGE_WORK` on, the planned
    work is printed (stderr) before anything starts."""
    def make(flag: str) -> Callable[[Any], Any]:
        plain = at_least(low)(flag)

        def check(value: Any) -> Any:
            value = plain(value)
            if value is not None and value >= LARGE_WORK:
                typer.echo(f"planned work: {flag} {value} repeats each measurement on {value} random controls or "
                           f"pairs, about {int(value) + 1} times the passes of one measurement; this takes long "
                           "(Ctrl-C stops it and leaves --out as it was).", err=True)
            return value
        return check
    return make


def positive(flag: str) -> Callable[[Any], Any]:
    """A check: a finite number > 0 (None passes)."""
    def check(value: Any) -> Any:
        if value is not None and not (_finite(value) and value > 0):
            raise _bad(flag, value, "use a finite number > 0")
        return value
    return check


def share(flag: str) -> Callable[[Any], Any]:
    """A check: a share in (0, 1]."""
    def check(value: Any) -> Any:
        if value is not None and not (_finite(value) and 0 < value <= 1):
            raise _bad(flag, value, "use a share in (0, 1], e.g. 0.01")
        return value
    return check


def finite(flag: str) -> Callable[[Any], Any]:
    """A check: a finite number (NaN and inf mean nothing as a strength)."""
    def check(value: Any) -> Any:
        if value is not None and not _finite(value):
            raise _bad(flag, value, "use a finite number")
        return value
    return check


def strength(flag: str) -> Callable[[Any], Any]:
    """A check: ``auto`` or a finite number >= 0 (None passes)."""
    def check(value: Any) -> Any:
        if value is None or str(value).strip().lower() == "auto":
            return value
        try:
            x = float(value)
        except (ValueError, OverflowError):
            x = math.nan
        if not (math.isfinite(x) and x >= 0):
            raise _bad(flag, value, "use auto (the strongest fluent strength) or a finite number >= 0")
        return value
    return check


def auto_or(check: Callable[[str], Callable[[Any], Any]]) -> Callable[[str], Callable[[Any], Any]]:
    """A check: ``auto``, or what ``check`` accepts."""
    def make(flag: str) -> Callable[[Any], Any]:
        inner = check(flag)

        def run(value: Any) -> Any:
            return value if value is not None and str(value).strip().lower() == "auto" else inner(value)
        return run
    return make


def number_list(low: float | None = None) -> Callable[[str], Callable[[Any], Any]]:
    """A check: a comma-separated list of finite numbers (each ``>= low`` when given)."""
    def make(flag: str) -> Callable[[Any], Any]:
        def check(value: Any) -> Any:
            if value is None:
                return value
            try:
                items = [float(x) for x in str(value).split(",") if x.strip()]
            except (ValueError, OverflowError):
                raise _bad(flag, value, "use comma-separated numbers, e.g. 0.5,1,2") from None
            if not items or not all(_finite(x) and (low is None or x >= low) for x in items):
                bound = "" if low is None else f", each >= {low:g}"
                raise _bad(flag, value, f"use comma-separated finite numbers{bound}, e.g. 0.5,1,2")
            return value
        return check
    return make


@dataclass(frozen=True)
class Opt:
    """One option of the vocabulary: its flags, help, default and check."""

    flags: tuple[str, ...]
    help: str
    default: Any = None
    per_command: bool = False
    """True: each command sets its own default (the help says so); False: every command uses ``default``."""
    check: Callable[[str], Callable[[Any], Any]] | None = None

    def info(self, default: Any = _UNSET) -> Any:
        if default is not _UNSET and not self.per_command and default != self.default:
            raise ValueError(f"{self.flags[0]} has one default ({self.default!r}); it is not the command's to set.")
        value = self.default if default is _UNSET else default
        callback = self.check(self.flags[0]) if self.check else None
        return typer.Option(value, *self.flags, help=self.help, callback=callback)


_TEMPLATES = ", ".join(template_names())


def one_of(names: list[str]) -> Callable[[str], Callable[[Any], Any]]:
    """A check: one of ``names`` (None passes)."""
    def make(flag: str) -> Callable[[Any], Any]:
        def check(value: Any) -> Any:
            if value is not None and value not in names:
                raise _bad(flag, repr(value), f"use one of {', '.join(names)}")
            return value
        return check
    return make


def model_name(flag: str) -> Callable[[Any], Any]:
    """A check: a non-empty model spec (None passes: the command's default)."""
    def check(value: Any) -> Any:
        if value is not None and not str(value).strip():
            raise _bad(flag, repr(value), "name a model (this name is empty), e.g. default (the embedded "
                       "SmolLM2-135M-Instruct), a local model folder or a .gguf file")
        return value
    return check


def field_name(flag: str) -> Callable[[Any], Any]:
    """A check: a non-empty field name."""
    def check(value: Any) -> Any:
        if value is not None and not str(value).strip():
            raise _bad(flag, repr(value), "name a field of the data file, e.g. text")
        return value
    return check

VOCABULARY: dict[str, Opt] = {o.flags[0]: o for o in (
    # what to run on
    Opt(("--model",), "Model spec: default (the embedded SmolLM2-135M-Instruct), a .gguf path, a local HF dir, "
        "a cached hub id, or tiny-llama; commands that read an earlier run default to that run's model.",
        "default", per_command=True, check=model_name),
    Opt(("--dtype",), "float32 | bfloat16 | float16 (what bfloat16 changes: README, Speed).", "float32"),
    Opt(("--data",), "Data spec: builtin:dialogues|events|appraisal_events|sev, jsonl:PATH, csv:PATH, envent:PATH, "
        "emoprism:PATH or sev:PATH (default: the data of the command's paper).", "builtin:dialogues", per_command=True),
    Opt(("--split",), "train, test or all (default: the command's own part of data that has a split, train to "
        "find and test to measure, else all).", None, per_command=True, check=one_of(["train", "test", "all"])),
    Opt(("--limit-per-label",), "At most N examples per label (seeded, stratified).", None, check=at_least(1)),
    Opt(("--limit",), "At most N SEV skeletons (round-robin over themes).", None, check=at_least(1)),
    Opt(("--template",), f"Prompt template: one of {_TEMPLATES} (tak2025 and lee2025 are written from those "
        "papers; the others are the toolkit's own), names joined by + (an ensemble; classify only), "
        "or a string containing {text} (prefix chat: for a chat user turn); default: the command's.",
        None, per_command=True),
    Opt(("--calibration",), "Readout calibration: prior (a label prior fitted on the data's train split, else on "
        "builtin:events train), content_free, batch (the mean over the classified data) or none.",
        "prior", per_command=True),
    Opt(("--all-examples",), "Keep wrongly predicted examples too (default: only the correct ones).", False),
    Opt(("--emotion",), "Emotion(s), repeatable (default: every emotion the command's input has).", None,
        per_command=True),
    Opt(("--drop-unknown",), "Skip rows whose label is outside the label scheme instead of stopping.", False),
    Opt(("--labels",), "Comma-separated label scheme, e.g. anger,joy (default: Ekman's six; SEV: valences); "
        "every label must occur in the data.", None),
    Opt(("--text-field",), "Field (column) holding the text (default: text; emoprism dialogue; envent "
        "generated_text, or hidden_emo_text for the masked texts).", None, check=field_name),
    Opt(("--label-field",), "Field (column) holding the label (default: label; envent emotion).", None,
        check=field_name),
    Opt(("--appraisals",), "Comma-separated appraisal rating names to read (top-level columns or a nested "
        "appraisal object); default: the 21 crowd-enVENT names that the file has.", None),
    Opt(("--preset",), f"A paper's settings: {', '.join(preset_names())} (README, Paper presets); explicit flags "
        "override it, with a note.", None, check=one_of(preset_names())),
    Opt(("--pairs",), "CSV/JSONL of source_id,target_id patching pairs (e.g. pairs.json of an earlier run, or "
        "another tool's); default: --n-pairs random pairs.", None),
    Opt(("--prepend-bos/--no-prepend-bos",), "Put BOS before plain-text prompts (default: what the model's own "
        "tokenizer does).", None),
    # randomness and statistics
    Opt(("--seed",), "Seed of every random choice of the command (sampling, controls, pairs, bootstraps).", 0,
        check=at_least(0)),
    Opt(("--controls",), "K random controls per measured effect (same size and layers; the CI resamples them "
        "and p ranks the effect among them).", 5, per_command=True, check=multiplier(0)),
    Opt(("--n-boot",), "Bootstrap resamples for the CIs.", 1000, per_command=True, check=at_least(1)),
    Opt(("--train-per-label",), "Train texts per emotion (seeded, stratified) to find neurons on (and, in "
        "triangulate, directions and probes).", None, per_command=True, check=at_least(1)),
    Opt(("--test-per-label",), "Held-out test texts per emotion (seeded, stratified) to mask on.", None,
        per_command=True, check=at_least(1)),
    Opt(("--probe-controls",), "Label-permutation controls per emotion probe.", None, per_command=True,
        check=at_least(1)),
    Opt(("--probe-folds",), "k of the emotion probes' k-fold CV.", None, per_command=True, check=at_least(2)),
    Opt(("--random-features/--no-random-features",), "Also probe Gaussian features of the same dimension (a "
        "control beside the label permutations).", False),
    Opt(("--n-random",), "Random controls (directions or circuits of the same size) per condition.", None,
        per_command=True, check=multiplier(0)),
    Opt(("--n-pairs",), "Random (source, target) pairs with different labels.", 50, per_command=True,
        check=multiplier(1)),
    # where in the model
    Opt(("--layers",), f"Layers: {', '.join(LAYER_RANGES)}, A-B or A (inclusive); default: the command's.", None,
        per_command=True),
    Opt(("--sites",), "Comma-separated sites (attn.out, mlp.out, resid.post, ...); default: the command's.", None,
        per_command=True),
    Opt(("--span",), "Layers per sliding window.", 3, check=at_least(1)),
    Opt(("--stride",), "Start a window every N layers (the last window still ends at the last layer).", 1,
        per_command=True, check=at_least(1)),
    Opt(("--top-k",), "Components kept per emotion (the command's help says which).", None, per_command=True,
        check=at_least(0)),
    Opt(("--top-rate",), "Share of all neurons kept (lowest entropy).", 0.01, check=share),
    # generation and judging
    Opt(("--max-new-tokens",), "Tokens per generated reply (greedy; a reply stops early at the end of its turn).",
        48, per_command=True, check=at_least(1)),
    Opt(("--judge",), "Judge, repeatable: lexicon, self, embedding, hf:DIR, llm:SPEC (default: the command's).",
        None, per_command=True),
    Opt(("--min-new-tokens",), "Generate at least N new tokens before an end of turn may stop a reply.", 0,
        check=at_least(0)),
    Opt(("--repetition-penalty",), "Divide the logit of every token already in the sequence by this (HF's rule; "
        "1 = none).", 1.0, check=positive),
    Opt(("--no-repeat-ngram-size",), "Never repeat an n-gram of this size (0 = off).", 0, check=at_least(0)),
    Opt(("--system",), f"System prompt (default: the command's). classify: replaces a chat template's own (or a "
        f"user template string); circuits elicit: the emotion instruction, a name ({', '.join(EMOTION_SYSTEMS)}) "
        "or a text containing {emotion}; influence and steering: the emotion-free prompt, a text.", None,
        per_command=True),
    Opt(("--prompt-system",), f"The prompting method's emotion instruction: a name ({', '.join(EMOTION_SYSTEMS)}) "
        "or a text containing {emotion} (default: short, elicit's).", None),
    Opt(("--site",), "Residual steering: the site whose direction is added, resid.post (the layer output, "
        "as the paper) or resid.mid.", "resid.post"),
    Opt(("--band",), "Residual steering layers A-B (default: the paper's band 11-20 of 28, scaled).", None),
    Opt(("--scale",), "Steering strength: s of s·Δμ for circuit/random, α for residual (steer), or auto: the "
        "strongest setting whose replies stay fluent on a calibration split (perplexity ≤ 1.5×, distinct-2 ≥ 0.9× "
        "the unsteered replies').", "auto", check=strength),
    Opt(("--alpha",), "Residual steering strength α (× RMS of the residual), or auto (as --scale; the paper's 8 "
        "was for an 8B model).", "auto", check=strength),
    Opt(("--dose",), "Dose-response: extra multipliers of each steerable method's strength, e.g. 0.5,2 (dose 1 "
        "always runs).", None, check=number_list(0)),
    Opt(("--calibration-prompts",), "Prompts the auto strength is chosen on (from the train split).", 8,
        check=at_least(1)),
    Opt(("--sentences",), "A reply ends after this many sentences (0: at its end of turn only).", 2, check=at_least(0)),
    # inputs from earlier runs
    Opt(("--from",), "Run directory of the step before (the command's help names it).", ..., per_command=True),
    Opt(("--directions",), "Run directory of `circuits directions`: enough for residual, prompt and none steering "
        "(no assemble run needed).", None),
    Opt(("--allow-other-model",), "Use an earlier run's neurons, directions or circuits on a model other than the "
        "one they were made on (refused by default; shapes must still fit).", False),
    Opt(("--neurons",), "neurons.json written by `neurons find` (or its run directory).", ..., per_command=True),
    Opt(("--groups",), "Groups of prompts used: accepted (every emotion's reply accepted) | all.", "accepted",
        per_command=True),
    Opt(("--max-prompts",), "At most N prompts per emotion (unset: all).", None, check=at_least(1)),
    Opt(("--use",), "Prompts read per emotion: used (the groups the directions used) | accepted (the emotion's "
        "accepted replies) | all (default: the command's; components: used, each falling back to the next when "
        "empty; influence: all).", "all", per_command=True),
    # running
    Opt(("--out",), "Run directory to write (the README lists each command's files).", ..., per_command=True),
    Opt(("--quiet",), "No progress bars; print only the summary.", False),
    Opt(("--resume",), "Continue the run in --out, running only its missing cells.", False),
    Opt(("--executor",), "local or ray (default: the config's, else local).", None),
    Opt(("--workers",), "Worker processes / Ray actors, each with one model.", None, check=at_least(1)),
    Opt(("--json",), "Print JSON instead of a table.", False),
    Opt(("--ratio-mode",), "truncate (a prefix of the ranked list) | reselect (select again at that ratio).",
        "truncate"),
)}


def given(value: Any, default: Any = None) -> Any:
    """``value``, or ``default`` when a command function is called from Python with the option left out (typer
    then passes its ``OptionInfo``)."""
    return default if isinstance(value, typer.models.OptionInfo) else value


def apply_preset(ctx: typer.Context, preset: str | None, config: dict[str, Any], command: str) -> dict[str, Any]:
    """``config`` with ``preset``'s settings (:func:`emocircuits.base.presets.resolve`), the flags given on the
    command line kept; prints the preset and each override (stderr). No preset: ``config`` unchanged."""
    if preset is None:
        return config
    explicit = {name for name in ctx.params
                if getattr(ctx.get_parameter_source(name), "name", None) in ("COMMANDLINE", "ENVIRONMENT")}
    out, notes = resolve(preset, config, explicit, command)
    for note in notes:
        typer.echo(note, err=True)
    return out


def split_list(value: str | None) -> list[str] | None:
    """``a,b,c`` as a list (None stays None)."""
    return None if value is None else [s.strip() for s in value.split(",") if s.strip()]


def option(flag: str, default: Any = _UNSET) -> Any:
    """The typer option of ``flag`` from the vocabulary (``default``: only where the default is the command's)."""
    return VOCABULARY[flag].info(default)

