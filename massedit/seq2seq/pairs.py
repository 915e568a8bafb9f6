"""Pair edits and their companion files: what the user asks for, validated row by row.

- :class:`EditPair`: a negative source (the model's output for it is wrong), a positive source
  (its output is right) and the span of text both share (Raunak & Menezes). The edit makes the
  span's key in the negative source produce the span's value of the positive source.
- :class:`CheckInput`: a source showing the error, with the phrase a fixed output must contain
  (``expected``) and/or must not contain (``forbidden``); edit efficacy is the share that pass.
- Parallel pairs ``(source, reference)``: held-out text for BLEU, or a statistics corpus.

Files are CSV, TSV or JSONL (UTF-8, a byte-order mark is fine); errors name the row (row 1 is the
first record after the header).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from massedit.atomic import write_text_atomic
from massedit.engine.requests import RequestError, empty_fields_error


@dataclass(frozen=True)
class EditPair:
    """One pair edit. ``span`` must occur in both sources (its last occurrence is used).

    >>> EditPair("he ran 5 yardo", "the yardo is long", "yardo").span_chars("negative")
    (9, 14)
    """

    negative_source: str
    positive_source: str
    span: str
    expected_output: str | None = None
    case_id: str | int | None = None

    def __post_init__(self) -> None:
        error = empty_fields_error(self, ("negative_source", "positive_source", "span"),
                                   self.where)
        if error is not None:
            raise error
        for name in ("negative_source", "positive_source"):
            if self.span not in getattr(self, name):
                raise RequestError(
                    f"span {self.span!r} does not occur in {name} {getattr(self, name)!r}",
                    "span", self.where)
        if self.expected_output is not None and not self.expected_output.strip():
            object.__setattr__(self, "expected_output", None)

    @property
    def where(self) -> str:
        return f"pair {self.case_id!r}" if self.case_id is not None else "pair"

    def span_chars(self, which: str) -> tuple[int, int]:
        """Character span of ``span`` in the negative or positive source."""
        text = self.negative_source if which == "negative" else self.positive_source
        start = text.rindex(self.span)
        return start, start + len(self.span)


@dataclass(frozen=True)
class CheckInput:
    """A source with the error pattern; passes when ``expected`` is in the output (if given) and
    ``forbidden`` is not (if given). Phrases match whole words, case-sensitively."""

    source: str
    expected: str | None = None
    forbidden: str | None = None

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise RequestError("field 'source' is empty", "source", "check input")
        if not (self.expected or self.forbidden):
            raise RequestError("give 'expected' or 'forbidden'", "expected",
                               f"check input {self.source!r}")

    def passes(self, output: str) -> bool:
        ok = True
        if self.expected:
            ok = ok and _contains(output, self.expected)
        if self.forbidden:
            ok = ok and not _contains(output, self.forbidden)
        return ok


def _contains(text: str, phrase: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase.strip())}(?!\w)", text) is not None


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Records of a CSV/TSV/JSONL/JSON file as dicts (keys stripped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8-sig")
    if suffix == ".jsonl":
        rows = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise RequestError(f"{path}: line {line_no}: malformed JSON ({err})") from err
    elif suffix == ".json":
        rows = json.loads(text)
    else:
        delimiter = "\t" if suffix in (".tsv", ".tab") else ","
        rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    return [{str(k).strip(): v for k, v in row.items() if k is not None} for row in rows]


def _field(row: Mapping[str, Any], name: str) -> str | None:
    value = row.get(name)
    return None if value is None or str(value).strip() == "" else str(value)


def as_pairs(items: Iterable[EditPair | Mapping[str, Any]], source: str = "") -> list[EditPair]:
    """Validated pairs; every problem names its row."""
    out, problems = [], []
    for i, item in enumerate(items, 1):
        if isinstance(item, EditPair):
            out.append(item)
            continue
        try:  # EditPair's own validation names the field (empty, span not in a source)
            out.append(EditPair(
                _field(item, "negative_source"), _field(item, "positive_source"),
                _field(item, "span"), _field(item, "expected_output"),
                case_id=_field(item, "case_id") or f"row {i}"))
        except RequestError as err:
            problems.append(str(err))
    if problems:
        raise RequestError(f"{source or 'pairs'}: " + "; ".join(problems))
    if not out:
        raise RequestError(f"{source or 'pairs'}: no pairs given")
    return out


def load_pairs(path: str | Path) -> list[EditPair]:
    """Pairs from a file with columns ``negative_source, positive_source, span[,
    expected_output]``."""
    return as_pairs(read_rows(path), str(path))


def load_checks(path: str | Path) -> list[CheckInput]:
    """Check inputs from a file with columns ``source`` and ``expected`` and/or ``forbidden``."""
    out = []
    for i, row in enumerate(read_rows(path), 1):
        try:
            out.append(CheckInput(_field(row, "source") or "", _field(row, "expected"),
                                  _field(row, "forbidden")))
        except RequestError as err:
            raise RequestError(f"{path}: row {i}: {err}") from err
    return out


def load_parallel(path: str | Path) -> list[tuple[str, str]]:
    """``(source, reference)`` pairs from columns ``source`` and ``reference`` (or ``target``)."""
    out = []
    for i, row in enumerate(read_rows(path), 1):
        src, ref = _field(row, "source"), _field(row, "reference") or _field(row, "target")
        if not src or not ref:
            raise RequestError(f"{path}: row {i}: needs 'source' and 'reference' (or 'target')")
        out.append((src, ref))
    return out


def write_rows(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write records as CSV (for the world's example files and tests)."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return write_text_atomic(path, buffer.getvalue())
