"""Datasets as :class:`Example` sequences: built-ins, loaders for the papers' published formats, splits.

Data spec strings (``load_data(spec)`` and every CLI ``--data``):

==========================  =========================================================================
``builtin:dialogues``       3,060 synthetic two-speaker dialogues, Ekman's six (``data/dialogues.md``)
``builtin:sev``             160 scenario-event skeletons x 3 valences (``data/sev.md``)
``builtin:appraisal_events`` 900 event descriptions, 21 appraisal ratings that follow the text (``data/appraisal_events.md``)
``builtin:events``          900 short first-person event descriptions, mixed registers, mostly implicit (``data/events.md``)
``emoprism:PATH``           Lee et al.'s dialogue corpus: JSONL or ``.json.gz`` (topic, dialogue, label)
``sev:PATH``                SEV skeleton JSONL (scenario + events per valence; the authors' files,
                            with event and skeleton_id, read as they are)
``envent:PATH``             crowd-enVENT CSV (cp1252; emotion, generated_text, hidden_emo_text, ratings)
``jsonl:PATH``/``csv:PATH`` generic files with ``text`` and ``label`` (other fields -> ``meta``)
``tsv:PATH``                the same as ``csv:`` with tab-separated columns
==========================  =========================================================================

Splits: files with a ``split`` field (the built-ins) use it; emoprism and SEV files without one are split
95/5 stratified by label with the fixed seed :data:`SPLIT_SEED` (SEV: by skeleton, 50/50), independent
of ``seed``, so a ``test`` split never changes between runs. ``jsonl:``, ``csv:`` and ``envent:`` files
without a ``split`` field have no split of their own: they are used whole, and asking them for a split
raises. ``seed`` only drives ``limit_per_label`` sampling.

Every text file is read with a UTF-8 byte-order mark tolerated (Windows editors and Excel write one).
A text must be a non-blank string: a blank text, or a list/object where a text belongs, is refused with
the file and line (never classified as ``""`` or a Python repr). A CSV quote that is opened and not closed
on its line and swallows what looks like another row is refused, so the rows read are the rows in the
file.

Fields: ``text_field`` and ``label_field`` name the text and label fields of any file (defaults: ``text`` /
``label``; emoprism ``dialogue`` / ``label``; crowd-enVENT ``generated_text`` / ``emotion``). Appraisal
ratings are read from top-level columns, or from a nested object (``"appraisal": {"pleasantness": 4}``, also
``appraisals`` / ``ratings``), by default the 21 crowd-enVENT names (:data:`APPRAISAL_COLUMNS`), else the
names in ``appraisals``; every rating read lands in ``Example.meta`` as a float. A rating that is not a
number (``"high"``, an object) stops the load with its file and line; ``Dataset.info["ratings"]`` records
which columns were found and how many rows rate all of them (:func:`rated_only` keeps those rows).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import pandas as pd

from emocircuits.base.constants import EKMAN6, LABEL_ALIASES, SPLIT_SEED, TEST_SHARE, VALENCES
from emocircuits.base.errors import EmocircuitsError, advise, offered, spell

# The crowd-enVENT appraisal schema (Troiano et al., 2023): its 21 rating columns (1-5), in the published
# order. The one source of appraisal names: the loader, the generator of ``builtin:appraisal_events``
# (which writes every column) and the analyses import it from here.
APPRAISAL_COLUMNS: tuple[str, ...] = (
    "suddenness",
    "familiarity",
    "predict_event",
    "pleasantness",
    "unpleasantness",
    "goal_relevance",
    "chance_responsblt",
    "self_responsblt",
    "other_responsblt",
    "predict_conseq",
    "goal_support",
    "urgency",
    "self_control",
    "other_control",
    "chance_control",
    "accept_conseq",
    "standards",
    "social_norms",
    "attention",
    "not_consider",
    "effort",
)
ENVENT_TEXT_FIELDS = ("generated_text", "hidden_emo_text")
RATING_OBJECTS = ("appraisal", "appraisals", "ratings")
"""Keys of a nested ratings object in a JSON row (``{"appraisal": {"pleasantness": 4, ...}}``)."""

__all__ = [
    "APPRAISAL_COLUMNS",
    "EKMAN6",
    "VALENCES",
    "Dataset",
    "Example",
    "data_dir",
    "load_data",
    "stratified_split",
    "known_specs",
    "load_pairs",
    "rated_only",
]


@dataclass(frozen=True)
class Example:
    """One labelled text. ``group``: topic (dialogues) or skeleton id (SEV); ``meta``: everything else."""

    id: str
    text: str
    label: str
    group: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


class Dataset(Sequence[Example]):
    """An immutable, ordered list of :class:`Example` with its label scheme.

    ``info`` records loading facts (source path, rows dropped per reason) for manifests.
    """

    def __init__(
        self,
        name: str,
        labels: Sequence[str],
        examples: Sequence[Example],
        split_name: str | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.labels: tuple[str, ...] = tuple(labels)
        self.examples: tuple[Example, ...] = tuple(examples)
        self.split_name = split_name
        self.info: dict[str, Any] = dict(info or {})

    @overload
    def __getitem__(self, i: int) -> Example: ...
    @overload
    def __getitem__(self, i: slice) -> Dataset: ...
    def __getitem__(self, i: int | slice) -> Example | Dataset:
        if isinstance(i, slice):
            return self._derive(self.examples[i])
        return self.examples[i]

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    def __repr__(self) -> str:
        counts = {k: len(v) for k, v in self.by_label().items()}
        return f"Dataset({self.name!r}, split={self.split_name!r}, n={len(self)}, per_label={counts})"

    def _derive(self, examples: Sequence[Example]) -> Dataset:
        return Dataset(self.name, self.labels, examples, self.split_name, self.info)

    def by_label(self) -> dict[str, list[Example]]:
        """Examples grouped by label, in scheme order (labels without examples map to ``[]``)."""
        out: dict[str, list[Example]] = {lab: [] for lab in self.labels}
        for ex in self.examples:
            out.setdefault(ex.label, []).append(ex)
        return out

    def limit_per_label(self, n: int, seed: int = 0) -> Dataset:
        """At most ``n`` examples per label, sampled with ``seed``; original order kept (deterministic)."""
        if n < 1:
            raise EmocircuitsError(f"limit_per_label must be a positive integer, got {n}; pass 1 or more.")
        keep: set[int] = set()
        idx_by_label: dict[str, list[int]] = {}
        for i, ex in enumerate(self.examples):
            idx_by_label.setdefault(ex.label, []).append(i)
        for lab, idx in idx_by_label.items():
            if len(idx) > n:
                idx = random.Random(f"{seed}:{lab}").sample(idx, n)
            keep.update(idx)
        return self._derive([ex for i, ex in enumerate(self.examples) if i in keep])

    def filter(self, predicate: Callable[[Example], bool]) -> Dataset:
        """The examples for which ``predicate`` is true, same scheme."""
        return self._derive([ex for ex in self.examples if predicate(ex)])

    def to_frame(self) -> pd.DataFrame:
        """One row per example: ``id, text, label, group`` plus one column per scalar meta key."""
        rows = []
        for ex in self.examples:
            row: dict[str, Any] = {"id": ex.id, "text": ex.text, "label": ex.label, "group": ex.group}
            for k, v in ex.meta.items():
                if k not in row:
                    row[k] = v if isinstance(v, str | int | float | bool) or v is None else json.dumps(v)
            rows.append(row)
        return pd.DataFrame(rows, columns=None if rows else ["id", "text", "label", "group"])


def data_dir() -> Path:
    """Folder of the built-in data files: ``$EMOCIRCUITS_DATA_DIR`` or ``<repo>/data``."""
    env = os.environ.get("EMOCIRCUITS_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "data"


def stratified_split(
    labels: Sequence[str], test_share: float = TEST_SHARE, seed: int = SPLIT_SEED
) -> list[str]:
    """``"train"``/``"test"`` per item; per label a seeded shuffle sends round(share·n) (≥1) to test."""
    out = ["train"] * len(labels)
    by_label: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(lab, []).append(i)
    for lab in sorted(by_label):
        idx = list(by_label[lab])
        random.Random(f"{seed}:{lab}").shuffle(idx)
        for i in idx[: max(1, round(test_share * len(idx)))]:
            out[i] = "test"
    return out


# ------------------------------------------------------------------------------------------ parsing
@dataclass
class _Row:
    """A raw record with where it came from (for error messages)."""

    fields: dict[str, Any]
    where: str  # "file.jsonl, line 7"


def _open_text(path: Path, encoding: str = "utf-8") -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding)  # type: ignore[return-value]
    return open(path, encoding=encoding, newline="")  # noqa: SIM115


def _check_file(path: Path) -> Path:
    if path.is_dir():
        raise EmocircuitsError(f"Data path {path} is a folder, not a file; name the data file inside it in the data "
                               "spec.")
    if not path.is_file():
        raise EmocircuitsError(f"Data file {path} does not exist; check the path in the data spec.")
    return path


def _read_json_records(path: Path) -> list[_Row]:
    """JSON lines, or (``.json``/``.json.gz``) a JSON array / JSON lines; one object per record."""
    _check_file(path)
    try:
        with _open_text(path, encoding="utf-8-sig") as fh:
            text = fh.read()
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise EmocircuitsError(
            f"{path} could not be read as UTF-8 JSON ({e}); check the file is not corrupt."
        ) from e
    if text.lstrip().startswith("["):
        try:
            arr = json.loads(text)
        except json.JSONDecodeError as e:
            raise EmocircuitsError(f"{path}, line {e.lineno}: invalid JSON ({e.msg}); fix that line.") from e
        rows = []
        for i, obj in enumerate(arr):
            if not isinstance(obj, dict):
                raise EmocircuitsError(
                    f"{path}, record {i + 1}: expected a JSON object, got {type(obj).__name__}."
                )
            rows.append(_Row(obj, f"{path}, record {i + 1}"))
        return rows
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise EmocircuitsError(
                f"{path}, line {lineno}: invalid JSON ({e.msg}); fix or remove that line."
            ) from e
        if not isinstance(obj, dict):
            raise EmocircuitsError(
                f"{path}, line {lineno}: expected a JSON object per line, got {type(obj).__name__}; fix that line."
            )
        rows.append(_Row(obj, f"{path}, line {lineno}"))
    return rows


_DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "bar"}


def _header_advice(path: Path, header_line: str, delimiter: str) -> str:
    """What the header looks like and how to read such a file (for a field-count mismatch)."""
    shown = header_line.strip()[:60]
    for other in ("\t", ";", "|"):
        if other != delimiter and other in header_line and delimiter not in header_line:
            how = (f"read it as tsv:{path}" if other == "\t"
                   else "re-save it comma-separated (or tab-separated and read it as tsv:PATH)")
            return (f"the header {shown!r} looks {_DELIMITER_NAMES[other]}-separated, not "
                    f"{_DELIMITER_NAMES[delimiter]}-separated; {how}")
    return f"the header is {shown!r}; fix the quoting or the number of columns on that line"


def _swallowed_row(value: str, width: int, delimiter: str) -> bool:
    """Whether a multi-line field holds a line that is itself a whole row (an unclosed quote ate it)."""
    if "\n" not in value and "\r" not in value:
        return False
    for piece in value.splitlines()[1:]:
        try:
            fields = next(csv.reader([piece], delimiter=delimiter), [])
        except csv.Error:
            continue
        if len(fields) == width and all(f.strip() for f in fields):
            return True
    return False


def _read_csv_records(path: Path, encoding: str, delimiter: str = ",") -> list[_Row]:
    _check_file(path)
    line = 0
    try:
        with _open_text(path, encoding=encoding) as fh:
            reader = csv.reader(fh, delimiter=delimiter, strict=True)
            header = next(reader, None)
            if header is None:
                return []
            header_line = delimiter.join(header)
            header = [h.strip() for h in header]
            if len(header) == 1 and any(d in header_line for d in _DELIMITER_NAMES if d != delimiter):
                raise EmocircuitsError(f"{path}, line 1: {_header_advice(path, header_line, delimiter)}.")
            rows = []
            line = reader.line_num
            for rec in reader:
                lineno, span, line = line + 1, reader.line_num - line, reader.line_num
                if not rec or all(not c.strip() for c in rec):
                    continue
                if len(rec) != len(header):
                    raise EmocircuitsError(
                        f"{path}, line {lineno}: {len(rec)} fields but the header has {len(header)}; "
                        f"{_header_advice(path, header_line, delimiter)}."
                    )
                if span > 1 and any(_swallowed_row(c, len(header), delimiter) for c in rec):
                    raise EmocircuitsError(
                        f"{path}, line {lineno}: a quote opened on this line runs on over {span} lines and "
                        "swallows what looks like another row; close the quote on that line."
                    )
                rows.append(_Row(dict(zip(header, rec, strict=True)), f"{path}, line {lineno}"))
            return rows
    except UnicodeDecodeError as e:
        raise EmocircuitsError(
            f"{path} is not valid {encoding} ({e.reason} at byte {e.start}); re-save it as {encoding}."
        ) from e
    except csv.Error as e:
        raise EmocircuitsError(
            f"{path}, after line {line}: malformed CSV ({e}), probably a quote that is opened and never "
            "closed; fix the quoting in that file."
        ) from e


def _text(value: Any, row: _Row, name: str) -> str:
    """A field that must hold text: a non-blank string (numbers are read as their digits)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        kind = {list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
        raise EmocircuitsError(f"{row.where}: field {name!r} is {kind}, not text; give it a string.")
    text = str(value).strip()
    if not text:
        raise EmocircuitsError(f"{row.where}: field {name!r} is blank; give it some text or remove that row.")
    return text


def _require(row: _Row, *names: str) -> None:
    missing = [n for n in names if n not in row.fields or row.fields[n] in (None, "")]
    if missing:
        have = ", ".join(sorted(row.fields)) or "none"
        raise EmocircuitsError(
            f"{row.where}: missing field(s) {', '.join(missing)} (fields present: {have}); add them or fix the file."
        )


def _rating(value: Any, name: str, row: _Row) -> float | None:
    """One appraisal rating as a float (None: not rated); anything else that is not a number raises."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    leave_out = "fix the file, or " + advise(
        [("appraisals=[...]", "--appraisals a,b,...", f"naming the others to leave {name} out")], "") \
        if offered("--appraisals") else "fix the file (this command reads every rating it has)"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise EmocircuitsError(
            f"{row.where}: appraisal rating {name!r} is {json.dumps(value)}, not a number; write one number per "
            f"rating (e.g. {name}: 3): {leave_out}."
        )
    try:
        out = float(value)
    except ValueError:
        raise EmocircuitsError(
            f"{row.where}: appraisal rating {name!r} is {value!r}, not a number; ratings must be numbers, so "
            f"{leave_out}."
        ) from None
    return None if out != out else out  # NaN: not rated


def _split_ratings(row: _Row, names: Sequence[str] | None) -> tuple[dict[str, Any], dict[str, float]]:
    """``(other fields, ratings)`` of a row: ratings from a nested object (:data:`RATING_OBJECTS`) and from
    top-level columns named in ``names`` (default :data:`APPRAISAL_COLUMNS`)."""
    wanted = tuple(names) if names is not None else APPRAISAL_COLUMNS
    rest: dict[str, Any] = {}
    ratings: dict[str, float] = {}
    for k, v in row.fields.items():
        if k in RATING_OBJECTS and isinstance(v, dict):
            for name, value in v.items():
                if names is not None and name not in wanted:
                    continue
                r = _rating(value, str(name), row)
                if r is not None:
                    ratings[str(name)] = r
        elif k in wanted:
            r = _rating(v, k, row)
            if r is not None:
                ratings[k] = r
        elif isinstance(v, dict) and set(map(str, v)) & set(wanted):
            held = ", ".join(sorted(set(map(str, v)) & set(wanted))[:3])
            raise EmocircuitsError(
                f"{row.where}: field {k!r} holds appraisal ratings ({held}, ...) under a key the reader does not "
                f"take, so they would be left out; rename it to one of {', '.join(RATING_OBJECTS)} or move the "
                "ratings to top-level columns."
            )
        else:
            rest[k] = v
    return rest, ratings


class _LabelMapper:
    """Maps raw labels onto the scheme; unknown ones raise, or are dropped and counted."""

    def __init__(self, scheme: Sequence[str], drop_unknown: bool) -> None:
        self.scheme = tuple(scheme)
        self.drop_unknown = drop_unknown
        self.dropped: dict[str, int] = {}

    def __call__(self, raw: Any, row: _Row) -> str | None:
        lab = str(raw).strip().lower()
        if lab not in self.scheme and LABEL_ALIASES.get(lab) in self.scheme:
            lab = LABEL_ALIASES[lab]
        if lab in self.scheme:
            return lab
        if self.drop_unknown:
            self.dropped[lab] = self.dropped.get(lab, 0) + 1
            return None
        raise EmocircuitsError(
            f"{row.where}: unknown label {raw!r}; allowed labels are {', '.join(self.scheme)} "
            "(" + advise([("labels=...", "--labels a,b,...", "to change the scheme"),
                          ("drop_unknown=True", "--drop-unknown", "to skip such rows")],
                         "this command reads only these labels, so relabel or remove such rows") + ")."
        )


def _dialogue_text(value: Any, row: _Row) -> str:
    """A dialogue field as text: a string, or a list of turns (strings or {speaker, text} objects)."""
    if isinstance(value, str):
        return _text(value, row, "dialogue")
    if isinstance(value, list):
        turns = []
        for i, t in enumerate(value):
            if isinstance(t, str):
                turns.append(t.strip())
            elif isinstance(t, dict) and "text" in t:
                spk = t.get("speaker") or ("A" if i % 2 == 0 else "B")
                turns.append(f"{spk}: {_text(t['text'], row, f'dialogue turn {i + 1}')}")
            else:
                raise EmocircuitsError(
                    f"{row.where}: turn {i + 1} of 'dialogue' is neither text nor {{speaker, text}}."
                )
        if not any(turns):
            raise EmocircuitsError(f"{row.where}: field 'dialogue' has no text in any turn; give it some text.")
        return "\n".join(turns)
    raise EmocircuitsError(f"{row.where}: field 'dialogue' must be a string or a list of turns.")


# ------------------------------------------------------------------------------------------ loaders
def _labelled_rows(rows: list[_Row], mapper: _LabelMapper, text_field: str, label_field: str,
                   appraisals: Sequence[str] | None) -> Iterator[tuple[int, _Row, str, dict[str, Any], dict[str, float]]]:
    """``(row number, row, label, other fields, ratings)`` of every row whose label is in the scheme."""
    for n, row in enumerate(rows):
        _require(row, text_field, label_field)
        lab = mapper(row.fields[label_field], row)
        if lab is not None:
            yield (n, row, lab, *_split_ratings(row, appraisals))


def _load_labelled(
    rows: list[_Row],
    mapper: _LabelMapper,
    *,
    id_prefix: str,
    text_field: str,
    label_field: str = "label",
    group_field: str = "group",
    dialogue: bool = False,
    appraisals: Sequence[str] | None = None,
) -> list[tuple[Example, str | None]]:
    """Rows with a text field and a label field: JSONL/CSV texts, or EmoPrism dialogues (``dialogue=True``:
    the text may be a list of turns, the group is the ``topic``). Ratings and other fields go to ``meta``."""
    out = []
    for n, row, lab, rest, ratings in _labelled_rows(rows, mapper, text_field, label_field, appraisals):
        f = row.fields
        meta = {k: v for k, v in rest.items() if k not in (text_field, label_field, "id", "split", group_field)}
        meta.update(ratings)
        grp = f.get(group_field)
        text = _dialogue_text(f[text_field], row) if dialogue else _text(f[text_field], row, text_field)
        out.append(
            (
                Example(
                    id=str(f["id"]) if f.get("id") not in (None, "") else f"{id_prefix}-{n:06d}",
                    text=text,
                    label=lab,
                    group=str(grp) if grp not in (None, "") else None,
                    meta=meta,
                ),
                f.get("split"),
            )
        )
    return out


def _load_envent(
    rows: list[_Row], mapper: _LabelMapper, *, id_prefix: str, text_field: str, label_field: str = "emotion",
    appraisals: Sequence[str] | None = None,
) -> list[tuple[Example, str | None]]:
    out = []
    for n, row, lab, rest, ratings in _labelled_rows(rows, mapper, text_field, label_field, appraisals):
        meta: dict[str, Any] = {k: v for k, v in rest.items() if k not in ("split", text_field)}
        meta.update(ratings)
        ident = row.fields.get("text_id") or row.fields.get("id") or f"{id_prefix}-{n:06d}"
        out.append(
            (
                Example(str(ident), _text(row.fields[text_field], row, text_field), lab, None, meta),
                row.fields.get("split"),
            )
        )
    return out


def _load_sev(
    rows: list[_Row], labels: Sequence[str], drop_unknown: bool
) -> list[tuple[Example, str | None]]:
    out = []
    for n, row in enumerate(rows):
        f = row.fields
        if "events" not in f and isinstance(f.get("event"), dict):  # the authors' files: event, skeleton_id
            f = {**f, "events": f["event"], "id": f.get("id") or f.get("skeleton_id")}
            row = _Row(f, row.where)
        _require(row, "scenario", "events")
        events = f["events"]
        if not isinstance(events, dict):
            raise EmocircuitsError(f"{row.where}: 'events' must be an object mapping valence to event text.")
        unknown = [v for v in events if v not in labels]
        if unknown and not drop_unknown:
            raise EmocircuitsError(
                f"{row.where}: unknown valence(s) {', '.join(map(repr, unknown))}; allowed labels are "
                f"{', '.join(labels)} (" + advise([("drop_unknown=True", "--drop-unknown", "to skip them")],
                                                  "remove them from the file") + ")."
            )
        skel = str(f.get("id") or f"sev-{n:04d}")
        for valence in labels:
            if valence not in events:
                continue
            meta = {
                "theme": f.get("theme"),
                "scenario": f["scenario"],
                "events": dict(events),
                "valence": valence,
                "event": events[valence],
            }
            text = f"{_text(f['scenario'], row, 'scenario')} {_text(events[valence], row, f'events.{valence}')}"
            out.append((Example(f"{skel}:{valence}", text, valence, skel, meta), f.get("split")))
    return out


_PREFIXES = ("builtin", "emoprism", "sev", "envent", "jsonl", "csv", "tsv")
_BUILTINS = {
    "dialogues": ("emoprism", "dialogues.jsonl"),
    "sev": ("sev", "sev.jsonl"),
    "appraisal_events": ("envent", "appraisal_events.csv"),
    "events": ("jsonl", "events.jsonl"),
}


def known_specs() -> list[str]:
    """The data spec forms, for help texts and error messages."""
    return [f"builtin:{b}" for b in _BUILTINS] + [f"{p}:PATH" for p in _PREFIXES[1:]]


def _assign_splits(
    pairs: list[tuple[Example, str | None]], *, by_group: bool, where: str
) -> list[tuple[Example, str]]:
    given = [s for _, s in pairs]
    if all(s is not None for s in given):
        bad = {s for s in given if s not in ("train", "test")}
        if bad:
            raise EmocircuitsError(f"{where}: split values must be 'train' or 'test', found {sorted(bad)}.")
        return [(ex, str(s)) for ex, s in pairs]
    if by_group:  # SEV: half of the skeletons (per theme) to test
        groups = sorted({ex.group or "" for ex, _ in pairs})
        themes = {}
        for ex, _ in pairs:
            themes[ex.group or ""] = str(ex.meta.get("theme") or "")
        gsplit = dict(
            zip(groups, stratified_split([themes[g] for g in groups], 0.5, SPLIT_SEED), strict=True)
        )
        return [(ex, gsplit[ex.group or ""]) for ex, _ in pairs]
    splits = stratified_split([ex.label for ex, _ in pairs], TEST_SHARE, SPLIT_SEED)
    return [(ex, s) for (ex, _), s in zip(pairs, splits, strict=True)]


def _ratings_info(examples: Sequence[Example], names: Sequence[str] | None) -> dict[str, Any]:
    """Which rating columns the examples carry and how many examples rate all of them."""
    wanted = tuple(names) if names is not None else APPRAISAL_COLUMNS
    seen = {k for ex in examples for k, v in ex.meta.items() if isinstance(v, float)}
    cols = [a for a in wanted if a in seen]
    complete = sum(all(isinstance(ex.meta.get(a), float) for a in cols) for ex in examples) if cols else 0
    return {"columns": cols, "rows": len(examples), "rated_rows": complete}


def rated_only(data: Dataset, names: Sequence[str] | None = None) -> tuple[Dataset, str]:
    """The examples that rate every appraisal column found (or ``names``), and one sentence on what was kept.

    Raises, saying what the file holds, when no example has ratings."""
    cols = list(names) if names is not None else [
        a for a in APPRAISAL_COLUMNS if any(isinstance(ex.meta.get(a), float) for ex in data)]
    src = data.info.get("path", data.name)
    if not cols:
        fields = ", ".join(data.info.get("fields") or sorted({k for ex in data for k in ex.meta})) or "none"
        raise EmocircuitsError(
            f"{src} holds no appraisal ratings (its fields: {fields}); this analysis needs them as numeric columns "
            f"named like {', '.join(APPRAISAL_COLUMNS[:3])}, ..., a nested \"appraisal\" object, or named columns "
            f"({spell('appraisals=[...]', '--appraisals a,b,...')})."
        )
    kept = data.filter(lambda ex: all(isinstance(ex.meta.get(a), float) for a in cols))
    dropped = len(data) - len(kept)
    if not len(kept):
        raise EmocircuitsError(
            f"{src}: no example rates all of {', '.join(cols)}; choose the columns to use with "
            f"{spell('appraisals=[...]', '--appraisals a,b,...')}."
        )
    note = (f"ratings: {len(cols)} columns; kept all {len(kept)} examples" if not dropped else
            f"ratings: {len(cols)} columns; dropped {dropped} of {len(data)} examples that do not rate all of them")
    absent = [a for a in APPRAISAL_COLUMNS if a not in cols] if names is None else []
    if absent:  # the default names: say which of them the file does not rate, never leave them out silently
        note += f"; {len(absent)} of the {len(APPRAISAL_COLUMNS)} crowd-enVENT ratings are not in it ({', '.join(absent)})"
    return kept, note


def load_pairs(path: str | Path) -> list[tuple[str, str]]:
    """``(source_id, target_id)`` pairs from a CSV (header ``source_id,target_id``) or JSONL file."""
    path = Path(path).expanduser()
    rows = (_read_json_records(path) if path.suffix in (".jsonl", ".json", ".gz")
            else _read_csv_records(path, "utf-8-sig"))
    out = []
    for row in rows:
        _require(row, "source_id", "target_id")
        out.append((str(row.fields["source_id"]).strip(), str(row.fields["target_id"]).strip()))
    if not out:
        raise EmocircuitsError(f"{path} holds no pairs; write one source_id,target_id per row.")
    return out


def load_data(
    spec: str,
    *,
    split: str | None = None,
    labels: Sequence[str] | None = None,
    limit_per_label: int | None = None,
    seed: int = 0,
    drop_unknown: bool = False,
    text_field: str | None = None,
    default_split: str | None = None,
    label_field: str | None = None,
    appraisals: Sequence[str] | None = None,
) -> Dataset:
    """Load a dataset from a data spec string (see the module docstring for the forms).

    Args:
        spec: ``builtin:NAME`` or ``KIND:PATH``.
        split: ``"train"``, ``"test"`` or ``None`` / ``"all"`` (all examples, as on the command line).
        labels: the label scheme; Ekman's six by default (SEV: positive, neutral, negative).
        limit_per_label: keep at most this many examples per label (seeded, stratified).
        seed: seed of the ``limit_per_label`` sampling (splits use the fixed :data:`SPLIT_SEED`).
        drop_unknown: skip rows whose label is outside the scheme (counted in ``Dataset.info``) instead
            of raising. crowd-enVENT rows outside the scheme are always dropped and counted.
        text_field: the field holding the text (``text`` for generic files, ``dialogue`` for emoprism,
            ``generated_text`` or ``hidden_emo_text`` for crowd-enVENT).
        default_split: with ``split=None``, the split to use when the data has a split of its own (the
            built-ins, SEV, emoprism, files with a ``split`` field); data without one is used whole.
        label_field: the field holding the label (``label``; ``emotion`` for crowd-enVENT).
        appraisals: the rating names to read (top-level columns or a nested ratings object); default the
            21 crowd-enVENT names. A name no row has raises.

    An explicit ``labels`` scheme must be non-empty and every label in it must occur in the file.

    A ``jsonl:``, ``csv:``, ``tsv:`` or ``envent:`` file without a ``split`` field has no split of its own: asking
    it for ``train`` or ``test`` raises (use ``split=None``), and ``Dataset.info["split"]`` records
    ``"all"``.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise EmocircuitsError(
            f"Data spec {spec!r} has no 'kind:' prefix; use one of {', '.join(known_specs())}."
        )
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in _PREFIXES:
        raise EmocircuitsError(
            f"Unknown data kind {kind!r} in {spec!r}; use one of {', '.join(known_specs())}."
        )
    if split == "all":
        split = None
    if split not in (None, "train", "test"):
        raise EmocircuitsError(f"Unknown split {split!r}; use 'train', 'test' or {spell('None', 'all')} for all examples.")
    if default_split not in (None, "train", "test"):
        raise EmocircuitsError(f"Unknown default split {default_split!r}; use 'train', 'test' or None.")
    name = spec
    if kind == "builtin":
        if arg not in _BUILTINS:
            raise EmocircuitsError(f"Unknown built-in dataset {arg!r}; known: {', '.join(_BUILTINS)}.")
        kind, fname = _BUILTINS[arg]
        path = data_dir() / fname
        if not path.is_file():
            raise EmocircuitsError(
                f"Built-in data file {path} is missing; run `python scripts/make_data.py` or set EMOCIRCUITS_DATA_DIR."
            )
    else:
        if not arg.strip():
            raise EmocircuitsError(f"Data spec {spec!r} names no file after '{kind}:'; give the path, e.g. "
                                   f"{kind}:data/my_texts.{'jsonl' if kind == 'jsonl' else 'csv'}.")
        path = Path(arg).expanduser()
    if kind == "sev" and (text_field or label_field or appraisals):
        raise EmocircuitsError(
            f"{spec}: SEV files have fixed fields (scenario, events per valence), so text/label fields and "
            "appraisal names do not apply; leave them out."
        )
    if appraisals is not None and not [a for a in appraisals if str(a).strip()]:
        raise EmocircuitsError(f"The appraisal names {list(appraisals)} name no rating; pass comma-separated names.")
    scheme = tuple(labels) if labels is not None else (VALENCES if kind == "sev" else EKMAN6)
    if not scheme or len(set(scheme)) != len(scheme):
        raise EmocircuitsError(f"Label scheme {list(scheme)} must be a non-empty list of distinct labels.")
    scheme = tuple(str(s).strip().lower() for s in scheme)
    mapper = _LabelMapper(scheme, drop_unknown or kind == "envent")
    info: dict[str, Any] = {"path": str(path), "kind": kind}

    if kind == "sev":
        pairs = _load_sev(_read_json_records(path), scheme, drop_unknown)
        splits = _assign_splits(pairs, by_group=True, where=str(path))
    else:
        names = None if appraisals is None else tuple(str(a).strip() for a in appraisals if str(a).strip())
        if kind == "envent":
            tf, lf = text_field or "generated_text", label_field or "emotion"
            rows = _read_csv_records(path, "cp1252")
        else:
            tf = text_field or ("dialogue" if kind == "emoprism" else "text")
            lf = label_field or "label"
            rows = (_read_csv_records(path, "utf-8-sig", "\t" if kind == "tsv" else ",") if kind in ("csv", "tsv")
                    else _read_json_records(path))
        for what, fname in (("text", tf), ("label", lf)):
            if rows and kind in ("csv", "tsv", "envent") and fname not in rows[0].fields:  # JSON: per row, below
                hint = (f" (crowd-enVENT text columns: {', '.join(ENVENT_TEXT_FIELDS)})"
                        if kind == "envent" and what == "text" else "")
                raise EmocircuitsError(
                    f"{path}: {what} column {fname!r} not found; the file's columns are "
                    f"{', '.join(sorted(rows[0].fields))}{hint}; "
                    + (f"name the {what} field with {spell(f'{what}_field', f'--{what}-field')}."
                       if offered(f"--{what}-field") else f"name that column {fname!r} in the file.")
                )
        if kind == "envent":
            pairs = _load_envent(rows, mapper, id_prefix="envent", text_field=tf, label_field=lf, appraisals=names)
        else:
            pairs = _load_labelled(rows, mapper, id_prefix=kind, text_field=tf, label_field=lf,
                                   group_field="topic" if kind == "emoprism" else "group",
                                   dialogue=kind == "emoprism", appraisals=names)
        info["fields"] = sorted(rows[0].fields) if rows else []
        info["ratings"] = _ratings_info([ex for ex, _ in pairs], names)
        if names is not None:
            absent = [a for a in names if a not in info["ratings"]["columns"]]
            if absent:
                raise EmocircuitsError(
                    f"{path}: no row rates {', '.join(absent)}; the file's fields are {', '.join(info['fields'])} "
                    f"(nested rating objects: {', '.join(RATING_OBJECTS)})."
                )
        if labels is not None:
            present = {ex.label for ex, _ in pairs}
            missing = [lab for lab in scheme if lab not in present]
            if missing:
                raise EmocircuitsError(
                    f"{path}: label(s) {', '.join(missing)} of the scheme occur in no row (labels present: "
                    f"{', '.join(sorted(present)) or 'none'}); drop them from the scheme or fix the label field."
                )
        splits = _assign_splits(pairs, by_group=False, where=str(path))
    if mapper.dropped:
        info["dropped"] = dict(sorted(mapper.dropped.items()))
        n_drop = sum(mapper.dropped.values())
        warnings.warn(
            f"{path}: dropped {n_drop} row(s) with labels outside the scheme: {info['dropped']}.",
            stacklevel=2,
        )
    if not splits:
        raise EmocircuitsError(
            f"{path} yielded no examples for labels {', '.join(scheme)}; check the file and the label scheme."
        )
    seen: set[str] = set()
    for ex, _ in splits:
        if ex.id in seen:
            raise EmocircuitsError(f"{path}: duplicate example id {ex.id!r}; ids must be unique.")
        seen.add(ex.id)
    own_split = kind in ("emoprism", "sev") or (bool(pairs) and all(s is not None for _, s in pairs))
    if split is not None and not own_split:
        raise EmocircuitsError(
            f"{path} has no 'split' field, so it has no {split!r} split; pass {spell('split=None', '--split all')} "
            f"to use all {len(splits)} examples, or add a 'split' field (train/test) to every row."
        )
    if split is None and own_split:
        split = default_split
    chosen = [ex for ex, s in splits if split is None or s == split]
    if not chosen:
        raise EmocircuitsError(f"{path} has no examples in split {split!r}; use {spell('split=None', '--split all')} "
                               "for all examples.")
    info["split"] = split or "all"
    ds = Dataset(name, scheme, chosen, split, info)
    if limit_per_label is not None:
        ds = ds.limit_per_label(limit_per_label, seed=seed)
    return ds
