"""The CLI end to end on a tiny model: outputs and their schemas, bad input → one sentence and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from emocircuits.cli.app import app

runner = CliRunner()


def _cli(*args: str) -> subprocess.CompletedProcess:
    """Run the real entry point (so exit codes and stderr are what a user sees)."""
    code = "from emocircuits.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)


def test_every_command_has_help():
    for cmd in (["--help"], ["models", "--help"], ["info", "--help"], ["classify", "--help"], ["neurons", "--help"],
                ["neurons", "find", "--help"], ["neurons", "mask", "--help"], ["neurons", "sweep", "--help"],
                ["demo", "--help"]):
        result = runner.invoke(app, cmd)
        assert result.exit_code == 0, (cmd, result.output)
        assert "Usage" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "not-a-model"], "Unknown model spec"),
        (["neurons", "find", "--model", "tiny-llama", "--data", "builtin:nope", "--out", "{tmp}/x"], "Unknown built-in dataset"),
        (["neurons", "find", "--model", "tiny-llama", "--activation", "post", "--out", "{tmp}/x"], "--activation"),
        (["neurons", "mask", "--model", "tiny-llama", "--neurons", "{tmp}/missing.json", "--out", "{tmp}/y"],
         "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(tmp_path, args, message):
    result = _cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.returncode == 2, result.stderr
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("emocircuits: error:") and message in err[0], result.stderr
    assert "Traceback" not in result.stderr


def test_find_then_mask_write_documented_schemas(tmp_path):
    find_dir, mask_dir = tmp_path / "find", tmp_path / "mask"
    r = runner.invoke(app, ["neurons", "find", "--model", "tiny-llama", "--limit-per-label", "3", "--top-rate", "0.05",
                            "--out", str(find_dir), "--quiet"])
    assert r.exit_code == 0, r.output
    doc = json.loads((find_dir / "neurons.json").read_text())
    assert set(doc["neurons"]) == {"anger", "disgust", "fear", "happiness", "sadness", "surprise"}
    assert all(len(pair) == 2 for pairs in doc["neurons"].values() for pair in pairs)
    assert doc["config"]["top_rate"] == 0.05
    manifest = json.loads((find_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["command"] == "neurons find"
    assert manifest["model"]["weights_hash"] and manifest["versions"]["torch"]
    assert set(manifest["files"]) >= {"neurons.json", "neuron_stats.safetensors", "layer_counts.parquet",
                                      "overlap.parquet", "neuron_summary.parquet"}
    counts = pd.read_parquet(find_dir / "layer_counts.parquet")
    assert list(counts.columns) == ["emotion", "layer", "count"]
    summary = pd.read_parquet(find_dir / "neuron_summary.parquet")
    assert list(summary["rank"]) == list(range(1, len(summary) + 1))  # 1 = lowest entropy
    assert summary["entropy"].is_monotonic_increasing

    r = runner.invoke(app, ["neurons", "mask", "--model", "tiny-llama", "--neurons", str(find_dir / "neurons.json"),
                            "--limit-per-label", "2", "--controls", "2", "--out", str(mask_dir), "--quiet"])
    assert r.exit_code == 0, r.output
    eff = pd.read_parquet(mask_dir / "mask_effects.parquet")
    assert {"masked_emotion", "true_label", "n", "acc_normal", "acc_masked", "acc_control", "delta_masked",
            "delta_control", "diff", "ci_low", "ci_high"} <= set(eff.columns)
    assert len(eff) == 6 * 7  # 6 masked emotions x (6 true labels + "all")
    errors = pd.read_parquet(mask_dir / "mask_errors.parquet")
    assert list(errors.columns) == ["masked_emotion", "true_label", "predicted", "count"]
