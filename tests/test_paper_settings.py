"""Issue 24, paper settings: data read completely or refused, probe estimators as options, presets recorded as
the README's table says, replayable runs (kept ids, split ids, pairs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.presets import PRESETS, resolve, settings_for, shown
from emocircuits.cli.app import app
from emocircuits.core.prompts import get_template
from emocircuits.data import load_data, rated_only

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "fixtures" / "paper_settings"
CSV, JSONL = FIX / "envent_style.csv", FIX / "envent_style.jsonl"
FOUR = "joy,sadness,anger,fear"
SMALL = ["--model", "tiny-llama", "--labels", FOUR, "--all-examples", "--controls", "1", "--folds", "2", "--quiet"]


def _run(argv: list[str]):
    r = runner.invoke(app, argv)
    assert r.exit_code == 0, (r.output, r.exception)
    return r


def readme_rows() -> list[tuple[str, str, str, str]]:
    """The README's preset table: (preset, setting, value, commands) per row."""
    pattern = r"^\| (\w+) \| (\w+) \| `([^`]*)` \| ([^|]*) \| (.*) \|$"
    return [(m[1], m[2], m[3], m[4]) for m in re.finditer(pattern, (ROOT / "README.md").read_text(), re.M)]


def readme_presets(command: str) -> dict[str, dict[str, str]]:
    """``{preset: {setting: value}}`` of the README's rows that apply to ``command``."""
    out: dict[str, dict[str, str]] = {}
    for preset, key, value, commands in readme_rows():
        if commands == "all" or command in commands.split(", "):
            assert key not in out.get(preset, {}), (preset, key, command)
            out.setdefault(preset, {})[key] = value
    return out


# ------------------------------------------------------------------------------------------- data
def test_csv_columns_and_nested_jsonl_ratings_load_the_same():
    a = load_data(f"envent:{CSV}", labels=FOUR.split(","), text_field="hidden_emo_text")
    b = load_data(f"jsonl:{JSONL}", labels=FOUR.split(","), text_field="hidden_emo_text", label_field="emotion")
    assert [e.id for e in a] == [e.id for e in b] and [e.text for e in a] == [e.text for e in b]
    assert a.info["ratings"] == b.info["ratings"] and len(a.info["ratings"]["columns"]) == 20
    assert a.info["ratings"]["rated_rows"] == len(a)
    assert all(a[i].meta[k] == b[i].meta[k] for i in range(len(a)) for k in a.info["ratings"]["columns"])
    assert "appraisal" not in b[0].meta  # flattened, not kept as an object


def test_named_ratings_and_refusals(tmp_path):
    ds = load_data(f"jsonl:{JSONL}", labels=FOUR.split(","), label_field="emotion", text_field="generated_text",
                   appraisals=["urgency", "effort"])
    assert ds.info["ratings"]["columns"] == ["urgency", "effort"] and "pleasantness" not in ds[0].meta
    with pytest.raises(EmocircuitsError, match="no row rates nosuch"):
        load_data(f"jsonl:{JSONL}", labels=FOUR.split(","), label_field="emotion", text_field="generated_text",
                  appraisals=["nosuch"])
    bad = tmp_path / "obj.jsonl"
    bad.write_text(json.dumps({"text": "x", "label": "anger", "appraisal": {"urgency": {"value": 3, "sd": 0.5}}}) + "\n")
    with pytest.raises(EmocircuitsError, match=r"obj.jsonl, line 1: appraisal rating 'urgency' is \{"):
        load_data(f"jsonl:{bad}", labels=["anger"])


def test_partly_rated_and_unrated_files_say_so(tmp_path):
    f = tmp_path / "part.jsonl"
    f.write_text("".join(json.dumps({"text": f"t{i}", "label": "anger" if i % 2 else "fear",
                                     **({"urgency": 3} if i < 4 else {})}) + "\n" for i in range(6)))
    ds = load_data(f"jsonl:{f}", labels=["anger", "fear"])
    kept, note = rated_only(ds)
    assert len(kept) == 4 and "dropped 2 of 6" in note
    g = tmp_path / "none.jsonl"
    g.write_text("".join(json.dumps({"text": f"t{i}", "label": "anger", "topic": "x"}) + "\n" for i in range(3)))
    with pytest.raises(EmocircuitsError, match=r"holds no appraisal ratings \(its fields: label, text, topic\)"):
        rated_only(load_data(f"jsonl:{g}", labels=["anger"]))


