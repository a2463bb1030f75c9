"""Bad input III (issue 29), class 6 and 11 at the run-directory level: runs are written aside and swapped
in, a refusal leaves ``--out`` as it was, and ``rerun`` replays relative paths from any working folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emocircuits.base.errors import EmocircuitsError
from emocircuits.runs import RunDir, read_manifest, resolve_paths


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_new_run_over_an_old_one_never_mixes_files(tmp_path):
    out = tmp_path / "run"
    with RunDir.create(out, command="x", config={}) as run:
        run.write_json("a", {"n": 1})
        run.write_json("stability", {"old": True})
    with RunDir.create(out, command="x", config={}) as run:
        run.write_json("a", {"n": 2})
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "manifest.json"]
    assert list(read_manifest(out)["files"]) == ["a.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left aside


@pytest.mark.parametrize("exc", [EmocircuitsError("refused."), KeyboardInterrupt(), RuntimeError("crash")])
def test_a_run_that_does_not_finish_leaves_an_old_run_as_it_was(tmp_path, exc):
    out = tmp_path / "run"
    with RunDir.create(out, command="x", config={}) as run:
        run.write_json("a", {"n": 1})
    before = _files(out)
    with pytest.raises(type(exc)), RunDir.create(out, command="x", config={}) as run:
        run.write_json("b", {"n": 2})
        raise exc
    assert _files(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_refusal_creates_nothing(tmp_path):
    out = tmp_path / "new" / "run"
    with pytest.raises(EmocircuitsError), RunDir.create(out, command="x", config={}):
        raise EmocircuitsError("refused.")
    assert not (tmp_path / "new").exists()
    with pytest.raises(EmocircuitsError), RunDir.create(out, command="x", config={}, staged=False):
        raise EmocircuitsError("refused.")
    assert not (tmp_path / "new").exists()


def test_a_crash_in_a_new_folder_keeps_the_failed_manifest(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), RunDir.create(out, command="x", config={}):
        raise RuntimeError("boom")
    assert read_manifest(out)["status"] == "failed"


def test_manifest_missing_a_key_is_one_sentence(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"command": "classify", "status": "complete", "files": {}}))
    with pytest.raises(EmocircuitsError, match="has no 'config' entry.*`emocircuits classify`"):
        read_manifest(tmp_path)


def test_relative_paths_resolve_against_the_recorded_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.jsonl").write_text("{}\n")
    cfg = {"data": "jsonl:d/x.jsonl", "from": "d", "labels": ["anger"], "nested": {"spec": "jsonl:d/x.jsonl"},
           "model": "tiny-llama", "abs": "/etc"}
    got = resolve_paths(cfg, tmp_path)
    assert got["data"] == f"jsonl:{(tmp_path / 'd' / 'x.jsonl').resolve()}"
    assert got["from"] == str((tmp_path / "d").resolve()) and got["nested"]["spec"] == got["data"]
    assert got["labels"] == ["anger"] and got["model"] == "tiny-llama" and got["abs"] == "/etc"


def test_rerun_of_a_relative_data_path_from_another_folder(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from emocircuits.cli.app import app

    work = tmp_path / "work"
    work.mkdir()
    (work / "six.jsonl").write_text("".join(json.dumps({"text": f"text {e}", "label": e}) + "\n" for e in
                                            ("anger", "disgust", "fear", "happiness", "sadness", "surprise")))
    monkeypatch.chdir(work)
    r = CliRunner().invoke(app, ["judge", "--judge", "lexicon", "--data", "jsonl:six.jsonl", "--quiet", "--out", "first"])
    assert r.exit_code == 0, r.output
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["rerun", "work/first", "--out", "second"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert (tmp_path / "second" / "manifest.json").exists()


def test_bom_sweep_toml_and_tsv_load(tmp_path):
    from emocircuits.data import load_data
    from emocircuits.sweeps import load_config

    (tmp_path / "t.tsv").write_text("text\tlabel\nhello there\tanger\n")
    assert len(load_data(f"tsv:{tmp_path / 't.tsv'}")) == 1
    (tmp_path / "b.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "hi", "label": "fear"}).encode() + b"\n")
    assert len(load_data(f"jsonl:{tmp_path / 'b.jsonl'}")) == 1
    toml = ('[sweep]\nanalysis = "intervention"\n[model]\nspec = "tiny-llama"\n'
            f'[data]\nspec = "jsonl:{tmp_path / "b.jsonl"}"\nsplit = "all"\n[analysis.intervention]\ntype = "ScaleHeads"\n'
            'heads = "{layers}:all"\nfactor = "{factor}"\n[grid]\nlayers = ["0"]\nfactor = [0.0]\n')
    (tmp_path / "s.toml").write_bytes(b"\xef\xbb\xbf" + toml.encode())
    assert load_config(tmp_path / "s.toml").analysis == "intervention"
