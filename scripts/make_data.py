"""Rebuild the built-in datasets and their data cards in ``data/`` (deterministic; see data/*.md).

Usage: ``python scripts/make_data.py [--out DIR] [--check]``. ``--check`` compares instead of writing
and exits 1 when a shipped file differs from a fresh build.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from emocircuits.data.generate import build_all


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` verify) every built-in data file; return the exit code."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data")
    ap.add_argument("--check", action="store_true", help="verify the files instead of writing them")
    args = ap.parse_args(argv)
    files = build_all()
    bad = 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = args.out / name
        if args.check:
            same = path.exists() and path.read_bytes() == data
            bad += not same
            print(f"{'ok' if same else 'DIFFERS'}  {path}")
            continue
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        print(f"wrote {path} ({len(data):,} bytes)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