def test_tak2025_prompt_is_plain_fewshot_and_maps_joy():
    t = get_template("tak2025")
    assert t.kind == "plain"
    ekman = t.render("It rained.", ["anger", "happiness", "sadness"])
    assert ekman == ("What are the inferred emotions in the following contexts? Context: My first child was born. "
                     "Answer: happiness Context: My dog died last week. Answer: sadness Context: It rained. Answer:")
    assert "Answer: joy Context" in t.render("x", ["joy", "sadness"])
    assert get_template("lee2025").system == get_template("chat_lee").system


def test_sev_reads_the_authors_skeleton_files_as_they_are(tmp_path):
    events = {"positive": "It went well.", "neutral": "It went.", "negative": "It went badly."}
    theirs, ours = tmp_path / "theirs.jsonl", tmp_path / "ours.jsonl"
    theirs.write_text(json.dumps({"theme": "Work/Job", "scenario": "I sent the report", "event": events,
                                  "skeleton_id": "work_00"}) + "\n")
    ours.write_text(json.dumps({"theme": "Work/Job", "scenario": "I sent the report", "events": events,
                                "id": "work_00"}) + "\n")
    a, b = load_data(f"sev:{theirs}"), load_data(f"sev:{ours}")
    assert [(e.id, e.text, e.label, e.meta) for e in a] == [(e.id, e.text, e.label, e.meta) for e in b]
    assert [e.id for e in a] == ["work_00:positive", "work_00:neutral", "work_00:negative"]
    theirs.write_text(json.dumps({"scenario": "x", "event": "not an object"}) + "\n")
    with pytest.raises(EmocircuitsError, match="missing field"):
        load_data(f"sev:{theirs}")


# ------------------------------------------------------------------------------------------- probes
def test_csv_and_nested_jsonl_give_the_same_probe_table_with_tak2025(tmp_path):
    a, b = tmp_path / "csv", tmp_path / "jsonl"
    r = _run(["inference", "probe", "--data", f"envent:{CSV}", "--text-field", "hidden_emo_text", "--preset", "tak2025",
              *SMALL, "--out", str(a)])
    _run(["inference", "probe", "--data", f"jsonl:{JSONL}", "--text-field", "hidden_emo_text", "--label-field",
          "emotion", "--preset", "tak2025", *SMALL, "--out", str(b)])
    ta, tb = pd.read_parquet(a / "probes.parquet"), pd.read_parquet(b / "probes.parquet")
    pd.testing.assert_frame_equal(ta, tb)
    assert set(ta.target) >= {"emotion", "pleasantness"} and ta.target.nunique() == 21
    assert "--all-examples True given, overriding" in r.output
    # the manifest holds the preset as the README's table says (all_examples: overridden on purpose)
    cfg = json.loads((a / "manifest.json").read_text())["config"]
    assert cfg["preset"] == "tak2025"
    for key, value in readme_presets("inference probe")["tak2025"].items():
        expect = "True" if key == "all_examples" else value
        assert str(cfg[key]) == expect and str(cfg["preset_settings"][key]) == expect, key
    # replayable: kept ids and the split ids
    ex = json.loads((a / "examples.json").read_text())
    split = json.loads((a / "split.json").read_text())
    assert len(ex["kept"]) == 24 and sorted(split["train"] + split["test"]) == sorted(ex["kept"])
    assert len(split["test"]) == 5


def test_probe_estimators_are_keywords_and_change_the_fit():
    import numpy as np
    import torch

    from emocircuits.methods.inference.probes import probe_activations

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 10)
    x = torch.tensor(rng.standard_normal((20, 4)) * [1, 10, 100, 1000] + y[:, None])
    base = probe_activations({"resid.post": {0: x}}, y, ["a", "b"], controls=1, folds=2)
    raw = probe_activations({"resid.post": {0: x}}, y, ["a", "b"], controls=1, folds=2, standardise=False,
                            stratify=False, c=0.5, test_size=0.3, seed=1)
    assert raw.config | {} == {**raw.config, "standardise": False, "stratify": False, "C": 0.5, "test_size": 0.3}
    assert len(raw.split["test"]) == 6 and base.config["standardise"] is True
    capped, free = (probe_activations({"resid.post": {0: x}}, y, ["a", "b"], controls=1, folds=2, standardise=False,
                                      max_iter=m) for m in (1, 2000))
    assert capped.config["max_iter"] == 1 and base.config["max_iter"] == free.config["max_iter"] == 2000
    assert not np.allclose(capped.emotion_directions["b"].vectors["resid.post"][0],
                           free.emotion_directions["b"].vectors["resid.post"][0])


