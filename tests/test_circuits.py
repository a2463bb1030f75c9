"""Emotion circuits (Wang et al. 2025): elicitation, directions, components, validation, CLI, figures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from typer.testing import CliRunner

from emocircuits.base.constants import EKMAN6
from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.components import Direction
from emocircuits.core.interventions import capture
from emocircuits.core.runner import Runner
from emocircuits.core.sites import weight
from emocircuits.core.units import HeadSet, NeuronSet
from emocircuits.data import load_data
from emocircuits.methods import circuits as C


@pytest.fixture(scope="module")
def sev():
    return load_data("builtin:sev")


@pytest.fixture(scope="module")
def pipeline(tiny_llama, sev):
    model, _ = tiny_llama
    el = C.elicit(model, sev, limit=2, max_new_tokens=2, judges=("lexicon",), n_boot=50)
    dr = C.emotion_directions(model, el.replies, groups="all", n_boot=20, n_shuffle=3)
    co = C.local_components(model, dr.prompts, dr.directions, top_k=3)
    return el, dr, co


# ----------------------------------------------------------------------------- elicitation


def test_elicitation_items_cross_skeletons_valences_emotions(sev):
    items = C.elicitation_items(sev, limit=3)
    assert len(items) == 3 * 3 * 6
    assert items.skeleton.nunique() == 3 and items.theme.nunique() == 3  # round-robin over themes
    row = items.iloc[0]
    assert row.system == "Always reply in anger. Keep the reply to at most two sentences."
    assert row.user == f"{row.scenario}\n{row.event}"
    assert list(items.emotion[:6]) == list(EKMAN6)
    with pytest.raises(EmocircuitsError):
        C.elicitation_items(sev, limit=0)


def test_elicit_tables(pipeline):
    el, _, _ = pipeline
    assert {"reply", "accepted", "pred_lexicon", "finish"} <= set(el.replies.columns)
    assert len(el.verdicts) == len(el.replies)
    acc = el.accuracy
    pooled = acc[(acc.emotion == "all") & (acc.valence == "all")].iloc[0]
    assert pooled.n == len(el.replies)
    assert pooled.accuracy == pytest.approx(el.verdicts.correct.mean())
    assert (acc.ci_low <= acc.accuracy + 1e-12).all() and (acc.accuracy <= acc.ci_high + 1e-12).all()


def test_judge_replies_accept_modes():
    class Fixed:
        def __init__(self, name, preds):
            self.name, self.labels, self.preds = name, EKMAN6, preds

        def judge(self, texts, targets=None):
            return pd.DataFrame({"predicted": self.preds})

    rep = pd.DataFrame({"skeleton": ["s"] * 3, "valence": ["positive"] * 3, "emotion": ["anger", "fear", "sadness"],
                        "reply": ["a", "b", "c"]})
    j1, j2 = Fixed("j1", ["anger", "fear", "none"]), Fixed("j2", ["anger", "none", "sadness"])
    out = {m: C.judge_replies(rep, [j1, j2], accept=m, n_boot=10)[0].accepted.tolist()
           for m in ("first", "all", "any", "j2")}
    assert out == {"first": [True, True, False], "all": [True, False, False], "any": [True, True, True],
                   "j2": [True, False, True]}
    with pytest.raises(EmocircuitsError):
        C.judge_replies(rep, [j1], accept="bogus")


# ----------------------------------------------------------------------------- directions


def _hand_built():
    """3 skeletons × 2 valences × 3 emotions; big (skeleton, valence) offsets; one group incomplete."""
    g = torch.Generator().manual_seed(0)
    emos = ["anger", "fear", "happiness"]
    rows, acts = [], []
    for s in range(3):
        for v, val in enumerate(["positive", "negative"]):
            offset = torch.randn(2, 4, generator=g) * 10 + (s * 3 + v * 7)
            for e in emos:
                acc = not (s == 2 and val == "negative" and e == "fear")  # this group must be dropped
                rows.append({"skeleton": f"s{s}", "valence": val, "emotion": e, "system": "", "user": "",
                             "accepted": acc})
                acts.append(offset + torch.randn(2, 4, generator=g))  # [L=2, d=4]
    return pd.DataFrame(rows), torch.stack(acts), emos  # acts [n, L, d]


def test_directions_equal_the_formula_grouped_by_skeleton_and_valence():
    rep, acts, emos = _hand_built()
    dr = C.emotion_directions(None, rep, activations={"resid.post": acts}, n_boot=0, n_shuffle=0)
    assert dr.summary["n_groups"] == 5 and dr.summary["n_groups_total"] == 6
    assert set(map(tuple, dr.groups.to_numpy())) == {(f"s{s}", v) for s in range(3) for v in ("positive", "negative")} \
        - {("s2", "negative")}
    # the formula by hand, groups = (skeleton, valence) pairs with every emotion accepted
    cs = []
    for (_sk, _va), d in rep.groupby(["skeleton", "valence"]):
        if not d.accepted.all():
            continue
        x = torch.stack([acts[d.index[d.emotion == e][0]] for e in emos]).double()  # [E, L, d]
        cs.append(x - x.mean(0))
    c = torch.stack(cs).mean(0)
    c = c - c.mean(0)
    v = c / c.norm(dim=-1, keepdim=True)
    for j, e in enumerate(emos):
        for layer in range(2):
            torch.testing.assert_close(dr.directions[e].vector("resid.post", layer).double(), v[j, layer],
                                       atol=1e-5, rtol=0)
    # grouping by skeleton only (valences pooled) would give something else on this data
    wrong = []
    for _sk, d in rep.groupby("skeleton"):
        x = torch.stack([acts[d.index[d.emotion == e]].mean(0) for e in emos]).double()
        wrong.append(x - x.mean(0))
    w = torch.stack(wrong).mean(0)
    w = w / w.norm(dim=-1, keepdim=True)
    got = torch.stack([torch.stack([dr.directions[e].vector("resid.post", layer) for layer in range(2)]) for e in emos])
    assert (w.float() - got).abs().max() > 1e-2
    # all groups: the incomplete one is still dropped (it lacks an emotion only when rows are filtered)
    assert C.emotion_directions(None, rep, activations={"resid.post": acts}, groups="all", n_boot=0,
                                n_shuffle=0).summary["n_groups"] == 6


def test_group_tensor_averages_duplicates_and_drops_incomplete():
    acts = torch.arange(5, dtype=torch.float32)[:, None]
    X, groups = C.group_tensor(acts, ["a", "a", "a", "b", "a"], ["p", "p", "p", "p", "n"],
                               ["x", "y", "x", "x", "x"], ["x", "y"])
    assert groups == [("a", "p")]
    assert X[0, :, 0].tolist() == [1.0, 1.0]  # x: mean(0, 2); y: 1


def test_direction_tables_and_control(pipeline, tiny_llama):
    _, dr, _ = pipeline
    _, spec = tiny_llama
    L = spec.n_layers
    assert set(dr.directions) == set(EKMAN6)
    d = dr.directions["fear"].validate(spec)
    assert d.sites() == ["resid.mid", "resid.post"] and d.layers("resid.mid") == list(range(L))
    assert float(d.vector("resid.post", 1).norm()) == pytest.approx(1.0, abs=1e-5)
    assert len(dr.cos_emotions) == 2 * L * 36 and len(dr.cos_layers) == 6 * 2 * L * L
    diag = dr.cos_emotions[dr.cos_emotions.a == dr.cos_emotions.b]
    assert np.allclose(diag.cosine, 1.0, atol=1e-5)
    assert len(dr.cos_valences) == 3 * 6 * 2 * L  # 3 valence pairs
    assert {"control_mean", "control_q95", "real", "beats"} <= set(dr.control.columns)
    assert dr.prompts.used.all()
    # Direction round-trips through save/load
    assert dr.vectors["resid.post"].shape == (6, L, spec.d_model)


def test_directions_need_accepted_groups(pipeline, tiny_llama):
    el, _, _ = pipeline
    rep = el.replies.assign(accepted=False)
    with pytest.raises(EmocircuitsError, match="groups"):
        C.emotion_directions(tiny_llama[0], rep, n_boot=0, n_shuffle=0)


def test_reference_direction_sign_aligned():
    v = torch.tensor([1.0, 0.0])
    d = Direction({"resid.post": {0: v, 1: -v, 2: v, 3: -v, 4: v, 5: -v}}, "x")
    torch.testing.assert_close(C.reference_direction(d, fraction=1 / 3), -v)  # last 2 layers, aligned to layer 5


# ----------------------------------------------------------------------------- components


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_one_pass_head_scores_equal_real_ablation(arch, request, sev):
    model, spec = request.getfixturevalue(arch)
    items = C.elicitation_items(sev, limit=1, emotions=("anger", "fear"))
    ids = C.prompt_ids(model, items)
    g = torch.Generator().manual_seed(1)
    v = {layer: torch.randn(spec.d_model, generator=g) for layer in range(spec.n_layers)}
    one = C.head_scores_onepass(model, ids, v)
    abl = C.head_scores_ablation(model, ids, v)
    assert one.shape == (len(ids), spec.n_layers, spec.n_heads)
    assert (one - abl).abs().max() <= 1e-4
    assert one.abs().max() > 1e-3
    # per-prompt directions too
    vn = {layer: torch.randn(len(ids), spec.d_model, generator=g) for layer in range(spec.n_layers)}
    assert (C.head_scores_onepass(model, ids, vn) - C.head_scores_ablation(model, ids, vn)).abs().max() <= 1e-4


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_neuron_contributions_sum_to_mlp_out_projection(arch, request, sev):
    model, spec = request.getfixturevalue(arch)
    ids = C.prompt_ids(model, C.elicitation_items(sev, limit=1, emotions=("anger",)))
    layer = 1
    got = C.capture_last(model, ids, {"neuron.gated": [layer], "mlp.out": [layer]})
    v = torch.randn(spec.d_model, generator=torch.Generator().manual_seed(2))
    c = C.neuron_contributions(got["neuron.gated"][layer], weight(model, "mlp.down", layer), v)
    bias = weight(model, "mlp.down.bias", layer)
    expect = got["mlp.out"][layer] @ v - (float(bias @ v) if bias is not None else 0.0)
    torch.testing.assert_close(c.sum(1), expect, atol=1e-4, rtol=1e-4)


def test_capture_last_matches_runner_capture(tiny_llama, sev):
    model, _ = tiny_llama
    ids = C.prompt_ids(model, C.elicitation_items(sev, limit=1, emotions=("anger", "fear")))
    got = C.capture_last(model, ids, {"resid.mid": [0, 2], "head.z": [1]})
    ref = Runner(model).capture(ids, "resid.mid", [0, 2])
    torch.testing.assert_close(got["resid.mid"][2], ref[2])
    assert got["head.z"][1].shape[0] == len(ids)
    assert capture is not None


def test_local_components_tables_and_sets(pipeline, tiny_llama):
    _, _, co = pipeline
    _, spec = tiny_llama
    ns = co.neuron_scores
    assert len(ns) == 6 * spec.n_layers * spec.d_mlp
    assert len(co.head_scores) == 6 * spec.n_layers * spec.n_heads
    d = ns[ns.emotion == "anger"]
    assert d.loc[d["rank"].idxmin(), "mean"] == d["mean"].max()
    assert np.allclose(d["pos"] + d["neg"], d["mean"], atol=1e-6)
    for e in EKMAN6:
        assert len(co.neuron_sets[e]) == 3 and len(co.head_sets[e]) == 3
        co.neuron_sets[e].validate(spec)
        co.head_sets[e].validate(spec)
    top = co.head_scores[co.head_scores.emotion == "fear"].nsmallest(3, "rank")
    assert set(map(tuple, top[["layer", "head"]].to_numpy())) == set(co.head_sets["fear"].heads)


def test_random_heads_keep_layer_counts_and_are_disjoint():
    hs = HeadSet(((0, 1), (0, 2), (2, 0)))
    r = C.random_heads(hs, 4, seed=3)
    assert {layer: len(h) for layer, h in r.by_layer().items()} == {0: 2, 2: 1}
    assert not set(r.heads) & set(hs.heads)
    assert r == C.random_heads(hs, 4, seed=3)


def test_validate_dose_response(pipeline, tiny_llama):
    _, dr, co = pipeline
    model, _ = tiny_llama
    emos = ["anger", "fear"]
    dose = C.validate_components(model, dr.prompts, {e: dr.directions[e] for e in emos}, co.neuron_sets,
                                 co.head_sets, scales=(0.0, 1.0, 2.0), n_random=2, n_boot=50)
    assert len(dose) == 2 * 2 * 3
    one = dose[dose.scale == 1.0]
    assert np.allclose(one["diff"], 0) and np.allclose(one.top, one.base)
    # zeroing the top heads moves the score by exactly their summed contribution at the last layer? no —
    # later layers react; but the score must change
    z = dose[(dose.scale == 0.0) & (dose.kind == "heads")]
    assert (z.top != z.base).all()


# ----------------------------------------------------------------------------- CLI


def test_cli_pipeline(tmp_path):
    from emocircuits.cli.app import app

    r = CliRunner()
    el, di, co, va = (tmp_path / n for n in ("el", "di", "co", "va"))
    res = r.invoke(app, ["circuits", "elicit", "--model", "tiny-llama", "--limit", "2", "--max-new-tokens", "2",
                         "--out", str(el), "--quiet"])
    assert res.exit_code == 0, res.output
    assert (el / "replies.parquet").exists() and (el / "accuracy.parquet").exists()
    res = r.invoke(app, ["circuits", "directions", "--from", str(el), "--groups", "all", "--n-boot", "10",
                         "--shuffles", "2", "--out", str(di), "--quiet"])
    assert res.exit_code == 0, res.output
    man = json.loads((di / "manifest.json").read_text())
    assert man["summary"]["n_groups"] == 6 and Direction.load(di / man["directions"]["fear"]).name == "fear"
    res = r.invoke(app, ["circuits", "components", "--from", str(di), "--top-k", "2", "--out", str(co), "--quiet"])
    assert res.exit_code == 0, res.output
    man = json.loads((co / "manifest.json").read_text())
    assert len(NeuronSet.load(co / man["components"]["neurons"]["anger"])) == 2
    res = r.invoke(app, ["circuits", "validate", "--from", str(co), "--scales", "0,2", "--controls", "1",
                         "--emotion", "anger", "--kinds", "heads", "--out", str(va), "--quiet"])
    assert res.exit_code == 0, res.output
    dose = pd.read_parquet(va / "results.parquet")
    assert len(dose) == 2 and set(dose.status) == {"ok"} and {"top", "random", "diff", "ci_low"} <= set(dose.columns)
    # the validation is a sweep: a grown grid on --resume runs only the new cells and keeps the stored ones
    res = r.invoke(app, ["circuits", "validate", "--from", str(co), "--scales", "0,2,3", "--controls", "1",
                         "--emotion", "anger", "--kinds", "heads", "--out", str(va), "--quiet", "--resume"])
    assert res.exit_code == 0, res.output
    grown = pd.read_parquet(va / "results.parquet")
    assert list(grown.scale) == [0.0, 2.0, 3.0]
    res = r.invoke(app, ["circuits", "validate", "--from", str(co), "--scales", "0,1", "--controls", "2",
                         "--emotion", "fear", "--kinds", "neurons", "--judge", "lexicon", "--judge-prompts", "2",
                         "--max-new-tokens", "2", "--out", str(tmp_path / "vj"), "--quiet"])
    assert res.exit_code == 0, res.output
    judged = pd.read_parquet(tmp_path / "vj" / "results.parquet").set_index("scale")
    assert judged.loc[1.0, "judged_top"] == judged.loc[1.0, "judged_base"] == judged.loc[1.0, "judged_random"]
    assert judged[["judged_top", "judged_random"]].isin([0.0, 0.5, 1.0, 0.25, 0.75]).all().all()
    pd.testing.assert_frame_equal(grown.iloc[:2][["top", "random", "diff"]], dose[["top", "random", "diff"]])
    # Circuits II on the same runs: influence -> assemble -> steering comparison -> `emocircuits steer`
    inf_, asm, st = (tmp_path / n for n in ("inf", "asm", "st"))
    res = r.invoke(app, ["circuits", "influence", "--from", str(di), "--alphas", "0.5", "--emotion", "anger",
                         "--emotion", "fear", "--out", str(inf_), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "anger" in res.output and (inf_ / "influence.parquet").exists()
    res = r.invoke(app, ["circuits", "assemble", "--influence", str(inf_), "--components", str(co), "--k", "12",
                         "--min-neurons", "1", "--min-heads", "1", "--out", str(asm), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "anger" in res.output and "heads" in res.output
    res = r.invoke(app, ["circuits", "steer", "--from", str(asm), "--split", "all", "--limit", "1", "--emotion", "anger",
                         "--methods", "circuit,prompt,none", "--max-new-tokens", "2", "--out", str(st), "--quiet"])
    assert res.exit_code == 0, res.output
    assert {"circuit", "prompt", "none"} <= {line.split()[1] for line in res.output.splitlines() if "accuracy" in line}
    res = r.invoke(app, ["steer", "Tell me about your day.", "--emotion", "anger", "--method", "circuit", "--circuits",
                         str(asm), "--max-new-tokens", "2"])
    assert res.exit_code == 0, res.output
    assert "[unsteered, " in res.output and "[circuit anger, scale " in res.output and "scale auto = " in res.output
    # the steering comparison as a sweep: method x scale cells, resumable
    from emocircuits.sweeps import from_dict, run_sweep

    cfg = {"sweep": {"analysis": "circuit_steering", "description": "tiny"}, "model": {"spec": "tiny-llama"},
           "analysis": {"circuits": str(asm), "split": "all", "limit": 1, "max_new_tokens": 2, "n_random": 1,
                        "n_boot": 20},
           "grid": {"method": ["none", "circuit"], "scale": [1.0], "emotion": ["anger"]}}
    sw = run_sweep(from_dict(cfg), tmp_path / "sw", progress=False).table
    assert list(sw.status) == ["ok", "ok"] and {"acc_lexicon", "ci_low_lexicon", "ppl_median", "distinct2"} <= set(sw)
    cfg["grid"]["scale"] = [1.0, 3.0]
    grown = run_sweep(from_dict(cfg), tmp_path / "sw", resume=True, progress=False).table
    assert len(grown) == 4 and grown.set_index(["method", "scale"]).loc[("circuit", 1.0), "acc_lexicon"] == \
        sw.set_index("method").loc["circuit", "acc_lexicon"]
    from emocircuits.viz import build_report

    report = build_report([el, di, co, va, inf_, asm, st], progress=False)
    titles = [i.title for run in report.runs for i in run.items]
    assert [s for run in report.runs for s in run.skipped] == []
    for title in ("Judged emotion expression (prompting baseline)", "Consistency across valences", "Head importance",
                  "Dose-response: top-k vs random-k", "Sublayer influence by layer", "Emotion circuits",
                  "Steering methods compared", "Example steered replies", "Steering dose-response",
                  "Steering strength chosen on fluency"):
        assert titles.count(title) == 1, titles


@pytest.mark.parametrize("args", [
    ["influence", "--from", "nowhere", "--out", "X"],
    ["assemble", "--influence", "nowhere", "--components", "nowhere", "--out", "X"],
    ["steer", "--from", "nowhere", "--out", "X"],
    ["elicit", "--judge", "oracle", "--out", "X"],
    ["elicit", "--emotion", "joy", "--out", "X"],
    ["elicit", "--limit", "0", "--out", "X"],
    ["directions", "--from", "nowhere", "--out", "X"],
    ["components", "--from", "nowhere", "--out", "X"],
    ["validate", "--from", "nowhere", "--out", "X"],
])
def test_cli_bad_input_one_sentence(args, tmp_path):
    import subprocess
    import sys

    args = [a if a != "X" else str(tmp_path / "out") for a in args]
    p = subprocess.run([sys.executable, "-m", "emocircuits.cli", "circuits", *args], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and p.stderr.strip().startswith("emocircuits: error:")


@pytest.mark.parametrize("args", [["--method", "circuit"], ["--method", "none"], ["--emotion", "joy"]])
def test_steer_command_bad_input_before_model_loads(args):
    import subprocess
    import sys

    base = ["hello", "--emotion", "anger"] if "--emotion" not in args else ["hello"]
    p = subprocess.run([sys.executable, "-m", "emocircuits.cli", "steer", *base, *args], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and p.stderr.strip().startswith("emocircuits: error:")


def test_parse_scales():
    from emocircuits.jobs.circuits import parse_scales

    assert parse_scales("0, 0.5,2") == [0.0, 0.5, 2.0]
    for bad in ("a,b", "", "-1"):
        with pytest.raises(EmocircuitsError):
            parse_scales(bad)


# ----------------------------------------------------------------------------- figures


def test_figures(pipeline, tiny_llama):
    from emocircuits.viz import circuits as V

    el, dr, co = pipeline
    dose = pd.DataFrame([{"emotion": e, "kind": k, "scale": s, "top": s, "random": 0.5 * s, "random_sd": 0.1,
                          "ci_low": 0.1, "ci_high": 0.3} for e in ("anger", "fear") for k in C.KINDS
                         for s in (0, 1, 2)])
    figs = [V.judged_accuracy(el.accuracy), V.cosine_heatmap(dr.cos_emotions), V.layer_cosine_heatmap(dr.cos_layers),
            V.valence_consistency(dr.cos_valences, dr.control), V.head_importance(co.head_scores),
            V.neuron_contribution_by_layer(co.neuron_scores), V.dose_response(dose)]
    assert all(isinstance(f, go.Figure) and f.data for f in figs)
    with pytest.raises(EmocircuitsError):
        V.cosine_heatmap(dr.cos_emotions, layer=99)
    with pytest.raises(EmocircuitsError):
        V.dose_response(pd.DataFrame({"x": [1]}))


# ----------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_real_model_directions_and_heads(smol, sev):
    model, spec = smol
    el = C.elicit(model, sev, limit=1, max_new_tokens=4, judges=("lexicon",), n_boot=20)
    dr = C.emotion_directions(model, el.replies, groups="all", n_boot=20, n_shuffle=3)
    assert dr.summary["n_groups"] == 3
    ids = C.prompt_ids(model, dr.prompts.iloc[:2])
    v = {layer: dr.directions["anger"].vector("resid.mid", layer) for layer in (5, 20)}
    one = C.head_scores_onepass(model, ids, v)
    abl = C.head_scores_ablation(model, ids, v)
    assert (one - abl).abs().max() <= 1e-3
