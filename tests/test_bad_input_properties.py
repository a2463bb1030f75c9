"""Generated malformed input thrown at the readers (issue 29): every outcome is a clean value or the
toolkit's own :class:`EmocircuitsError`, never another exception.

Readers covered: the data loaders (JSONL, CSV/TSV, crowd-enVENT CSV) and the ``neurons.json`` reader.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from emocircuits.base.errors import EmocircuitsError  # noqa: E402
from emocircuits.data import APPRAISAL_COLUMNS, load_data  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EKMAN = ("anger", "disgust", "fear", "happiness", "sadness", "surprise")

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
labels = st.sampled_from(EKMAN) | st.text(max_size=10)


def _load(spec_kind: str, name: str, content: bytes, **kw):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(content)
        try:
            ds = load_data(f"{spec_kind}:{path}", **kw)
        except EmocircuitsError as exc:
            assert "\n" not in str(exc)
            return None
        for ex in ds:  # a clean value: every text is a non-blank string with a label of the scheme
            assert isinstance(ex.text, str) and ex.text.strip() and ex.label in ds.labels
        return ds


@SETTINGS
@given(st.lists(st.dictionaries(st.sampled_from(["text", "label", "id", "split", "x"]), json_values, max_size=5),
                max_size=6), st.booleans())
def test_jsonl_reader_never_raises_another_exception(records, bom):
    body = "".join(json.dumps(r) + "\n" for r in records).encode()
    _load("jsonl", "d.jsonl", (b"\xef\xbb\xbf" if bom else b"") + body)


@SETTINGS
@given(st.lists(st.fixed_dictionaries({"text": json_values, "label": labels}), min_size=1, max_size=6))
def test_jsonl_texts_that_are_not_text_are_refused(records):
    body = "".join(json.dumps(r) + "\n" for r in records).encode()
    ds = _load("jsonl", "d.jsonl", body, drop_unknown=True)
    if ds is not None:
        kept = [r for r in records if str(r["label"]).strip().lower() in EKMAN]
        assert all(isinstance(r["text"], str | int | float) and not isinstance(r["text"], bool) for r in kept)


@SETTINGS
@given(st.binary(max_size=300))
def test_jsonl_reader_on_arbitrary_bytes(data):
    _load("jsonl", "d.jsonl", data)


@SETTINGS
@given(st.lists(st.lists(st.text(alphabet='ab ,;\t"\n\r\'', max_size=12), min_size=1, max_size=4), max_size=6),
       st.sampled_from(["csv", "tsv"]))
def test_csv_reader_never_raises_another_exception(rows, kind):
    sep = "\t" if kind == "tsv" else ","
    body = "text" + sep + "label\n" + "".join(sep.join(r) + "\n" for r in rows)
    _load(kind, "d.csv", body.encode(), drop_unknown=True)


@SETTINGS
@given(st.lists(st.tuples(st.text(max_size=15), st.sampled_from(EKMAN)), min_size=1, max_size=8))
def test_csv_row_count_matches_the_rows_written(rows):
    """Whatever the texts (quotes, commas, newlines), a loaded CSV holds exactly the rows written."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["text", "label"])
    w.writerows(rows)
    ds = _load("csv", "d.csv", buf.getvalue().encode())
    if ds is not None:
        assert len(ds) == len(rows)


@SETTINGS
@given(st.dictionaries(st.sampled_from(APPRAISAL_COLUMNS[:4]),
                       st.text(max_size=6) | st.integers().map(str) | st.floats().map(str), max_size=4),
       st.sampled_from(EKMAN) | st.text(max_size=6), st.text(max_size=20))
def test_envent_reader_never_raises_another_exception(ratings, emotion, text):
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    cols = ["emotion", "generated_text", *ratings]
    w.writerow(cols)
    w.writerow([emotion, text, *ratings.values()])
    _load("envent", "e.csv", buf.getvalue().encode("cp1252", errors="replace"))


# ----------------------------------------------------------------------------- the neurons.json reader

pair_values = st.one_of(st.none(), st.integers(-3, 10**6), st.floats(allow_nan=True), st.text(max_size=3),
                        st.lists(st.integers(-2, 50) | st.floats(0, 9) | st.none(), max_size=4))
neurons_docs = st.fixed_dictionaries(
    {"neurons": st.dictionaries(st.sampled_from([*EKMAN, "joy"]), st.lists(pair_values, max_size=4) | json_values,
                                max_size=7)},
    optional={"labels": st.just(list(EKMAN)) | json_values, "n_layers": json_values, "d_mlp": json_values,
              "ranked": json_values | st.dictionaries(st.sampled_from(EKMAN), st.lists(pair_values, max_size=3)),
              "config": json_values})