# ------------------------------------------------------------------------------------------- presets
def test_readme_table_is_the_presets():
    assert readme_rows() == [(p, s.key, shown(s.value), ", ".join(s.commands) if s.commands else "all")
                             for p, settings in PRESETS.items() for s in settings]


def test_lee2025_preset_manifest_matches_the_readme(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"{lab} text {i}", "label": lab}) + "\n"
                            for lab in ("anger", "disgust", "fear", "happiness", "sadness", "surprise") for i in range(2)))
    r = _run(["neurons", "find", "--model", "tiny-llama", "--data", f"jsonl:{data}", "--preset", "lee2025",
              "--stability", "0", "--quiet", "--out", str(tmp_path / "run")])
    assert "preset lee2025:" in r.output
    cfg = json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]
    assert cfg["preset"] == "lee2025"
    assert {k: str(cfg[k]) for k in readme_presets("neurons find")["lee2025"]} == readme_presets("neurons find")["lee2025"]


def test_tak2025_patching_span_and_pairs_only_for_patch():
    base = {"template": "x", "span": 3, "n_pairs": 50, "sites": "mlp.out"}
    patch, _ = resolve("tak2025", base, set(), "inference patch")
    assert (patch["span"], patch["n_pairs"]) == (5, 200) and patch["sites"] == "attn.out,mlp.out,resid.post"
    knock, _ = resolve("tak2025", base, set(), "inference knockout")
    assert (knock["span"], knock["n_pairs"]) == (3, 50) and "span" not in knock["preset_settings"]
    mine, notes = resolve("tak2025", {**base, "n_pairs": 8}, {"n_pairs"}, "inference patch")
    assert mine["n_pairs"] == 8 and "--n-pairs 8 given, overriding the preset's 200" in notes[1]


def test_wang2025_preset_resolves_and_refuses_commands_it_does_not_set():
    cfg, notes = resolve("wang2025", {"groups": "all"}, set(), "circuits directions")
    assert cfg["groups"] == readme_presets("circuits directions")["wang2025"]["groups"] and notes[0].startswith("preset wang2025")
    with pytest.raises(EmocircuitsError, match="sets nothing that inference probe has"):
        resolve("wang2025", {"template": "x"}, set(), "inference probe")


def _manifest_config(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())["config"]


def _wang_recorded(cfg: dict, command: str, overridden: dict) -> None:
    """The run's config holds every wang2025 setting the README lists for ``command``, except ``overridden``."""
    assert cfg["preset"] == "wang2025"
    want = {**readme_presets(command)["wang2025"], **{k: str(v) for k, v in overridden.items()}}
    assert {k: shown(cfg[k]) for k in want} == want, command
    assert {k: shown(v) for k, v in cfg["preset_settings"].items()} == want, command


