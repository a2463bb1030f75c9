"""Issue 30 parts 2-4: the settings of Wang et al.'s scripts the circuits commands now express — the influence
reference window, sign anchor, σ's prompts and scanned layers; the last layer's direction after the final norm;
the system prompts; the prompt subsets of `circuits components`; the generation settings, site and band of
steering; residual steering from a directions run alone. Every new key is recorded in the manifest, has
today's behaviour as its default (old configs rerun identically) and is refused, in one sentence, before any
model loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from emocircuits.base.constants import EMOTION_SYSTEMS, NEUTRAL_SYSTEM
from emocircuits.base.errors import EmocircuitsError
from emocircuits.cli.app import app
from emocircuits.core.components import Direction
from emocircuits.data import load_data
from emocircuits.methods import circuits as C

runner = CliRunner()


def _ok(argv: list[str]) -> str:
    res = runner.invoke(app, [str(a) for a in argv])
    assert res.exit_code == 0, (res.output, res.exception)
    return res.output


def _config(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())["config"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """elicit -> directions -> components on tiny-llama with the new options, plus default-option runs."""
    root = tmp_path_factory.mktemp("settings")
    el, di, di0 = root / "el", root / "di", root / "di0"
    _ok(["circuits", "elicit", "--model", "tiny-llama", "--limit", "2", "--max-new-tokens", "2", "--system",
         "two_lines", "--out", el, "--quiet"])
    _ok(["circuits", "directions", "--from", el, "--groups", "all", "--n-boot", "2", "--shuffles", "0",
         "--last-after-final-norm", "--out", di, "--quiet"])
    _ok(["circuits", "directions", "--from", el, "--groups", "all", "--n-boot", "2", "--shuffles", "0",
         "--out", di0, "--quiet"])
    return {"root": root, "el": el, "di": di, "di0": di0}


# ----------------------------------------------------------------------------- influence: the reference window


@pytest.mark.parametrize("n, want", [(28, [21, 22, 23, 24, 25]), (30, [23, 24, 25, 26, 27]), (3, [2]),
                                     (4, [3])])
def test_paper_ref_layers_scale_21_25_of_28(n, want):
    assert C.paper_ref_layers(n) == want


def _dir(n_layers=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Direction({s: {lay: torch.randn(d, generator=g) for lay in range(n_layers)}
                      for s in ("resid.mid", "resid.post")}, "anger")


def test_reference_window_and_anchor_by_hand():
    d = _dir()

    def unit(v):
        return v.double() / v.double().norm()

    anchor = unit(d.vector("resid.mid", 1))
    acc = torch.zeros(8, dtype=torch.float64)
    for s in ("resid.mid", "resid.post"):
        for lay in (2, 3):
            v = unit(d.vector(s, lay))
            acc += v if float(v @ anchor) >= 0 else -v
    got = C.influence_reference(d, layers=[3, 2], anchor=("resid.mid", 1))
    torch.testing.assert_close(got, (acc / acc.norm()).float())
    # default: the last ceil(n/6) layers, anchored on the last resid.post: unchanged
    torch.testing.assert_close(C.influence_reference(d), C.influence_reference(d, layers=[5],
                                                                                anchor=("resid.post", 5)))
    for bad in ({"layers": [9]}, {"layers": []}, {"anchor": ("resid.post", 9)}, {"anchor": ("mlp.out", 1)}):
        with pytest.raises(EmocircuitsError):
            C.influence_reference(d, **bad)


def test_influence_layers_window_and_sigma_prompts(runs, tiny_llama):
    model, spec = tiny_llama
    prompts, dirs = pd.read_parquet(runs["di"] / "prompts.parquet"), {}
    man = json.loads((runs["di"] / "manifest.json").read_text())
    dirs = {e: Direction.load(runs["di"] / f) for e, f in man["directions"].items() if e in ("anger", "fear")}
    base = C.sublayer_influence(model, prompts, dirs, alphas=(0.5,), max_prompts=2)
    res = C.sublayer_influence(model, prompts, dirs, alphas=(0.5,), max_prompts=2, layers=[1, 2],
                               ref_layers=[1, 2], ref_anchor=("resid.mid", 2), sigma_prompts="elicit")
    assert sorted(set(res.table.layer)) == [1, 2] and sorted(set(base.table.layer)) == [0, 1, 2]
    assert res.config["ref_layers"] == [1, 2] and res.config["ref_anchor"] == ["resid.mid", 2]
    assert res.config["sigma_prompts"] == "elicit" and base.config["sigma_prompts"] == "neutral"
    # σ over the elicitation prompts (each row's own emotion system prompt), by hand
    ids = C.prompt_ids(model, prompts.reset_index(drop=True))
    want = C.sublayer_sigma(model, ids, layers=[1, 2])
    np.testing.assert_allclose(res.sigma.sigma, want.sigma, rtol=1e-6)
    assert not np.allclose(res.sigma.sigma, base.sigma[base.sigma.layer >= 1].sigma)
    torch.testing.assert_close(res.reference["anger"], C.influence_reference(dirs["anger"], layers=[1, 2],
                                                                             anchor=("resid.mid", 2)))
    with pytest.raises(EmocircuitsError):
        C.sublayer_influence(model, prompts, dirs, sigma_prompts="other")
    with pytest.raises(EmocircuitsError):
        C.sublayer_influence(model, prompts, dirs, layers=[7])


def test_influence_use_accepted_averages_each_emotions_own_prompts(runs, tiny_llama):
    """use=accepted: each emotion's influence is the mean over the emotion-free prompts of the (skeleton, valence)
    whose reply in that emotion was accepted (the authors' per-emotion samples), σ over the used groups' rows."""
    model, spec = tiny_llama
    prompts = pd.read_parquet(runs["di"] / "prompts.parquet")
    man = json.loads((runs["di"] / "manifest.json").read_text())
    dirs = {e: Direction.load(runs["di"] / man["directions"][e]) for e in ("anger", "fear")}
    prompts["accepted"] = False  # anger accepted on the first two (skeleton, valence), fear on the last one
    pairs = list(dict.fromkeys(zip(prompts.skeleton, prompts.valence, strict=True)))
    for e, chosen in (("anger", pairs[:2]), ("fear", pairs[-1:])):
        hit = [(sk, v) in chosen and em == e for sk, v, em in zip(prompts.skeleton, prompts.valence, prompts.emotion,
                                                                     strict=True)]
        prompts.loc[hit, "accepted"] = True
    prompts["used"] = prompts.skeleton == pairs[0][0]
    kw = dict(alphas=(0.5,), layers=[1], ref_layers=[1, 2], sigma_prompts="elicit")
    res = C.sublayer_influence(model, prompts, dirs, use="accepted", **kw)
    assert res.config["n_prompts_per_emotion"] == {"anger": 2, "fear": 1} and res.config["use"] == "accepted"
    neutral = C.neutral_items(prompts)
    sigma_ids = C.prompt_ids(model, prompts[prompts.used].reset_index(drop=True))
    for e, chosen in (("anger", pairs[:2]), ("fear", pairs[-1:])):
        keep = [(sk, v) in chosen for sk, v in zip(neutral.skeleton, neutral.valence, strict=True)]
        ref = C.sublayer_influence(model, None, {e: dirs[e]}, token_ids=C.chat_ids(model, neutral[keep]),
                                   sigma_token_ids=sigma_ids, **kw)
        got = res.raw[res.raw.emotion == e].reset_index(drop=True)
        np.testing.assert_allclose(got.delta, ref.raw.delta, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.sigma, ref.raw.sigma, rtol=1e-6)
    every = C.sublayer_influence(model, prompts, dirs, **kw)
    assert every.config["n_prompts_per_emotion"] == {"anger": len(pairs), "fear": len(pairs)}
    assert not np.allclose(every.raw.delta, res.raw.delta)
    with pytest.raises(EmocircuitsError, match="use 'some' is not valid"):
        C.sublayer_influence(model, prompts, dirs, use="some", **kw)


# ----------------------------------------------------------------------------- the last layer after the final norm


def test_last_layer_direction_after_final_norm(runs, tiny_llama):
    model, spec = tiny_llama
    L = spec.n_layers - 1
    after = json.loads((runs["di"] / "manifest.json").read_text())
    before = json.loads((runs["di0"] / "manifest.json").read_text())
    a = Direction.load(runs["di"] / after["directions"]["fear"])
    b = Direction.load(runs["di0"] / before["directions"]["fear"])
    for s in ("resid.mid", "resid.post"):
        for lay in range(L + (s == "resid.mid")):
            torch.testing.assert_close(a.vector(s, lay), b.vector(s, lay))
    assert not torch.allclose(a.vector("resid.post", L), b.vector("resid.post", L))
    # by hand: the emotion's mean minus the mean over emotions of the final-norm output, per group
    replies = pd.read_parquet(runs["el"] / "replies.parquet")
    h = C.final_norm_last(model, C.prompt_ids(model, replies))
    X, used = C.group_tensor(h[:, None, None], replies.skeleton.astype(str).tolist(),
                             replies.valence.astype(str).tolist(), replies.emotion.astype(str).tolist(),
                             list(after["summary"]["emotions"]), None)
    V = C.directions_from_groups(X)
    e = after["summary"]["emotions"].index("fear")
    torch.testing.assert_close(a.vector("resid.post", L), V[e, 0, 0], atol=1e-5, rtol=1e-5)
    assert _config(runs["di"])["last_after_final_norm"] is True
    assert _config(runs["di0"])["last_after_final_norm"] is False
    assert after["summary"]["last_after_final_norm"] is True


# ----------------------------------------------------------------------------- system prompts


def test_system_templates_named_text_and_refused():
    assert C.system_template(None) == C.SYSTEM_TEMPLATE == EMOTION_SYSTEMS["short"]
    assert C.system_template("two_lines") == "Always reply in {emotion}.\nKeep the reply to at most two sentences."
    assert C.system_template("Feel {emotion}!") == "Feel {emotion}!"
    for bad in ("no placeholder", "{emotion} and {other}", "{}", "shortt"):
        with pytest.raises(EmocircuitsError, match="system prompt"):
            C.system_template(bad)


def test_elicit_records_its_system_prompt(runs):
    replies = pd.read_parquet(runs["el"] / "replies.parquet")
    r = replies.iloc[0]
    assert r.system == EMOTION_SYSTEMS["two_lines"].format(emotion=r.emotion)
    assert _config(runs["el"])["system"] == "two_lines"


# ----------------------------------------------------------------------------- components: prompt subsets


def test_subsample_rows_stratified_seeded():
    prompts = pd.DataFrame({"emotion": ["anger"] * 9, "valence": ["positive", "neutral", "negative"] * 3})
    rows = np.arange(9)
    a = C.subsample_rows(prompts, rows, per_valence=2, seed=3, emotion="anger")
    assert len(a) == 6 and pd.Series(prompts.valence[a]).value_counts().eq(2).all()
    np.testing.assert_array_equal(a, C.subsample_rows(prompts, rows, per_valence=2, seed=3, emotion="anger"))
    assert any(not np.array_equal(a, C.subsample_rows(prompts, rows, per_valence=2, seed=s, emotion="anger"))
               for s in range(4, 10))
    np.testing.assert_array_equal(C.subsample_rows(prompts, rows, max_samples=4), [0, 1, 2, 3])
    np.testing.assert_array_equal(C.subsample_rows(prompts, rows), rows)
    with pytest.raises(EmocircuitsError):
        C.subsample_rows(prompts, rows, max_samples=0)


def test_components_subsets_cli_and_old_config_rerun(runs):
    from emocircuits.jobs import registry

    co, co0 = runs["root"] / "co", runs["root"] / "co0"
    _ok(["circuits", "components", "--from", runs["di"], "--top-k", "2", "--layers", "1-2", "--use", "all",
         "--per-valence", "1", "--max-samples", "2", "--seed", "5", "--out", co, "--quiet"])
    ns, hs = pd.read_parquet(co / "neuron_scores.parquet"), pd.read_parquet(co / "head_scores.parquet")
    assert sorted(set(ns.layer)) == [1, 2] and sorted(set(hs.layer)) == [1, 2]
    assert set(ns.n) == {2} and set(hs.n) == {2}
    cfg = _config(co)
    assert {"use": "all", "per_valence": 1, "max_samples": 2, "layers": "1-2", "seed": 5}.items() <= cfg.items()
    # a rerun from the manifest's config gives the same tables
    registry.JOBS["circuits components"](cfg, runs["root"] / "co_again")
    pd.testing.assert_frame_equal(pd.read_parquet(runs["root"] / "co_again" / "head_scores.parquet"), hs)
    # a config written before the keys existed runs as today's defaults: every used prompt, every layer
    _ok(["circuits", "components", "--from", runs["di"], "--top-k", "2", "--out", co0, "--quiet"])
    old = {k: v for k, v in _config(co0).items() if k not in ("use", "layers", "max_samples", "per_valence", "seed")}
    registry.JOBS["circuits components"](old, runs["root"] / "co_old")
    pd.testing.assert_frame_equal(pd.read_parquet(runs["root"] / "co_old" / "neuron_scores.parquet"),
                                  pd.read_parquet(co0 / "neuron_scores.parquet"))
    assert sorted(set(pd.read_parquet(co0 / "head_scores.parquet").layer)) == [0, 1, 2]


# ----------------------------------------------------------------------------- influence from the command line


def test_influence_cli_options_recorded(runs):
    inf_ = runs["root"] / "inf"
    _ok(["circuits", "influence", "--from", runs["di"], "--alphas", "0.5", "--emotion", "anger", "--max-prompts",
         "2", "--ref-layers", "paper", "--ref-anchor", "resid.mid:1", "--sigma-prompts", "elicit", "--sigma-from",
         "resid", "--layers", "1-2", "--system", "Be brief.", "--out", inf_, "--quiet"])
    cfg = _config(inf_)
    assert {"ref_layers": "paper", "ref_anchor": "resid.mid:1", "sigma_prompts": "elicit", "layers": "1-2",
            "system": "Be brief."}.items() <= cfg.items()
    summary = json.loads((inf_ / "manifest.json").read_text())["summary"]
    assert summary["ref_layers"] == [2] and summary["ref_anchor"] == ["resid.mid", 1] and summary["layers"] == [1, 2]
    assert sorted(set(pd.read_parquet(inf_ / "influence.parquet").layer)) == [1, 2]
    # defaults: the old window, anchor, σ prompts, system
    inf0 = runs["root"] / "inf0"
    _ok(["circuits", "influence", "--from", runs["di"], "--alphas", "0.5", "--emotion", "anger", "--max-prompts",
         "1", "--out", inf0, "--quiet"])
    cfg0 = _config(inf0)
    assert cfg0["ref_layers"] is None and cfg0["ref_anchor"] is None and cfg0["sigma_prompts"] == "neutral"
    assert cfg0["system"] == NEUTRAL_SYSTEM and cfg0["layers"] is None


# ----------------------------------------------------------------------------- steering settings


def test_steer_compare_generation_settings_and_site(tiny_llama, runs):
    model, spec = tiny_llama
    man = json.loads((runs["di"] / "manifest.json").read_text())
    dirs = {"anger": Direction.load(runs["di"] / man["directions"]["anger"])}
    items = C.elicitation_items(load_data("builtin:sev"), emotions=["anger"], limit=1).iloc[:2]
    kw = dict(emotions=["anger"], methods=["residual", "prompt"], directions=dirs, band=[1], max_new_tokens=3,
              n_boot=10, max_prompts=1, alpha=8.0, sentences=0)
    res = C.steer_compare(model, items, site="resid.mid", prompt_system="Feel {emotion}.",
                          generate_kw={"min_new_tokens": 3, "repetition_penalty": 1.5, "no_repeat_ngram_size": 2},
                          **kw)
    assert set(res.replies.n_new_tokens) == {3}
    assert res.config["site"] == "resid.mid" and res.config["prompt_system"] == "Feel {emotion}."
    assert res.config["generate"]["repetition_penalty"] == 1.5
    # the site moves the residual replies' text or at least their perplexity
    post = C.steer_compare(model, items, generate_kw={"min_new_tokens": 3}, **kw)
    a, b = (r.replies[r.replies.method == "residual"].iloc[0] for r in (res, post))
    assert (a.reply, a.ppl) != (b.reply, b.ppl)
    with pytest.raises(EmocircuitsError):
        C.steer_compare(model, items, site="mlp.out", **kw)


def test_residual_steering_from_a_directions_run(runs):
    st = runs["root"] / "st"
    out = _ok(["circuits", "steer", "--directions", runs["di"], "--split", "all", "--limit", "1", "--emotion", "anger",
               "--methods", "residual,prompt,none", "--site", "resid.mid", "--band", "1-2", "--max-new-tokens", "3",
               "--min-new-tokens", "3", "--repetition-penalty", "1.3", "--no-repeat-ngram-size", "2",
               "--system", "Answer briefly.", "--prompt-system", "emotion_only", "--out", st, "--quiet"])
    assert "residual" in out and "prompt" in out
    cfg = _config(st)
    assert {"directions": str(runs["di"]), "from": None, "site": "resid.mid", "band": "1-2", "min_new_tokens": 3,
            "repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "system": "Answer briefly.",
            "prompt_system": "emotion_only"}.items() <= cfg.items()
    replies = pd.read_parquet(st / "replies.parquet")
    assert set(replies.n_new_tokens) == {3}
    out = _ok(["steer", "Tell me about your day.", "--emotion", "anger", "--method", "residual", "--directions",
               runs["di"], "--band", "1-1", "--site", "resid.mid", "--scale", "2", "--max-new-tokens", "2",
               "--min-new-tokens", "2"])
    assert "[residual anger, scale 2, " in out


# ----------------------------------------------------------------------------- bad values: one sentence, no model


def _rows():
    di, el = "{di}", "{el}"
    inf = f"circuits influence --from {di} --out {{out}} --quiet"
    comp = f"circuits components --from {di} --out {{out}} --quiet"
    st = f"circuits steer --directions {di} --methods residual --out {{out}} --quiet"
    return [
        ("ref-layers-reversed", inf + " --ref-layers 5-2", "--ref-layers '5-2' is not a layer range"),
        ("ref-layers-word", inf + " --ref-layers late", "--ref-layers 'late' is not a layer range"),
        ("ref-anchor-site", inf + " --ref-anchor mlp.out:1", "--ref-anchor 'mlp.out:1' is not valid"),
        ("ref-anchor-layer", inf + " --ref-anchor resid.post:x", "--ref-anchor 'resid.post:x' is not valid"),
        ("sigma-prompts", inf + " --sigma-prompts chat", "--sigma-prompts 'chat' is not valid"),
        ("influence-layers", inf + " --layers 3-1", "--layers '3-1' is not a layer range"),
        ("components-use", comp + " --use some", "--use 'some' is not valid"),
        ("components-max-samples", comp + " --max-samples 0", "--max-samples 0 is not allowed"),
        ("components-per-valence", comp + " --per-valence -2", "--per-valence -2 is not allowed"),
        ("components-layers", comp + " --layers top-1", "--layers 'top-1' is not a layer range"),
        ("elicit-system", "circuits elicit --model tiny-llama --system nothing --out {out} --quiet",
         "is neither a template name"),
        ("steer-min-new", st + " --max-new-tokens 2 --min-new-tokens 5", "--min-new-tokens must be in 0..2"),
        ("steer-min-new-negative", st + " --min-new-tokens -1", "--min-new-tokens -1 is not allowed"),
        ("steer-rep-penalty", st + " --repetition-penalty 0", "--repetition-penalty 0.0 is not allowed"),
        ("steer-rep-penalty-nan", st + " --repetition-penalty nan", "--repetition-penalty nan is not allowed"),
        ("steer-ngram", st + " --no-repeat-ngram-size -1", "--no-repeat-ngram-size -1 is not allowed"),
        ("steer-site", st + " --site mlp.out", "--site 'mlp.out' is not valid"),
        ("steer-band", st + " --band 4-1", "--band '4-1' is not a layer range"),
        ("steer-circuit-from-directions", st.replace("residual", "residual,circuit"), "--methods circuit needs"),
        ("steer-neither", "circuits steer --methods none --out {out} --quiet", "Pass --from"),
        ("steer-prompt-system", st + " --prompt-system calm", "is neither a template name"),
        ("steer-one-band", "steer hi --emotion anger --method residual --directions {di} --band x", "--band 'x'"),
        ("steer-one-site", "steer hi --emotion anger --method residual --directions {di} --site z", "--site 'z'"),
        ("steer-one-circuit-dirs", "steer hi --emotion anger --method circuit --directions {di}", "needs --circuits"),
        ("steer-one-rep", "steer hi --emotion anger --repetition-penalty -1", "--repetition-penalty -1.0"),
        ("directions-shuffles", f"circuits directions --from {el} --shuffles -1 --out {{out}}", "--shuffles -1"),
    ]


@pytest.mark.parametrize("row", _rows(), ids=lambda r: r[0])
def test_bad_settings_refused_before_a_model_loads(row, runs, tmp_path, monkeypatch):
    import emocircuits.core.models as models

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(models, "_boot", boom)
    _, argv, phrase = row
    out = tmp_path / "out"
    argv = [a.format(di=runs["di"], el=runs["el"], out=out) for a in argv.split()]
    res = runner.invoke(app, argv)
    assert isinstance(res.exception, EmocircuitsError), (argv, res.output, res.exception)
    msg = str(res.exception)
    assert phrase in msg and msg.endswith(".") and "\n" not in msg, msg
    assert not out.exists()
