"""The HTML report and the ``report`` command: what goes in, offline-ness, errors.

Also provides the run-directory builders the browser test uses: ``make_fake_runs`` (tables of the
documented schemas, instant) and ``make_real_demo_run`` (neurons find + mask + token views on the
tiny random Llama, seconds).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from emocircuits.base.errors import EmocircuitsError
from emocircuits.runs.rundir import RunDir
from emocircuits.viz import EMOTIONS, TokenView, build_report, write_report
from emocircuits.viz.tokens import ROOT_CLASS

MODEL = {"model_id": "fake/model", "n_layers": 6, "d_mlp": 64, "n_heads": 4, "dtype": "float32"}


def fake_tables(seed: int = 0) -> dict[str, pd.DataFrame]:
    """Tables with the schemas of `neurons find`, `neurons mask` and `sweep` (fractions, as written)."""
    rng = np.random.default_rng(seed)
    sets = {e: sorted({(int(rng.integers(0, 6)), int(rng.integers(0, 64))) for _ in range(12)}) for e in EMOTIONS}
    layer_counts = pd.DataFrame([{"emotion": e, "layer": layer, "count": sum(1 for a, _ in s if a == layer)}
                                 for e, s in sets.items() for layer in range(6)])
    overlap = []
    for a in EMOTIONS:
        for b in EMOTIONS:
            sa, sb = set(sets[a]), set(sets[b])
            overlap.append({"a": a, "b": b, "jaccard": len(sa & sb) / len(sa | sb),
                            "overlap_min": len(sa & sb) / min(len(sa), len(sb)), "n_a": len(sa), "n_b": len(sb),
                            "n_shared": len(sa & sb)})
    effects = []
    for m in EMOTIONS:
        for t in [*EMOTIONS, "all"]:
            normal = 0.9
            masked = 0.4 if m == t else 0.88
            control = 0.89
            effects.append({"masked_emotion": m, "true_label": t, "n": 30, "n_neurons": 12, "acc_normal": normal,
                            "acc_masked": masked, "acc_control": control, "delta_masked": masked - normal,
                            "delta_control": control - normal, "diff": masked - control,
                            "ci_low": masked - control - 0.05, "ci_high": masked - control + 0.04})
    errors = pd.DataFrame([{"masked_emotion": m, "true_label": m, "predicted": p, "count": 1 + (i * 7 + j) % 5}
                           for i, m in enumerate(EMOTIONS) for j, p in enumerate(EMOTIONS) if p != m])
    results = []
    for e in EMOTIONS:
        for ratio in (0.01, 0.02, 0.03):
            for layers in ("bottom", "middle", "top", "all"):
                for seed_ in (0, 1):
                    drop = -0.1 * ratio * 100 * (2 if layers == "all" else 1)
                    results.append({"analysis": "neuron_masking", "emotion": e, "layers": layers, "ratio": ratio,
                                    "ratio_mode": "truncate", "seed": seed_, "acc_normal": 0.9,
                                    "acc_masked": 0.9 + drop, "acc_control": 0.89, "delta_masked": drop,
                                    "delta_control": -0.01, "diff": drop + 0.01, "ci_low": drop - 0.03,
                                    "ci_high": drop + 0.05, "status": "ok", "error": None})
    results.append({"analysis": "neuron_masking", "emotion": "anger", "layers": "all", "ratio": 0.05,
                    "ratio_mode": "truncate", "seed": 0, "status": "failed", "error": "boom"})
    summary = pd.DataFrame([{"layer": a, "neuron": b, "entropy": 0.1 * k, "emotions": e, "rank": k,
                             **{f"p_{x}": 0.5 if x == e else 0.01 for x in EMOTIONS}}
                            for k, (e, (a, b)) in enumerate((e, p) for e in EMOTIONS for p in sets[e][:2])])
    return {"neuron_summary": summary, "neurons": {"neurons": {e: [list(p) for p in s] for e, s in sets.items()}, "config": {"top_rate": 0.01}},
            "layer_counts": layer_counts, "overlap": pd.DataFrame(overlap), "mask_effects": pd.DataFrame(effects),
            "mask_errors": errors, "results": pd.DataFrame(results)}


def fake_views() -> list[TokenView]:
    from emocircuits.viz import attention_heads, neuron_set_tokens, top_examples

    toks = ["I", " am", " so", " angry", " today"]
    pattern = np.tril(np.ones((2, 5, 5)))
    pattern /= pattern.sum(-1, keepdims=True)
    return [neuron_set_tokens(toks, [0.1, -0.2, 0.5, 2.0, 0.3], emotion="anger"),
            top_examples([(toks, [0, 0, 1, 3, 0]), (toks[:3], [0.5, 0, 0])], layer=2, neuron=7),
            attention_heads(toks, pattern, ["L1H0", "L2H3"])]


def make_fake_runs(root: Path) -> dict[str, Path]:
    """Three run directories: a demo (find + mask + token views), a sweep, and one with nothing to draw."""
    t = fake_tables()
    with RunDir.create(root / "demo", command="demo", config={"top_rate": 0.01}, model_spec=MODEL, seed=0) as run:
        run.write_json("neurons", t["neurons"])
        for name in ("layer_counts", "overlap", "mask_effects", "mask_errors", "neuron_summary"):
            run.write_table(name, t[name])
        run.write_json("token_views", {"views": [v.to_dict() for v in fake_views()]})
    with RunDir.create(root / "sweep", command="sweep", config={"analysis": "neuron_masking"}, model_spec=MODEL,
                       seed=0) as run:
        run.write_table("results", t["results"])
    with RunDir.create(root / "empty", command="models", config={}, model_spec=None, seed=None) as run:
        run.write_json("other", {"x": 1})
    return {"demo": root / "demo", "sweep": root / "sweep", "empty": root / "empty"}


def make_real_demo_run(path: Path) -> Path:
    """`neurons find` + `neurons mask` + token views on the tiny random Llama, written like `demo` does."""
    from emocircuits.core.models import tiny_model
    from emocircuits.data import load_data
    from emocircuits.methods import neurons, tokenviews

    model, spec = tiny_model("llama", seed=0)
    train = load_data("builtin:dialogues", split="train", limit_per_label=2)
    test = load_data("builtin:dialogues", split="test", limit_per_label=2)
    stats = neurons.collect(model, train, template="raw", progress=False)
    sel = stats.select(top_rate=0.05)
    res = neurons.mask(model, test, sel, controls=1, n_boot=50, template="raw", progress=False)
    emotion = max(sel.sets, key=lambda e: len(sel.sets[e]))
    views = [tokenviews.neuron_set_view(model, test[0].text[:300], sel, emotion),
             tokenviews.top_examples_view(model, [ex.text[:200] for ex in test[:4]], 1, 3, k=3, progress=False),
             tokenviews.attention_view(model, test[1].text[:120], [(0, 0), (2, 3)])]
    with RunDir.create(path, command="demo", config={"top_rate": 0.05, "template": "raw"}, model_spec=spec,
                       seed=0) as run:
        run.write_json("neurons", sel.to_json())
        run.write_table("layer_counts", sel.layer_table())
        run.write_table("overlap", sel.overlap())
        run.write_table("mask_effects", res.effects)
        run.write_table("mask_errors", res.errors)
        run.write_json("token_views", tokenviews.views_document(views))
    return path


@pytest.fixture(scope="module")
def fake_runs(tmp_path_factory) -> dict[str, Path]:
    return make_fake_runs(tmp_path_factory.mktemp("runs"))


def test_report_contains_every_supported_figure_once_per_input(fake_runs, tmp_path):
    report = write_report([fake_runs["demo"], fake_runs["sweep"], fake_runs["empty"]], tmp_path / "r.html",
                          progress=False)
    html = (tmp_path / "r.html").read_text()
    demo, sweep, empty = report.runs
    assert [i.title for i in demo.items if i.kind == "figure"] == [
        "Layer distribution (Fig. 1)", "Overlap between emotion sets (Fig. 14)", "Accuracy under masking (Fig. 2)",
        "Accuracy change grid", "Misclassifications under masking (Fig. 15)"]
    assert [i.title for i in sweep.items] == ["Masking-ratio sweep (Fig. 3)", "Layer-range sweep (Fig. 4)"]
    assert demo.n_token_views == 3 and empty.items == [] and not empty.skipped
    assert report.n_figures == 7 and report.n_token_views == 3
    assert html.count("class='ec-figure'") == 7
    assert html.count(f"class='{ROOT_CLASS}'") == 3
    assert "no file the report knows how to draw" in html
    assert [i.title for i in demo.items if i.kind == "html"] == ["Most selective neurons"]
    first = fake_tables()["neuron_summary"].iloc[0]
    assert f"<td>0</td><td>L{first.layer}.N{first.neuron}</td><td>0.0000</td><td>anger</td>" in html


def test_report_is_self_contained(fake_runs):
    html = build_report([fake_runs["demo"], fake_runs["sweep"]], progress=False).html
    from plotly.offline import get_plotlyjs

    assert html.count(get_plotlyjs()[:2000]) == 1, "plotly.js must be inlined exactly once"
    assert html.count("var CircuitsVis=") == 1, "circuitsvis must be inlined exactly once"
    assert not re.search(r"<script[^>]+src=", html), "no external script"
    assert not re.search(r"<link[^>]+href=", html), "no external stylesheet"
    assert "unpkg.com" not in html and "cdn.plot.ly/plotly" not in html
    assert "connect-src 'none'" in html  # the CSP forbids any request the page might try


def test_manifest_summary_at_top(fake_runs):
    html = build_report([fake_runs["demo"], fake_runs["sweep"]], progress=False).html
    summary = html.index("id='summary'")
    assert summary < html.index("id='run-1'") < html.index("id='run-2'")
    head = html[summary:html.index("id='run-1'")]
    for needle in ("demo", "sweep", "fake/model", "6 layers × 64 neurons", "complete", "5 figures, 3 token views"):
        assert needle in head, needle


def test_unusable_input_is_listed_not_dropped(tmp_path):
    bad = pd.DataFrame({"emotion": ["anger"], "ratio": [0.01], "acc_normal": [0.9], "acc_masked": [0.8]})
    with RunDir.create(tmp_path / "s", command="sweep", config={}, model_spec=MODEL, seed=0) as run:
        run.write_table("results", bad)
    report = build_report(tmp_path / "s", progress=False)
    assert report.n_figures == 0
    reasons = dict(report.runs[0].skipped)
    assert "at least two masking ratios" in reasons["Masking-ratio sweep (Fig. 3)"]
    assert "layers" in reasons["Layer-range sweep (Fig. 4)"]
    assert "Not shown" in report.html


def test_no_manifest_is_one_sentence_error(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(EmocircuitsError, match=r"is not a run directory \(no manifest.json\)"):
        build_report([tmp_path / "x"], progress=False)
    with pytest.raises(EmocircuitsError, match="is not a directory"):
        build_report([tmp_path / "missing"], progress=False)
    with pytest.raises(EmocircuitsError, match="No run directory"):
        build_report([], progress=False)


def test_damaged_files_are_one_sentence_errors(tmp_path, fake_runs):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(fake_runs["demo"], run)
    (run / "mask_effects.parquet").write_bytes(b"not parquet")
    with pytest.raises(EmocircuitsError, match="cannot be read as Parquet"):
        build_report(run, progress=False)
    (run / "manifest.json").write_text("{broken")
    with pytest.raises(EmocircuitsError, match="not valid JSON"):
        build_report(run, progress=False)


def test_output_path_that_is_a_directory(fake_runs, tmp_path):
    with pytest.raises(EmocircuitsError, match="is a directory"):
        write_report(fake_runs["demo"], tmp_path, progress=False)


def _app() -> typer.Typer:
    from emocircuits.cli import report

    app = typer.Typer()
    report.register(app)

    @app.callback()
    def _root() -> None:  # keep `report` a sub-command, as in the real CLI
        pass

    return app


def test_report_command(fake_runs, tmp_path):
    out = tmp_path / "cli.html"
    result = CliRunner().invoke(_app(), ["report", str(fake_runs["demo"]), str(fake_runs["sweep"]), "-o", str(out),
                                         "--quiet", "--title", "My runs"])
    assert result.exit_code == 0, result.output
    assert out.exists() and "<title>My runs</title>" in out.read_text()
    assert "7 figures" in result.output and "3 token views" in result.output
    assert "report:" not in result.output  # --quiet: no progress bars


def test_report_command_error(tmp_path):
    (tmp_path / "x").mkdir()
    result = CliRunner().invoke(_app(), ["report", str(tmp_path / "x"), "-o", str(tmp_path / "o.html")])
    assert isinstance(result.exception, EmocircuitsError)
    assert not (tmp_path / "o.html").exists()


def test_real_tiny_run_report(tmp_path):
    """A run directory written by the real neurons code on the tiny model gives every figure."""
    run = make_real_demo_run(tmp_path / "demo")
    report = build_report(run, progress=False)
    assert report.runs[0].skipped == []
    assert report.n_figures == 5 and report.n_token_views == 3
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"]["n_layers"] == 3
