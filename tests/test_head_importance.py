"""Head importance at the MLP input (Wang et al.): ⟨N(r), v⟩ − ⟨N(r − o_h), v⟩ with N the layer's post-attention
normalisation, vs the raw-residual score ⟨o_h, v⟩; one pass == real per-head ablation on every tiny family."""

from __future__ import annotations

import json

import pytest
import torch

from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.components import Direction
from emocircuits.core.models import TINY_ARCHS, tiny_model
from emocircuits.core.sites import Norm, norm, weight
from emocircuits.data import load_data
from emocircuits.jobs.circuits import run_components
from emocircuits.methods import circuits as C
from emocircuits.runs.rundir import RunDir


@pytest.fixture(scope="module")
def sev():
    return load_data("builtin:sev")


def _with_norm_weights(arch):
    """A fresh tiny model (not the shared fixtures: its ln2 weights are changed) whose post-attention norms
    have non-trivial weights (and biases on LayerNorm), so a score that skipped them would differ."""
    model, spec = tiny_model(arch, seed=0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in range(spec.n_layers):
            ln = model.blocks[layer].ln2
            ln.weight.mul_(1 + 0.5 * torch.randn(ln.weight.shape, generator=g))
            if not ln.uses_rms_norm:
                ln.bias.add_(0.3 * torch.randn(ln.bias.shape, generator=g))
    return model, spec


@pytest.fixture(scope="module", params=TINY_ARCHS)
def weighted(request):
    return _with_norm_weights(request.param)


@pytest.fixture(scope="module")
def weighted_llama():
    return _with_norm_weights("llama")


def _ids(model, sev, emotions=("anger", "fear")):
    return C.prompt_ids(model, C.elicitation_items(sev, limit=1, emotions=emotions))


# ----------------------------------------------------------------------------- the normalisation by hand


def test_norm_by_hand():
    x = torch.tensor([3.0, 4.0, 0.0, 0.0])  # mean square 6.25, RMS 2.5
    rms = Norm("rms", torch.tensor([1.0, 2.0, 3.0, 4.0]), None, 0.0)
    torch.testing.assert_close(rms(x), torch.tensor([1.2, 3.2, 0.0, 0.0], dtype=torch.float64))
    y = torch.tensor([1.0, 3.0, 1.0, 3.0])  # mean 2, centred ±1, variance 1
    ln = Norm("layer", torch.full((4,), 2.0), torch.tensor([0.5, 0.0, 0.0, 0.0]), 0.0)
    torch.testing.assert_close(ln(y), torch.tensor([-1.5, 2.0, -2.0, 2.0], dtype=torch.float64))
    # eps enters under the root; a Gemma-style weight is an offset from 1
    torch.testing.assert_close(Norm("rms", None, None, 3.0)(torch.tensor([1.0, -1.0])),  # 1 / sqrt(1 + 3)
                               torch.tensor([0.5, -0.5], dtype=torch.float64))
    torch.testing.assert_close(Norm("rms", torch.tensor([1.0, -0.5]), None, 0.0, weight_offset=True)(
        torch.tensor([2.0, 2.0])), torch.tensor([2.0, 0.5], dtype=torch.float64))


def test_head_score_by_hand():
    """One head writing o = [0, 4, 0, 0] into r = [3, 4, 0, 0] (RMSNorm, w = 1, eps = 0): N(r) = [1.2, 1.6, 0, 0],
    N(r − o) = N([3, 0, 0, 0]) = [2, 0, 0, 0]."""
    r = torch.tensor([[3.0, 4.0, 0.0, 0.0]])
    z = torch.ones(1, 1, 1)
    w_o = torch.tensor([[[0.0, 4.0, 0.0, 0.0]]])
    n = Norm("rms", None, None, 0.0)
    e0, e1 = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0, 0.0])
    # orthogonal to the head's write: zero by the raw residual, −0.8 at the MLP input (the norm rescales)
    assert float(C.head_contributions(z, w_o, e0)) == 0.0
    assert float(C.head_norm_drops(r, z, w_o, e0, n)) == pytest.approx(1.2 - 2.0)
    # along the write: 4 by the raw residual, 1.6 at the MLP input
    assert float(C.head_contributions(z, w_o, e1)) == 4.0
    assert float(C.head_norm_drops(r, z, w_o, e1, n)) == pytest.approx(1.6)
    # chunking over rows gives the same numbers
    rr, zz = r.repeat(5, 1), z.repeat(5, 1, 1)
    torch.testing.assert_close(C.head_norm_drops(rr, zz, w_o, e1, n, chunk=1), C.head_norm_drops(rr, zz, w_o, e1, n))


def test_norm_from_the_model_reproduces_its_mlp_input(weighted, sev):
    model, spec = weighted
    ids = _ids(model, sev, ("anger",))
    layers = list(range(spec.n_layers))
    got = C.capture_last(model, ids, {"resid.mid": layers, "mlp.in": layers})
    gpt2 = spec.architecture.lower().startswith("gpt2")
    for layer in layers:
        n = norm(model, "mlp.norm", layer)
        assert n.kind == ("layer" if gpt2 else "rms") and (n.bias is not None) == gpt2
        assert n.eps == (1e-5 if gpt2 else 1e-6)
        torch.testing.assert_close(n(got["resid.mid"][layer]).float(), got["mlp.in"][layer], atol=1e-5, rtol=1e-5)
    with pytest.raises(EmocircuitsError, match="Unknown normalisation"):
        norm(model, "attn.norm", 0)


# ----------------------------------------------------------------------------- one pass == real ablation


