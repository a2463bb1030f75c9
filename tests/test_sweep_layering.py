"""Constants are spelled once, seeds keep their values, and `rerun` works without the CLI (the layering
itself is tests/test_layers.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "emocircuits"


def test_one_source_for_shared_constants():
    """Label sets, layer ranges, sites, grids, seeds and shares are spelled once, in base/constants.py."""
    from emocircuits.base import constants as K
    from emocircuits.base.constants import EKMAN6, SPLIT_SEED
    from emocircuits.core import sites, units
    from emocircuits.methods.circuits import influence
    from emocircuits.viz import colors

    assert colors.EMOTIONS is EKMAN6 is K.EKMAN6 and sites.LAYER_RANGES is K.LAYER_RANGES
    assert units.SUBLAYER_SITES is K.SUBLAYER_SITES is influence.SUBLAYER_SITES and SPLIT_SEED == K.SPLIT_SEED
    literals = ['"anger", "disgust", "fear"', '"positive", "neutral", "negative"', '"bottom", "middle", "top"',
                "0.01, 0.02, 0.03, 0.04, 0.05", "0.0, 0.5, 1.0, 1.5, 2.0, 3.0", '{"attn": "attn.out", "mlp": "mlp.out"}',
                "SPLIT_SEED = ", "TEST_SHARE = ", "seed: int = 42"]
    for text in literals:
        offenders = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
                     if text in p.read_text().replace('layers = ["bottom", "middle", "top"]', "")  # a TOML example
                     and p.relative_to(PKG).as_posix() not in ("base/constants.py",)
                     and p.relative_to(PKG).parts[0] != "data"]
        assert offenders == [], (text, offenders)
    for name in ("LAYER_NAMES", "_SWEEP_METRICS", "_METRICS", "control_seed"):
        pattern = re.compile(rf"(?<![A-Za-z_])({name} = |def {name}\()")
        assert not any(pattern.search(p.read_text()) for p in PKG.rglob("*.py")), name


def test_derive_seed_keeps_the_control_seeds(tmp_path):
    """One seed function; the masking controls keep the seeds they had (sha256 of 'seed|emotion|...|k')."""
    import hashlib

    from emocircuits.base.seeds import derive_seed
    from emocircuits.sweeps import derive_seed as sweeps_seed

    old = int.from_bytes(hashlib.sha256(b"3|fear|top|0.02|truncate|1").digest()[:8], "little")
    assert derive_seed(3, "fear", "top", 0.02, "truncate", 1) == old and sweeps_seed is derive_seed


def test_rerun_of_classify_works_without_importing_the_cli(tmp_path):
    from emocircuits.jobs.classify import run_classify

    config = {"model": "tiny-llama", "data": "builtin:dialogues", "split": "test", "limit_per_label": 1,
              "template": "raw", "scoring": "first_token", "calibrate": False, "seed": 0}
    first = run_classify(config, tmp_path / "a", quiet=True)
    code = ("import sys, json; from emocircuits.sweeps.rerun import rerun; m = rerun(sys.argv[1], sys.argv[2]); "
            "print(json.dumps({'accuracy': m['accuracy'], 'front': sorted(k for k in sys.modules "
            "if k.startswith('emocircuits.cli'))}))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a"), str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == {"accuracy": first["accuracy"], "front": []}
    assert (tmp_path / "b" / "predictions.parquet").is_file()
