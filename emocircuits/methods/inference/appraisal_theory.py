"""Appraisal theory: which shift of predicted emotions steering an appraisal combination should cause.

Each :class:`TheorySetting` names the appraisals raised (+1) or lowered (−1), the appraisals held fixed
(the steering direction is orthogonalised against their probe weights) and the emotions whose share
theory expects to rise, with its sources. Appraisal names are the crowd-enVENT columns
(:data:`emocircuits.data.APPRAISAL_COLUMNS`); on that scale a high ``social_norms``/``standards`` rating
means the event violated norms/standards.

Sources: Smith, C. A. & Ellsworth, P. C. (1985), Patterns of cognitive appraisal in emotion, JPSP 48(4);
Scherer, K. R. (2001), Appraisal considered as a process of multilevel sequential checking, in Scherer,
Schorr & Johnstone (eds.), Appraisal Processes in Emotion.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from emocircuits.base.errors import EmocircuitsError
from emocircuits.data import APPRAISAL_COLUMNS


@dataclass(frozen=True)
class TheorySetting:
    """One steering setting: ``change`` appraisal → ±1, ``fixed`` appraisals, ``expected`` emotions."""

    name: str
    change: Mapping[str, int]
    fixed: tuple[str, ...]
    expected: tuple[str, ...]
    source: str
    note: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for a in (*self.change, *self.fixed):
            if a not in APPRAISAL_COLUMNS:
                raise EmocircuitsError(f"Unknown appraisal {a!r}; known appraisals are {', '.join(APPRAISAL_COLUMNS)}.")
        for a, c in self.change.items():
            if c not in (-1, 1):
                raise EmocircuitsError(f"Appraisal {a!r} has sign {c}; use +1 (raise) or -1 (lower).")
        both = set(self.change) & set(self.fixed)
        if both:
            raise EmocircuitsError(f"Appraisals {sorted(both)} are both changed and held fixed; choose one.")


THEORY: tuple[TheorySetting, ...] = (
    TheorySetting("anger", {"other_responsblt": 1, "unpleasantness": 1},
                  ("self_responsblt", "chance_responsblt", "suddenness"), ("anger",),
                  "Smith & Ellsworth 1985 (other-agency + unpleasantness); Scherer 2001 (obstructive, other-caused)"),
    TheorySetting("surprise", {"predict_event": -1}, ("pleasantness", "unpleasantness"), ("surprise", "fear"),
                  "Smith & Ellsworth 1985 (low certainty); Scherer 2001 (low predictability/novelty check)"),
    TheorySetting("happiness", {"pleasantness": 1}, ("suddenness", "other_responsblt"), ("happiness",),
                  "Smith & Ellsworth 1985 (pleasantness); Scherer 2001 (intrinsic pleasantness, goal conducive)"),
    TheorySetting("fear_sadness", {"self_control": -1, "unpleasantness": 1}, ("other_responsblt", "suddenness"),
                  ("fear", "sadness"),
                  "Smith & Ellsworth 1985 (situational control, unpleasantness); Scherer 2001 (low coping potential)"),
    TheorySetting("disgust", {"social_norms": 1}, ("unpleasantness", "other_responsblt"), ("disgust",),
                  "Scherer 2001 (norm incompatibility check)",
                  note="norm violation is predicted to raise anger/contempt as much as disgust; weak link"),
)


def get_setting(name: str) -> TheorySetting:
    """A setting of :data:`THEORY` by name."""
    for s in THEORY:
        if s.name == name:
            return s
    raise EmocircuitsError(f"Unknown theory setting {name!r}; known settings are {', '.join(s.name for s in THEORY)}.")


def theory_table() -> pd.DataFrame:
    """The theory table: ``setting, raise, lower, fixed, expected, source, note``."""
    return pd.DataFrame([{
        "setting": s.name,
        "raise": ",".join(a for a, c in s.change.items() if c > 0),
        "lower": ",".join(a for a, c in s.change.items() if c < 0),
        "fixed": ",".join(s.fixed),
        "expected": ",".join(s.expected),
        "source": s.source,
        "note": s.note,
    } for s in THEORY])
