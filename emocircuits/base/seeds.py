"""Seeds derived from a base seed and the parts that name one random choice.
"""

from __future__ import annotations

import hashlib
from typing import Any


def derive_seed(seed: int, *parts: Any) -> int:
    """A 64-bit seed from a base seed and the parts naming one random choice (e.g. emotion, layers, control k).

    Depends only on its arguments, never on evaluation order or scheduling: ``sha256("seed|part|...")``.
    """
    key = "|".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
