"""One colour per emotion, used by every figure, and a fallback palette for other label sets.

The six Ekman emotions have fixed colours (chosen from the Okabe–Ito colour-blind-safe palette, plus
one purple). Any other label gets a colour from ``FALLBACK_PALETTE`` by its position among the
unknown labels of the set passed to :func:`color_map`, so a report that builds one map over all its
labels colours a label identically in every figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from emocircuits.base.constants import EKMAN6

EMOTIONS: tuple[str, ...] = EKMAN6

#: anger vermillion, disgust bluish green, fear purple, happiness orange, sadness blue, surprise reddish purple
EMOTION_COLORS: dict[str, str] = dict(zip(EKMAN6, ("#D55E00", "#009E73", "#6A3D9A", "#E69F00", "#0072B2", "#CC79A7"),
                                          strict=True))

#: Colours for conditions that are not an emotion.
NORMAL_COLOR = "#4D4D4D"
CONTROL_COLOR = "#B0B0B0"

#: For labels outside the Ekman six, in order (none repeats an emotion colour).
FALLBACK_PALETTE: tuple[str, ...] = (
    "#56B4E9", "#F0E442", "#882255", "#44AA99", "#999933", "#AA4499", "#117733", "#332288",
    "#DDCC77", "#88CCEE", "#661100", "#6699CC", "#AA4466", "#4477AA", "#228833", "#CCBB44",
)


def order_labels(labels: Iterable[str]) -> list[str]:
    """Unique labels, the Ekman six first in their canonical order, then the rest sorted."""
    seen = {str(x) for x in labels}
    return [e for e in EMOTIONS if e in seen] + sorted(seen - set(EMOTIONS))


def color_map(labels: Iterable[str]) -> dict[str, str]:
    """``{label: colour}``: fixed colours for the Ekman six, the fallback palette for the others."""
    out: dict[str, str] = {}
    unknown = 0
    for label in order_labels(labels):
        if label in EMOTION_COLORS:
            out[label] = EMOTION_COLORS[label]
        else:
            out[label] = FALLBACK_PALETTE[unknown % len(FALLBACK_PALETTE)]
            unknown += 1
    return out


def resolve_colors(labels: Iterable[str], colors: Mapping[str, str] | None = None) -> dict[str, str]:
    """``color_map(labels)`` overridden by ``colors`` where it names a label (a report passes one map)."""
    out = color_map(labels)
    if colors:
        out.update({k: v for k, v in colors.items() if k in out})
    return out


def tint(hex_color: str, amount: float) -> str:
    """``hex_color`` mixed with white by ``amount`` in [0, 1] (0 = unchanged), as ``#rrggbb``."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    mix = [round(c + (255 - c) * amount) for c in (r, g, b)]
    return "#" + "".join(f"{c:02X}" for c in mix)
