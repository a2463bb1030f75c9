"""Selection stability (bootstrap over texts, issue #14): chunked counts, hand-computed Jaccards, find outputs."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from emocircuits.base.errors import EmocircuitsError
from emocircuits.data import Example
from emocircuits.methods.neurons.find import (
    NeuronStats,
    _chunks,
    collect,
    select_neurons,
    selection_stability,
)

LABELS = ("a", "b")


def test_chunks_are_round_robin_within_each_emotion():
    y = torch.tensor([0, 1, 0, 0, 1, 0, 0])  # a: texts 0,2,3,5,6; b: texts 1,4
    chunk_of, n, labels = _chunks(y, 3, 2)
    # a's texts alternate between chunks 0 and 1; b (2 texts) gets chunks 2, 3; c has no text and no chunk
    assert chunk_of.tolist() == [0, 2, 1, 0, 3, 1, 0]
    assert n == 4 and labels.tolist() == [0, 0, 1, 1]
    assert _chunks(y, 2, 10)[1] == 7  # never more chunks than texts


@pytest.mark.parametrize("tokens", ["all", "text", "last"])
def test_chunk_counts_sum_to_the_counts(tiny_llama, tokens):
    bridge, spec = tiny_llama
    data = [Example(str(i), t, lab) for i, (t, lab) in enumerate([
        ("I am furious about the broken promise", "a"), ("That smell made me gag", "b"),
        ("He lied to my face again", "a"), ("Rotten food everywhere, so gross", "b"), ("They cancelled it", "a")])]
    plain = collect(bridge, data, tokens=tokens, template="chat_short", labels=LABELS, progress=False)
    stats = collect(bridge, data, tokens=tokens, template="chat_short", labels=LABELS, chunks=2, progress=False)
    assert plain.chunk_counts is None and torch.equal(stats.counts, plain.counts)
    assert stats.chunk_counts.shape == (4, spec.n_layers, spec.d_mlp) and stats.chunk_counts.dtype == torch.int32
    assert stats.chunk_labels.tolist() == [0, 0, 1, 1]
    for e in range(2):
        mine = stats.chunk_labels == e
        assert torch.equal(stats.chunk_counts[mine].sum(0, dtype=torch.int64), stats.counts[..., e])
        assert stats.chunk_totals[mine].sum() == stats.totals[e]


def _hand_stats(a1: list[int]) -> NeuronStats:
    """1 layer x 4 neurons, emotions a and b with two chunks of 2 tokens each.

    a's chunk 0 fires n0 twice; a's chunk 1 fires ``a1``; both b chunks fire n2 once.
    """
    chunks = torch.tensor([[[2, 0, 0, 0]], [a1], [[0, 0, 1, 0]], [[0, 0, 1, 0]]], dtype=torch.int32)
    chunk_labels = torch.tensor([0, 0, 1, 1])
    counts = torch.stack([chunks[chunk_labels == e].sum(0, dtype=torch.int64) for e in range(2)], -1)
    return NeuronStats(counts, torch.tensor([4, 4]), LABELS, {}, chunks, torch.tensor([2, 2, 2, 2]), chunk_labels)


def test_stability_hand_computed():
    """Full data: P_a = (.5, .25, 0, 0), P_b = (0, 0, .5, 0); n0, n1, n2 all have H = 0 and k = 2 keeps
    n0, n1 (by position): a = {n0, n1}, b = {}. A resample with a's chunk 0 twice makes n1 silent:
    a = {n0}, b = {n2} (Jaccard 1/2 and 0); chunk 1 twice: a = {n1}, b = {n2} (1/2 and 0); one of each:
    the full selection (1 and 1). So J_a = 1/2 + J_b / 2 in every resample, and so in the mean."""
    stats = _hand_stats([0, 1, 0, 0])
    sel = stats.select(top_rate=0.5)
    assert sel.sets["a"].pairs() == [[0, 0], [0, 1]] and len(sel.sets["b"]) == 0
    t = selection_stability(stats, sel, n_resamples=40, seed=0).set_index("emotion")
    assert list(t.columns) == ["n_neurons", "jaccard_mean", "jaccard_low", "jaccard_high", "n_resamples", "n_chunks"]
    assert t.loc["a", "jaccard_mean"] == pytest.approx(0.5 + t.loc["b", "jaccard_mean"] / 2)
    assert 0 < t.loc["b", "jaccard_mean"] < 1  # both kinds of resample occurred
    assert (t.loc["a", "jaccard_low"], t.loc["a", "jaccard_high"]) == (0.5, 1.0)
    assert (t.loc["b", "jaccard_low"], t.loc["b", "jaccard_high"]) == (0.0, 1.0)
    assert t.loc["a", "n_neurons"] == 2 and (t.n_resamples == 40).all() and (t.n_chunks == 2).all()
    assert selection_stability(stats, sel, n_resamples=40, seed=0).equals(t.reset_index())  # seeded


def test_stability_is_one_when_every_chunk_agrees():
    stats = _hand_stats([2, 0, 0, 0])  # a's two chunks are identical, so are b's
    sel = stats.select(top_rate=0.5)
    t = selection_stability(stats, sel, n_resamples=10)
    assert (t.jaccard_mean == 1).all() and (t.jaccard_low == 1).all()


def test_stability_needs_chunk_counts():
    p = torch.rand(1, 4, 2, generator=torch.Generator().manual_seed(0)).double()
    stats = NeuronStats((p * 10).long(), torch.tensor([10, 10]), LABELS)
    with pytest.raises(EmocircuitsError, match="chunks > 0"):
        selection_stability(stats, select_neurons(p, LABELS, top_rate=0.5))
    with pytest.raises(EmocircuitsError, match="n_resamples"):
        selection_stability(_hand_stats([0, 1, 0, 0]), _hand_stats([0, 1, 0, 0]).select(), n_resamples=0)


def test_find_writes_stability_and_prints_ties(tmp_path):
    from typer.testing import CliRunner

    from emocircuits.cli.app import app
    from emocircuits.runs.rundir import read_manifest

    runner = CliRunner()
    args = ["neurons", "find", "--model", "tiny-llama", "--limit-per-label", "2", "--top-rate", "0.05", "--quiet"]
    r = runner.invoke(app, [*args, "--tokens", "text", "--stability", "5", "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    t = pd.read_parquet(tmp_path / "a" / "stability.parquet")
    assert list(t.columns) == ["emotion", "n_neurons", "jaccard_mean", "jaccard_low", "jaccard_high", "n_resamples",
                               "n_chunks"]
    assert len(t) == 6 and (t.n_resamples == 5).all() and (t.n_chunks == 2).all()
    assert t.jaccard_mean.between(0, 1).all() and (t.jaccard_low <= t.jaccard_high).all()
    assert "selection stability (Jaccard with the full-data set, 5 resamples)" in r.output
    assert "tie at the cut" in r.output
    man = read_manifest(tmp_path / "a")
    assert man["config"]["tokens"] == "text" and "stability.parquet" in man["files"]
    assert set(man["summary"]["stability_jaccard_mean"]) == set(t.emotion)
    from emocircuits.viz import build_report

    run = build_report(tmp_path / "a", progress=False).runs[0]
    shown = [i for i in run.items if i.title == "Selection stability"]
    assert len(shown) == 1 and shown[0].kind == "html" and shown[0].value.count("<tr>") == 7, run.skipped
    r = runner.invoke(app, [*args, "--stability", "0", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "b" / "stability.parquet").exists() and "selection stability" not in r.output
    bad = runner.invoke(app, [*args, "--stability", "-1", "--out", str(tmp_path / "c")])
    assert bad.exit_code != 0 and "--stability must be 0" in str(bad.exception)
