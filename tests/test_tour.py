"""`emocircuits demo` (:func:`emocircuits.jobs.demo.run_tour`) on the tiny random Llama at minimal sizes: the run
directory's layout, the printed headline lines, the report's three sections, re-running, bad settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from emocircuits.base.errors import EmocircuitsError
from emocircuits.jobs.demo import PARTS, TOUR_DEFAULTS, check_tour_config, run_tour

#: Every step at its smallest useful size (the tiny model's replies are noise; the plumbing is what is tested).
TINY = {"model": "tiny-llama", "template": "raw", "train_per_label": 2, "test_per_label": 2, "top_rate": 0.05,
        "mask_emotions": [], "controls": 1, "max_new_tokens": 4, "n_boot": 20, "shuffles": 2, "top_k": 4,
        "influence_prompts": 2, "alphas": "0.5", "budget": 12, "events_per_label": 3, "all_examples": True, "folds": 2, "n_pairs": 4,
        "span": 1, "stride": 2}

SUBRUNS = {"neurons/find": "neurons find", "neurons/mask": "neurons mask", "circuits/elicit": "circuits elicit",
           "circuits/directions": "circuits directions", "circuits/components": "circuits components",
           "circuits/influence": "circuits influence", "circuits/assemble": "circuits assemble",
           "circuits/steer": "circuits steer", "inference": "demo inference"}


def make_tour_run(path: Path, model_pair, echo=None):
    """The demo on the tiny model (also what the browser test opens)."""
    return run_tour(TINY, path, quiet=True, model_pair=model_pair, echo=echo)


@pytest.fixture(scope="module")
def tour(tmp_path_factory, tiny_llama):
    import torch

    torch.set_num_threads(1)
    lines: list[str] = []
    out = tmp_path_factory.mktemp("tour") / "demo"
    result = make_tour_run(out, tiny_llama, echo=lines.append)
    return out, result, lines


def test_run_directory_layout(tour):
    out, result, _ = tour
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "demo" and manifest["status"] == "complete"
    assert manifest["config"] == {**TOUR_DEFAULTS, **TINY}
    steps = ["load", "neurons.find", "neurons.mask", "circuits.elicit", "circuits.directions", "circuits.components",
             "circuits.influence", "circuits.assemble", "circuits.steer", "inference.prepare", "inference.probe",
             "inference.patch", "neurons", "circuits", "inference", "after_load", "report", "total"]
    assert set(steps) <= set(manifest["timings"]) and manifest["timings"] == result["timings"]
    assert set(manifest["headlines"]) == {k for k, _ in PARTS}
    for rel, command in SUBRUNS.items():
        sub = json.loads((out / rel / "manifest.json").read_text())
        assert (sub["command"], sub["status"]) == (command, "complete"), rel
    assert {"neurons.json", "mask_effects.parquet"} <= {p.name for p in (out / "neurons").rglob("*")}
    assert (out / "inference" / "probes.parquet").is_file() and (out / "inference" / "patching.parquet").is_file()
    tour_doc = json.loads((out / "tour.json").read_text())
    assert [p["key"] for p in tour_doc["parts"]] == ["neurons", "circuits", "inference"]
    assert sorted(r for p in tour_doc["parts"] for r in p["runs"] if r != ".") == sorted(SUBRUNS)
    assert result["report"] == out / "report.html" and result["report"].stat().st_size > 100_000


def test_headlines_printed_with_cis(tour):
    _, result, lines = tour
    text = "\n".join(lines)
    for title in (t for _, t in PARTS):
        assert f"== {title}" in text
    own = [line for line in lines if " neurons  " in line and "→" in line]
    left_out = [line for line in lines if " left out: no neuron to mask" in line]  # a tiny model's empty sets
    assert len(own) + len(left_out) == 6 and len(own) >= 1
    assert all(("excludes 0" in x) != ("includes 0" in x) and "[" in x for x in own), own
    assert "masked − control (1 random sets), 95% CI" in text
    steer = next(line for line in lines if line.startswith("steering toward anger"))
    assert all(f"{m} " in steer for m in ("circuit", "residual", "prompt", "none")) and steer.count("[") == 4
    assert any(line.startswith("emotion probe (resid.post): best layer") and "control" in line for line in lines)
    assert sum(line.startswith("patching ") and "[" in line for line in lines) == 2  # attn.out, mlp.out
    assert lines[-1].strip().startswith("timings (s): load")
    for key, _ in PARTS:  # what was printed is what the report shows
        assert result["headlines"][key] and all(h in lines for h in result["headlines"][key])


def test_report_has_a_section_per_paper(tour):
    from emocircuits.viz.report import build_report

    out, result, _ = tour
    report = build_report(out, progress=False)
    run = report.runs[0]
    assert [s.key for s in run.sections] == ["neurons", "circuits", "inference"]
    assert run.skipped == [], run.skipped
    titles = {s.key: [i.title for i in run.items[s.start:s.end] if i.kind == "figure"] for s in run.sections}
    assert {"Layer distribution (Fig. 1)", "Accuracy under masking (Fig. 2)"} <= set(titles["neurons"])
    assert {"Cosine between emotion directions", "Head importance", "Emotion circuits",
            "Steering methods compared"} <= set(titles["circuits"])
    assert titles["inference"] == ["Emotion probe accuracy by layer", "Activation patching windows"]
    assert sum(i.kind == "token_view" for i in run.items[run.sections[0].start:run.sections[0].end]) >= 1
    html = report.html
    for s in run.sections:
        assert f"data-section='{s.key}'" in html and s.title in html
        assert len(s.reading) > 200 and s.reading == result["readings"][s.key]
    assert "lowest-entropy" in result["readings"]["neurons"] and "relative to 1 random neuron set with" in result["readings"]["neurons"]
    assert "steer" in result["readings"]["circuits"].lower() and "patching" in result["readings"]["inference"].lower()
    written = result["report"].read_text()  # the report the demo wrote into its run directory
    assert all(f"data-section='{s.key}'" in written for s in run.sections)
    assert written.count("class='ec-figure'") == report.n_figures


def test_rerun_is_registered(tour):
    from emocircuits.sweeps.rerun import registered_commands

    assert "demo" in registered_commands()


def test_bad_settings_are_one_sentence(tmp_path):
    with pytest.raises(EmocircuitsError, match="Unknown demo setting 'nope'"):
        check_tour_config({"nope": 1})
    with pytest.raises(EmocircuitsError, match="--n-pairs must be at least 1"):
        check_tour_config({"n_pairs": 0})
    with pytest.raises(EmocircuitsError, match="--top-rate"):
        check_tour_config({"top_rate": 2})
    with pytest.raises(EmocircuitsError, match="--steer-emotion"):
        check_tour_config({"steer_emotions": []})
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(EmocircuitsError, match="not empty"):
        run_tour({}, tmp_path / "x", echo=None)  # refused before any model loads


def test_cli_demo_prints_the_report_path(tmp_path, monkeypatch, tiny_llama):
    """`emocircuits demo` is the tour: its options reach the config, and it ends with the report's path."""
    from emocircuits.cli.app import app

    seen = {}

    def fake(config, out, quiet=False, echo=None):
        seen.update(config)
        echo("headline")
        return {"report": Path(out) / "report.html"}

    import emocircuits.jobs.demo as demo_job

    monkeypatch.setattr(demo_job, "run_tour", fake)  # the command imports the job when it runs
    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--controls", "2", "--steer-emotion", "joy",
                                 "--steer-emotion", "fear", "--stride", "1", "--all-examples"])
    assert r.exit_code == 0, r.output
    assert seen["controls"] == 2 and seen["steer_emotions"] == ["joy", "fear"] and seen["stride"] == 1
    assert seen["all_examples"] is True and set(seen) <= set(TOUR_DEFAULTS)
    assert r.output.strip().splitlines()[-1] == f"report: {tmp_path / 'd' / 'report.html'}"