@pytest.mark.parametrize("head_score", C.HEAD_SCORES)
def test_onepass_equals_per_head_ablation(weighted, sev, head_score):
    model, spec = weighted
    ids = _ids(model, sev)
    g = torch.Generator().manual_seed(1)
    v = {layer: torch.randn(spec.d_model, generator=g) for layer in range(spec.n_layers)}
    one = C.head_scores_onepass(model, ids, v, head_score=head_score)
    abl = C.head_scores_ablation(model, ids, v, head_score=head_score)
    assert one.shape == (len(ids), spec.n_layers, spec.n_heads)
    assert one.abs().max() > 1e-2
    assert (one - abl).abs().max() <= 1e-5
    vn = {layer: torch.randn(len(ids), spec.d_model, generator=g) for layer in (0, spec.n_layers - 1)}
    one_n = C.head_scores_onepass(model, ids, vn, head_score=head_score)
    assert (one_n - C.head_scores_ablation(model, ids, vn, head_score=head_score)).abs().max() <= 1e-5


def test_the_two_definitions_differ_and_resid_is_the_raw_write(weighted_llama, sev):
    model, spec = weighted_llama
    ids = _ids(model, sev)
    g = torch.Generator().manual_seed(2)
    v = {layer: torch.randn(spec.d_model, generator=g) for layer in range(spec.n_layers)}
    mlp_in = C.head_scores_onepass(model, ids, v)  # the default
    resid = C.head_scores_onepass(model, ids, v, head_score="resid")
    assert (mlp_in - resid).abs().max() > 1e-2
    z = C.capture_last(model, ids, {"head.z": [1]})["head.z"][1]
    torch.testing.assert_close(resid[:, 1], C.head_contributions(z, weight(model, "attn.o", 1), v[1]))
    with pytest.raises(EmocircuitsError, match="head_score 'mlp' is not valid"):
        C.head_scores_onepass(model, ids, v, head_score="mlp")


# ----------------------------------------------------------------------------- local_components, the job


def _directions(spec, emotions=("anger", "fear"), seed=1):
    g = torch.Generator().manual_seed(seed)
    return {e: Direction({s: {layer: torch.randn(spec.d_model, generator=g) for layer in range(spec.n_layers)}
                          for s in ("resid.mid", "resid.post")}, e) for e in emotions}


@pytest.mark.parametrize("head_score", C.HEAD_SCORES)
def test_local_components_uses_the_onepass_score(weighted_llama, sev, head_score):
    model, spec = weighted_llama
    prompts = C.elicitation_items(sev, limit=1, emotions=("anger", "fear"))
    dirs = _directions(spec)
    kw = {} if head_score == "mlp_in" else {"head_score": head_score}  # mlp_in is the default
    co = C.local_components(model, prompts, dirs, top_k=2, **kw)
    assert co.config["head_score"] == head_score and co.config["ablation"] is False
    rows = (prompts.emotion == "fear").to_numpy()
    ids = [i for i, keep in zip(C.prompt_ids(model, prompts), rows, strict=True) if keep]
    v = {layer: dirs["fear"].vector("resid.mid", layer) for layer in range(spec.n_layers)}  # the attention site
    ref = C.head_scores_onepass(model, ids, v, head_score=head_score).mean(0)  # [L, H]
    got = co.head_scores[co.head_scores.emotion == "fear"].sort_values(["layer", "head"])
    torch.testing.assert_close(torch.tensor(got.score.to_numpy()).reshape(spec.n_layers, spec.n_heads), ref,
                               atol=1e-6, rtol=1e-5)
    ab = C.local_components(model, prompts, dirs, top_k=2, head_score=head_score, ablation=True)
    assert ab.config["ablation"] is True and ab.config["head_ablation_max_diff"] <= 1e-5
    assert (ab.head_scores.score - co.head_scores.score).abs().max() <= 1e-5


def test_components_job_head_score_and_ablation(tmp_path, sev):
    """The ``circuits components`` job (``run_components``) takes ``head_score`` and ``ablation`` from its config;
    a config without them (written before they existed) gets ``mlp_in`` and no ablation. (The branch drove this
    through the CLI's ``--head-score`` / ``--ablation``; those options are pending in emocircuits/cli.)"""
    model, spec = tiny_model("llama", seed=0)
    prompts = C.elicitation_items(sev, limit=1, emotions=("anger", "fear"))
    di, co = tmp_path / "di", tmp_path / "co"
    with RunDir.create(di, command="circuits directions", config={"model": "tiny-llama"}, model_spec=spec) as run:
        run.write_table("prompts", prompts, "elicitation items")
        files = {e: str(d.save(run.path / "directions" / e).relative_to(run.path)) for e, d in _directions(spec).items()}
        run.update(directions=files)
    base = {"from": str(di), "model": None, "top_k": 2, "top_k_heads": None}
    with pytest.raises(EmocircuitsError, match="--head-score 'raw' is not valid"):
        run_components({**base, "head_score": "raw"}, co, quiet=True)
    res = run_components({**base, "head_score": "resid", "ablation": True}, co, quiet=True)
    assert res.config["head_score"] == "resid" and res.config["head_ablation_max_diff"] <= 1e-5
    man = json.loads((co / "manifest.json").read_text())
    assert man["config"]["head_score"] == "resid" and man["config"]["ablation"] is True
    assert man["summary"]["head_score"] == "resid" and man["summary"]["head_ablation_max_diff"] <= 1e-5
    run_components(base, co, quiet=True)  # an old config: no head_score, no ablation
    man = json.loads((co / "manifest.json").read_text())
    assert man["config"]["head_score"] == "mlp_in" and man["config"]["ablation"] is False