def test_wang2025_preset_on_every_circuits_command(tmp_path):
    el, di, co, inf_, asm = (tmp_path / n for n in ("el", "di", "co", "inf", "asm"))
    r = _run(["circuits", "elicit", "--model", "tiny-llama", "--limit", "2", "--max-new-tokens", "2", "--preset",
              "wang2025", "--quiet", "--out", str(el)])
    assert "preset wang2025: system=two_lines, max_new_tokens=2, dtype=float32" in r.output
    assert "--max-new-tokens 2 given, overriding the preset's 100" in r.output
    _wang_recorded(_manifest_config(el), "circuits elicit", {"max_new_tokens": 2})
    _run(["circuits", "directions", "--from", str(el), "--groups", "all", "--n-boot", "2", "--shuffles", "0",
          "--preset", "wang2025", "--quiet", "--out", str(di)])
    _wang_recorded(_manifest_config(di), "circuits directions", {"groups": "all"})
    _run(["circuits", "components", "--from", str(di), "--top-k", "2", "--preset", "wang2025", "--quiet",
          "--out", str(co)])
    _wang_recorded(_manifest_config(co), "circuits components", {})
    r = _run(["circuits", "influence", "--from", str(di), "--emotion", "anger", "--max-prompts", "2", "--preset",
              "wang2025", "--quiet", "--out", str(inf_)])
    _wang_recorded(_manifest_config(inf_), "circuits influence", {})
    summary = json.loads((inf_ / "manifest.json").read_text())["summary"]
    window = summary["ref_layers"]  # the paper's 21-25 of 28 on tiny-llama's layers; anchored at its first
    assert summary["ref_anchor"] == ["resid.mid", window[0]] and summary["sigma_prompts"] == "elicit"
    _run(["circuits", "assemble", "--influence", str(inf_), "--components", str(co), "--preset", "wang2025",
          "--quiet", "--out", str(asm)])
    _wang_recorded(_manifest_config(asm), "circuits assemble", {})
    st = tmp_path / "st"
    _run(["circuits", "steer", "--directions", str(di), "--split", "all", "--limit", "1", "--emotion", "anger",
          "--methods", "residual,none", "--max-new-tokens", "12", "--preset", "wang2025", "--quiet", "--out", str(st)])
    cfg = _manifest_config(st)
    _wang_recorded(cfg, "circuits steer", {"max_new_tokens": 12})
    assert cfg["system"].startswith("\n    Keep") and cfg["repetition_penalty"] == 1.05
    r = _run(["steer", "Tell me about your day.", "--emotion", "anger", "--method", "residual", "--directions",
              str(di), "--max-new-tokens", "12", "--preset", "wang2025"])
    assert "preset wang2025:" in r.output and "min_new_tokens=10" in r.output
    va = tmp_path / "va"
    r = _run(["circuits", "validate", "--from", str(co), "--kinds", "neurons", "--scales", "0,1", "--controls", "1",
              "--top-k", "2", "--emotion", "anger", "--max-prompts", "1", "--preset", "wang2025", "--quiet",
              "--out", str(va)])
    assert "preset wang2025: max_new_tokens=100" in r.output
    manifest = json.loads((va / "manifest.json").read_text())
    assert "wang2025" in json.dumps(manifest)


def test_wang2025_system_is_per_command_and_the_anchor_rule():
    from emocircuits.jobs.circuit_build import paper_anchor

    systems = {c: settings_for("wang2025", c)["system"].value for c in ("circuits elicit", "circuits influence",
                                                                        "circuits steer", "steer")}
    assert systems["circuits elicit"] == "two_lines" and systems["circuits influence"] != systems["steer"]
    assert systems["circuits steer"] == systems["steer"] == "\n    Keep the reply to at most two sentences.\n    "
    assert shown(systems["steer"]) == "\\n    Keep the reply to at most two sentences.\\n    "
    assert paper_anchor(28, [21, 22, 23, 24, 25], 1 / 6) == ("resid.mid", 21)
    assert paper_anchor(30, None, 1 / 6) == ("resid.mid", 25)  # the default window, the last ceil(30/6) layers
    with pytest.raises(EmocircuitsError, match="sets nothing that inference probe has"):
        resolve("wang2025", {"template": "x"}, set(), "inference probe")


# ------------------------------------------------------------------------------------------- pairs
def test_patch_records_pairs_and_replays_them_from_a_file(tmp_path):
    common = ["inference", "patch", "--data", f"envent:{CSV}", *[a for a in SMALL if a not in ("--folds", "2",
              "--controls", "1")], "--sites", "mlp.out", "--span", "2", "--stride", "2", "--n-pairs", "4"]
    _run([*common, "--out", str(tmp_path / "a")])
    pairs = json.loads((tmp_path / "a" / "pairs.json").read_text())
    assert len(pairs) == 4 and set(pairs[0]) == {"source_id", "target_id"}
    f = tmp_path / "pairs.csv"
    f.write_text("source_id,target_id\n" + "".join(f"{p['source_id']},{p['target_id']}\n" for p in pairs))
    _run([*common, "--pairs", str(f), "--out", str(tmp_path / "b")])
    assert json.loads((tmp_path / "b" / "pairs.json").read_text()) == pairs
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "patching.parquet"),
                                  pd.read_parquet(tmp_path / "b" / "patching.parquet"))