@SETTINGS
@given(neurons_docs | json_values)
def test_neurons_json_reader_never_raises_another_exception(doc):
    from emocircuits.methods.neurons import Selection

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "neurons.json"
        path.write_text(json.dumps(doc))
        try:
            sel = Selection.load(path)
        except EmocircuitsError as exc:
            assert "\n" not in str(exc)
            return
    # a clean value: integer pairs, emotions of its labels, something to mask
    assert any(len(s) for s in sel.sets.values()) and set(sel.sets) <= set(sel.labels)
    for s in sel.sets.values():
        assert all(isinstance(x, int) and x >= 0 for p in s.pairs() for x in p)


# ----------------------------------------------------------------------------- the number parsers

from emocircuits.cli.options import VOCABULARY  # noqa: E402

CHECKED = sorted(flag for flag, opt in VOCABULARY.items() if opt.check is not None)
numbers = (st.none() | st.booleans() | st.integers() | st.integers(10**300, 10**400) | st.integers(-10**400, -10**300)
           | st.floats(allow_nan=True, allow_infinity=True))
number_texts = st.text(alphabet="0123456789.,-+eEinfatyINF _x", max_size=24) | st.lists(
    st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**400, 10**400), max_size=4).map(
    lambda xs: ",".join(map(str, xs)))


def _clean_or_own_error(call, value):
    """``call(value)``: a value back, or the toolkit's own one-line error; any other exception fails the test."""
    try:
        return call(value)
    except EmocircuitsError as exc:
        assert "\n" not in str(exc) and str(exc).endswith(".")
        return None


@pytest.mark.parametrize("flag", CHECKED)
@SETTINGS
@given(value=numbers | number_texts)
def test_option_checks_return_the_value_or_refuse(flag, value):
    """Every checked option of the vocabulary: the value it was given back unchanged, or one sentence."""
    import math

    check = VOCABULARY[flag].check(flag)
    text_options = ("--model", "--text-field", "--label-field", "--preset", "--split")
    if isinstance(value, str) and flag not in text_options \
            and "number_list" not in VOCABULARY[flag].check.__qualname__:
        return  # typer turns the text of a number option into a number (or its own usage error) first
    got = _clean_or_own_error(check, value)
    if got is not None and isinstance(got, float) and flag not in text_options:  # typer hands those a str
        assert math.isfinite(got)


@SETTINGS
@given(number_texts | st.lists(numbers, max_size=4))
def test_job_number_lists_are_finite_or_refused(text):
    """The jobs' one number-list parser (alphas, scales, betas): finite floats in range, or one sentence."""
    import math

    from emocircuits.jobs.circuit_build import parse_floats
    from emocircuits.jobs.circuits import parse_scales
    from emocircuits.jobs.common import parse_numbers

    for call in (parse_floats, lambda t: parse_scales(t) if isinstance(t, str) else [0.0],
                 lambda t: parse_numbers(t, "betas")):
        got = _clean_or_own_error(call, text)
        assert got is None or (got and all(isinstance(v, float) and math.isfinite(v) for v in got))


@SETTINGS
@given(st.text(alphabet="0123456789-, alltopbmidre", max_size=12), st.integers(1, 40))
def test_layer_ranges_are_layers_of_the_model_or_refused(text, n_layers):
    from emocircuits.core.sites import check_layer_range, layer_range

    got = _clean_or_own_error(lambda t: (check_layer_range(t), layer_range(n_layers, t))[1], text)
    assert got is None or (got and all(0 <= layer < n_layers for layer in got))


@SETTINGS
@given(st.dictionaries(st.sampled_from(["seed", "n_boot", "limit_per_label", "max_tokens", "controls"]),
                       numbers | st.text(max_size=4), max_size=3))
def test_sweep_number_keys_are_clean_or_refused(analysis):
    """Numbers in a sweep TOML's [analysis] and [sweep]: a config, or one sentence naming the key."""
    from emocircuits.sweeps import from_dict

    seed = analysis.pop("seed", 0)
    cfg = {"sweep": {"analysis": "neuron_masking", "seed": seed}, "data": {"spec": "builtin:dialogues"},
           "analysis": {"neurons": "", **analysis}, "grid": {"emotion": ["anger"], "layers": ["all"]}}
    got = _clean_or_own_error(from_dict, cfg)
    if got is not None:
        assert got.seed >= 0 and got.params.n_boot >= 1 and got.params.controls >= 0
