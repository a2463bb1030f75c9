"""Prior calibration on a tiny random model: fitted on train examples only, stored, reused."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from emocircuits.base.constants import EKMAN6
from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.readout import LabelReadout, classify, reference_prior_examples, train_split_of
from emocircuits.data import load_data

COLS = [f"score_{lab}" for lab in EKMAN6]


@pytest.fixture(scope="module")
def split():
    train = load_data("builtin:events", split="train", limit_per_label=2, seed=1)
    test = load_data("builtin:events", split="test", limit_per_label=2, seed=1)
    return train, test


def test_prior_is_fitted_on_train_only(tiny_llama, split):
    bridge, _ = tiny_llama
    train, test = split
    base = classify(bridge, test, template="chat_short", calibrate="prior", prior_examples=train, progress=False)
    prior = base.metrics["calibration"]["prior_logp"]
    assert base.metrics["calibration"]["method"] == "prior" and set(prior) == set(EKMAN6)
    relabelled = [dataclasses.replace(ex, label=EKMAN6[(EKMAN6.index(ex.label) + 1) % 6]) for ex in test]
    other = classify(bridge, relabelled, template="chat_short", calibrate="prior", prior_examples=train,
                     labels=EKMAN6, progress=False)
    fewer = classify(bridge, test[:3], template="chat_short", calibrate="prior", prior_examples=train, progress=False)
    assert other.metrics["calibration"]["prior_logp"] == prior == fewer.metrics["calibration"]["prior_logp"]
    assert other.predictions["predicted"].tolist() == base.predictions["predicted"].tolist()
    # a different train set gives a different prior
    train2 = load_data("builtin:events", split="train", limit_per_label=2, seed=2)
    moved = classify(bridge, test, template="chat_short", calibrate="prior", prior_examples=train2, progress=False)
    assert moved.metrics["calibration"]["prior_logp"] != prior


def test_predictions_are_argmax_of_logp_minus_prior(tiny_llama, split):
    bridge, _ = tiny_llama
    train, test = split
    raw = LabelReadout(bridge, EKMAN6, "chat_fewshot").predict(test, progress=False)
    raw_s = torch.tensor(raw[COLS].values, dtype=torch.float32)
    ro = LabelReadout(bridge, EKMAN6, "chat_fewshot", calibrate="prior")
    prior = ro.fit_prior(train)
    by_label = sorted(train, key=lambda ex: EKMAN6.index(ex.label))  # 2 per label
    ref_prior = torch.log_softmax(ro.scores_of(ro.encode(by_label)), -1).reshape(6, 2, 6).mean(1).mean(0)
    torch.testing.assert_close(prior, ref_prior, atol=1e-5, rtol=0)
    df = ro.predict(test, progress=False)
    expected = (torch.log_softmax(raw_s, -1) - prior[None]).argmax(-1).tolist()
    assert df["predicted"].tolist() == [EKMAN6[i] for i in expected]
    torch.testing.assert_close(torch.tensor(df[COLS].values, dtype=torch.float32),
                               torch.log_softmax(raw_s, -1) - prior[None], atol=1e-4, rtol=0)
    stored = LabelReadout(bridge, EKMAN6, "chat_fewshot", calibrate="prior", prior=prior.tolist())
    assert stored.predict(test, progress=False)["predicted"].tolist() == df["predicted"].tolist()


def test_prior_is_class_balanced(tiny_llama, split):
    bridge, _ = tiny_llama
    train, _ = split
    ro = LabelReadout(bridge, EKMAN6, "chat_short", calibrate="prior")
    p1 = ro.fit_prior(train)
    extra = [ex for ex in train if ex.label == "anger"] * 3
    p2 = ro.fit_prior(list(train) + extra)
    torch.testing.assert_close(p1, p2, atol=1e-5, rtol=0)


def test_prior_from_train_split_and_fallbacks(tiny_llama):
    bridge, _ = tiny_llama
    test = load_data("builtin:events", split="test", limit_per_label=1)
    train = train_split_of(test, EKMAN6, per_label=2)
    assert train is not None and len(train) == 12 and train.split_name == "train"
    assert not {ex.id for ex in train} & {ex.id for ex in test}
    assert train_split_of(load_data("builtin:events", split="train", limit_per_label=1), EKMAN6) is None
    res = classify(bridge, test, template="chat_short", calibrate="prior", progress=False)
    assert res.metrics["calibration"]["fitted_on"].startswith("train split")
    # no train split of its own: the prior of the reference data's train split (Ekman labels) ...
    res = classify(bridge, ["a text", "another"], template="chat_short", calibrate="prior", progress=False)
    cal = res.metrics["calibration"]
    assert cal["method"] == "prior" and cal["fitted_on"].startswith("builtin:events train (reference)")
    ref = reference_prior_examples(EKMAN6)
    ro = LabelReadout(bridge, EKMAN6, "chat_short", calibrate="prior")
    expected = ro.fit_prior(ref)
    assert list(cal["prior_logp"].values()) == pytest.approx(expected.tolist(), abs=1e-5)
    assert reference_prior_examples(["anger", "fear"]).labels == ("anger", "fear")
    # ... and content-free calibration when the labels are not the reference data's
    with pytest.warns(UserWarning, match="using content_free calibration instead"):
        res = classify(bridge, ["a text", "another"], labels=["calm", "tense"], template="chat_short",
                       calibrate="prior", progress=False)
    assert res.metrics["calibration"]["method"] == "content_free"
    with pytest.raises(EmocircuitsError, match="needs a fitted prior"):
        LabelReadout(bridge, EKMAN6, calibrate="prior").predict(["x"], progress=False)
    with pytest.raises(EmocircuitsError, match="one log-prob per label"):
        LabelReadout(bridge, EKMAN6, calibrate="prior", prior=[0.0, 1.0])


# ------------------------------------------------------------------------------ template ensembles
def test_ensemble_is_the_mean_of_each_templates_calibrated_logprobs(tiny_llama, split):
    """Hand reference: each member calibrated with its own prior (fitted on the same train texts), renormalised
    over the labels, averaged; the prediction is the argmax of the mean."""
    bridge, _ = tiny_llama
    train, test = split
    res = classify(bridge, test, template="chat_short+chat_fewshot", calibrate="prior", prior_examples=train,
                   progress=False)
    parts = []
    for name in ("chat_short", "chat_fewshot"):
        ro = LabelReadout(bridge, EKMAN6, name, calibrate="prior")
        prior = ro.fit_prior(train)
        assert res.metrics["calibration"]["prior_logp"][name] == pytest.approx(dict(zip(EKMAN6, prior.tolist(),
                                                                                         strict=True)))
        parts.append(torch.log_softmax(ro.predict_scores(test, progress=False), -1))
    mean = (parts[0] + parts[1]) / 2
    torch.testing.assert_close(torch.tensor(res.predictions[COLS].values, dtype=torch.float32), mean, atol=1e-4, rtol=0)
    assert res.predictions["predicted"].tolist() == [EKMAN6[i] for i in mean.argmax(-1).tolist()]
    assert res.metrics["calibration"]["templates"] == ["chat_short", "chat_fewshot"]
    # a one-member ensemble is that template
    one = classify(bridge, test, template=["chat_short"], calibrate="prior", prior_examples=train, progress=False)
    single = classify(bridge, test, template="chat_short", calibrate="prior", prior_examples=train, progress=False)
    assert one.predictions["predicted"].tolist() == single.predictions["predicted"].tolist()


def test_ensemble_specs_and_their_errors(tiny_llama, split):
    from emocircuits.core.prompts import ensemble_members, get_template

    assert ensemble_members("chat_short+fewshot") == ["chat_short", "fewshot"]
    assert ensemble_members("Text: {text} + more") == ["Text: {text} + more"]  # a user string is one template
    with pytest.raises(EmocircuitsError, match="unknown: 'chat_shrt'"):
        ensemble_members("chat_shrt+fewshot")
    with pytest.raises(EmocircuitsError, match="a name repeats"):
        ensemble_members("fewshot+fewshot")
    with pytest.raises(EmocircuitsError, match="only classification reads"):
        get_template("chat_short+fewshot")
    bridge, _ = tiny_llama
    with pytest.raises(EmocircuitsError, match="A stored prior belongs to one template"):
        classify(bridge, split[1], template="chat_short+fewshot", calibrate="prior", prior=[0.0] * 6, progress=False)