# ------------------------------------------------------------------------------------------- sweeps
def _sweep_toml(tmp_path: Path, sweep_extra: str = "", data_extra: str = "") -> Path:
    data = tmp_path / "six.jsonl"
    data.write_text("".join(json.dumps({"text": f"{lab} story {i}", "label": lab}) + "\n"
                            for lab in ("anger", "disgust", "fear", "happiness", "sadness", "surprise")
                            for i in range(2)))
    f = tmp_path / "sweep.toml"
    f.write_text(f'[sweep]\nanalysis = "intervention"\n{sweep_extra}[model]\nspec = "tiny-llama"\n'
                 f'[data]\nspec = "jsonl:{data}"\nsplit = "all"\nlimit_per_label = 1\n{data_extra}[analysis]\nn_boot = 10\n'
                 '[analysis.intervention]\ntype = "ScaleHeads"\nheads = "{layers}:all"\nfactor = "{factor}"\n'
                 '[grid]\nlayers = ["0"]\nfactor = [0.0, 1.0]\n')
    return f


def test_sweep_preset_resolves_like_the_flag_and_is_recorded_per_cell(tmp_path):
    from emocircuits.sweeps import load_config

    cfg = load_config(_sweep_toml(tmp_path, 'preset = "tak2025"\n'))
    assert cfg.data.template == "tak2025" and cfg.preset_settings == {"template": "tak2025"}
    assert cfg.preset_notes == ("preset tak2025: template=tak2025",)
    r = _run(["sweep", str(_sweep_toml(tmp_path, 'preset = "tak2025"\n')), "--quiet", "--out", str(tmp_path / "s")])
    assert "preset tak2025: template=tak2025" in r.output
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["config"]["sweep"]["preset"] == "tak2025" and manifest["config"]["data"]["template"] == "tak2025"
    assert manifest["preset"] == {"name": "tak2025", "settings": {"template": "tak2025"}}
    cells = sorted((tmp_path / "s" / "cells").glob("*.json"))
    assert len(cells) == 2 and all(json.loads(c.read_text())["preset"]["name"] == "tak2025" for c in cells)
    # a key written in the file wins, with a note; the sweep's identity is what ran (template raw)
    over = load_config(_sweep_toml(tmp_path, 'preset = "tak2025"\n', 'template = "raw"\n'))
    assert over.data.template == "raw" and over.preset_settings == {"template": "raw"}
    assert over.preset_notes[1] == "preset tak2025: data.template = 'raw' in the file, overriding the preset's 'tak2025'"
    # without a preset nothing changes, and the same config resolves the same way from Python
    assert load_config(_sweep_toml(tmp_path)).preset_settings == {}
    from emocircuits.sweeps.registry import from_dict

    again = from_dict(manifest["config"])
    assert again.identity() == cfg.identity() and again.preset_settings == {"template": "tak2025"}


def test_sweep_preset_refused_before_any_cell(tmp_path):
    from emocircuits.sweeps import load_config

    f = _sweep_toml(tmp_path, 'preset = "tak2026"\n')
    with pytest.raises(EmocircuitsError, match=r"sweep.toml'?: key 'sweep.preset' names an unknown preset 'tak2026'; "
                                               r"use one of tak2025, lee2025, wang2025\.$"):
        load_config(f)
    r = runner.invoke(app, ["sweep", str(f), "--quiet", "--out", str(tmp_path / "s")])
    assert r.exit_code != 0 and not (tmp_path / "s").exists()
    with pytest.raises(EmocircuitsError, match="sets nothing that sweep intervention has"):
        load_config(_sweep_toml(tmp_path, 'preset = "wang2025"\n'))


# ------------------------------------------------------------------------------------------- judge
def test_judge_reads_named_fields_and_label_schemes(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"story": f"I am so {w}.", "feeling": lab}) + "\n"
                            for lab, w in (("anger", "furious"), ("fear", "scared"), ("anger", "angry"))))
    _run(["judge", "--judge", "lexicon", "--data", f"jsonl:{data}", "--text-field", "story", "--label-field",
          "feeling", "--labels", "anger,fear", "--quiet", "--out", str(tmp_path / "j")])
    metrics = json.loads((tmp_path / "j" / "metrics.json").read_text())
    assert metrics["labels"] == ["anger", "fear"] and metrics["config"]["text_field"] == "story"
    verdicts = pd.read_parquet(tmp_path / "j" / "verdicts.parquet")
    assert sorted(verdicts["true"]) == ["anger", "anger", "fear"]
