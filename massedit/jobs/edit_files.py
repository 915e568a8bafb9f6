"""Edit files: CSV, TSV, JSON, JSONL or a ``datasets`` dataset -> validated ``EditRequest``s.

Every problem in a file is collected before anything is reported, so a user fixes a spreadsheet
in one pass instead of one error per run. Rows are numbered from 1 for the first record (the
header of a CSV file is not a row); CSV and JSONL problems also give the line in the file.

>>> edits = load_edits("examples/facts.csv")  # doctest: +SKIP
>>> edits.requests[0].text, edits.rows[0]  # doctest: +SKIP
('The Eiffel Tower is located in the city of', 1)
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from massedit.engine.requests import EditRequest, RequestError, requests_digest

logger = logging.getLogger(__name__)

REQUIRED = ("prompt", "subject", "target_new")
OPTIONAL = ("target_true", "paraphrase", "neighborhood", "case_id")
# Spellings that mean the same column; the first name is the one requests use.
ALIASES = {
    "paraphrase": ("paraphrases", "paraphrase_prompts"),
    "neighborhood": ("neighbourhood", "neighborhood_prompts", "neighbourhood_prompts"),
}
LIST_SEPARATOR = "|"  # several paraphrase/neighbourhood prompts in one CSV cell
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an edit file; ``row`` None means the file as a whole; ``field`` the
    request field at fault, when one is."""

    reason: str
    row: int | None = None
    line: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        if self.row is not None and self.line is not None:
            return f"row {self.row} (line {self.line}): {self.reason}"
        if self.row is not None:
            return f"row {self.row}: {self.reason}"
        if self.line is not None:
            return f"line {self.line}: {self.reason}"
        return self.reason


class EditFileError(ValueError):
    """An edit file has problems; ``problems`` lists all of them."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = sorted(problems, key=lambda p: (p.row or 0, p.line or 0))
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s), nothing was edited:\n{lines}")


@dataclass
class Record:
    """One row of an edit file as read: values by column, 1-based row, first and last line."""

    row: int
    values: dict[str, Any]
    lines: tuple[int, int] | None = None

    @property
    def line(self) -> int | None:
        return self.lines[0] if self.lines else None


@dataclass
class EditTable:
    source: str
    records: list[Record]
    columns: list[str]
    problems: list[Problem] = field(default_factory=list)  # reading problems (encoding, syntax)


@dataclass
class EditSet:
    """Validated requests, the file row each came from, and where they were read."""

    source: str
    requests: list[EditRequest]
    rows: list[int]

    @property
    def digest(self) -> str:
        return requests_digest(self.requests)


# ---- reading ----------------------------------------------------------------------------------
def _decode(data: bytes, source: str) -> tuple[str, list[tuple[int, str]]]:
    """UTF-8 text (BOM or not) and the (line, reason) of every line that is not UTF-8."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise EditFileError(source, [Problem("the file is UTF-16 encoded; save it as UTF-8")])
    bad = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            byte = raw[err.start : err.start + 1].hex().upper()
            bad.append((number, f"unreadable encoding: byte 0x{byte} at column {err.start + 1} "
                                "is not UTF-8; save the file as UTF-8"))
    # Decoding on with replacement characters lets every other problem be reported too.
    return data.decode("utf-8-sig", errors="replace"), bad


def _read_delimited(text: str, delimiter: str) -> tuple[list[Record], list[str], list[Problem]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    problems: list[Problem] = []
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return [], [], [Problem("the file is empty")]
    records, last_line = [], reader.line_num
    for row, values in enumerate(reader, start=1):
        lines = (last_line + 1, reader.line_num)
        last_line = reader.line_num
        if not any(v.strip() for v in values):
            continue  # blank rows that spreadsheets leave at the end
        if len(values) > len(header):
            problems.append(Problem(f"has {len(values)} values but the header has {len(header)} "
                                    "columns (a separator inside an unquoted field?)",
                                    row, lines[0]))
        records.append(Record(row, dict(zip(header, values, strict=False)), lines))
    return records, header, problems


def _read_json(text: str, jsonl: bool) -> tuple[list[Record], list[Problem]]:
    records, problems = [], []
    if jsonl:
        row = 0
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            row += 1
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(Problem(f"not valid JSON: {err.msg}", row, number))
                continue
            if not isinstance(value, dict):
                problems.append(Problem("is not a JSON object", row, number))
                continue
            records.append(Record(row, value, (number, number)))
        return records, problems
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        return [], [Problem(f"not valid JSON: {err.msg}", line=err.lineno)]
    if not isinstance(data, list):
        return [], [Problem("a JSON edit file must hold a list of objects (one per edit)")]
    for row, value in enumerate(data, start=1):
        if isinstance(value, dict):
            records.append(Record(row, value))
        else:
            problems.append(Problem("is not a JSON object", row))
    return records, problems


def _read_dataset(source: str, split: str) -> list[Record]:
    """A local ``save_to_disk`` folder, a folder of data files, or a hub id ``name[:config]``."""
    import datasets

    path = Path(source).expanduser()
    try:
        if path.is_dir() and any((path / f).exists() for f in ("state.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(str(path))
        elif path.is_dir():
            ds = datasets.load_dataset(str(path), split=split)
        else:
            name, _, config = source.partition(":")
            ds = datasets.load_dataset(name, config or None, split=split)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"no split {split!r}; splits: {', '.join(ds)}")
            ds = ds[split]
    except Exception as err:  # any loader failure becomes one readable problem
        raise EditFileError(source, [Problem(f"could not load the dataset: {err}")]) from err
    return [Record(i, dict(rec)) for i, rec in enumerate(ds, start=1)]


def read_table(source: str | Path, split: str = "train") -> EditTable:
    """Read an edit file without judging its content (encoding and syntax problems are kept)."""
    source = str(source)
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if path.is_file() and (suffix in TABLE_SUFFIXES or suffix in JSON_SUFFIXES):
        text, bad_lines = _decode(path.read_bytes(), source)
        if suffix in TABLE_SUFFIXES:
            records, columns, problems = _read_delimited(text, TABLE_SUFFIXES[suffix])
        else:
            records, problems = _read_json(text, jsonl=suffix != ".json")
            columns = list(dict.fromkeys(k for r in records for k in r.values))
        problems += [Problem(reason, _row_at(records, line), line) for line, reason in bad_lines]
        return EditTable(source, records, columns, problems)
    if path.is_file():
        raise EditFileError(source, [Problem(
            f"unknown file type {suffix!r}; use .csv, .tsv, .json, .jsonl or a dataset")])
    if not path.exists() and suffix in (*TABLE_SUFFIXES, *JSON_SUFFIXES):
        raise EditFileError(source, [Problem("the file does not exist")])
    records = _read_dataset(source, split)
    columns = list(dict.fromkeys(k for r in records for k in r.values))
    return EditTable(source, records, columns)


def _row_at(records: Iterable[Record], line: int) -> int | None:
    for rec in records:
        if rec.lines and rec.lines[0] <= line <= rec.lines[1]:
            return rec.row
    return None


# ---- columns ----------------------------------------------------------------------------------
def parse_mapping(items: Iterable[str]) -> dict[str, str]:
    """``["target_new=new_value"]`` -> ``{"target_new": "new_value"}`` (expected name = file's)."""
    mapping = {}
    for item in items:
        new, sep, old = item.partition("=")
        if not sep or not new.strip() or not old.strip():
            raise ValueError(f"--map {item!r}: write it as expected_name=column_in_file")
        if new.strip() not in (*REQUIRED, *OPTIONAL, *[a for v in ALIASES.values() for a in v]):
            raise ValueError(f"--map {item!r}: {new.strip()!r} is not a column massedit reads; "
                             f"known: {', '.join((*REQUIRED, *OPTIONAL))}")
        mapping[new.strip()] = old.strip()
    return mapping


def map_columns(table: EditTable, mapping: dict[str, str]) -> list[Problem]:
    """Rename columns in place (``mapping``: expected name -> the file's); returns problems."""
    problems = [Problem(f"--map {new}={old}: the file has no column {old!r} (columns: "
                        f"{', '.join(table.columns) or 'none'})")
                for new, old in mapping.items() if old not in table.columns]
    renames = {old: new for new, old in mapping.items()}
    for canonical, spellings in ALIASES.items():
        for spelling in spellings:
            if spelling in table.columns and canonical not in table.columns:
                renames.setdefault(spelling, canonical)
    if renames:
        table.columns = [renames.get(c, c) for c in table.columns]
        for rec in table.records:
            rec.values = {renames.get(k, k): v for k, v in rec.values.items()}
    return problems


# ---- validation -------------------------------------------------------------------------------
def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN from a dataset's empty cell
        return ""
    return str(value).strip()


def _prompt_list(value: Any) -> tuple[str, ...]:
    if value is None or isinstance(value, float):
        return ()
    items = value.split(LIST_SEPARATOR) if isinstance(value, str) else list(value)
    return tuple(s for s in (_text(v) for v in items) if s)


def _check_record(rec: Record) -> tuple[EditRequest | None, list[Problem]]:
    """The row as a request; the request's own validation decides what is wrong with it
    (``RequestError.problems``: field and reason), reported here with the row and line."""
    values = rec.values
    try:
        req = EditRequest(
            _text(values.get("prompt")), _text(values.get("subject")),
            _text(values.get("target_new")), _text(values.get("target_true")) or None,
            _prompt_list(values.get("paraphrase")), _prompt_list(values.get("neighborhood")),
            _text(values.get("case_id")) or rec.row,
        )
    except RequestError as err:
        return None, [Problem(reason, rec.row, rec.line, field)
                      for field, reason in err.problems]
    # An edit file's own rule (evaluation sets such as zsRE hold such records legitimately).
    if req.target_true == req.target_new:
        return None, [Problem(f"target_new equals target_true ({req.target_new!r}): nothing to "
                              "edit", rec.row, rec.line, "target_true")]
    return req, []


def _check_repeats(pairs: Sequence[tuple[Record, EditRequest]]) -> list[Problem]:
    """Exact duplicates and rows that ask different targets for the same subject and prompt."""
    first: dict[tuple[str, str], tuple[Record, EditRequest]] = {}
    problems = []
    for rec, req in pairs:
        key = (req.subject, req.prompt)
        if key not in first:
            first[key] = (rec, req)
            continue
        earlier, other = first[key]
        if (other.target_new, other.target_true) == (req.target_new, req.target_true):
            reason = f"exact duplicate of row {earlier.row}"
        else:
            reason = (f"conflicts with row {earlier.row}: same subject {req.subject!r} and prompt "
                      f"but target_new {req.target_new!r} here, {other.target_new!r} there")
            if other.target_new == req.target_new:
                reason = (f"conflicts with row {earlier.row}: same subject and prompt but "
                          f"target_true {req.target_true!r} here, {other.target_true!r} there")
        problems.append(Problem(reason, rec.row, rec.line))
    return problems


def validate(table: EditTable) -> EditSet:
    """All requests of ``table``, or :class:`EditFileError` listing every problem."""
    problems = list(table.problems)
    # A file with no columns at all (empty) is already reported; no need to list each column.
    missing = [c for c in REQUIRED if c not in table.columns] if table.columns else []
    for column in missing:
        problems.append(Problem(
            f"missing column {column!r} (columns found: {', '.join(table.columns) or 'none'}); "
            f"rename it in the file or pass --map {column}=YOUR_COLUMN", row=None,
            line=1 if table.records and table.records[0].lines else None))
    if not table.records and not problems:
        problems.append(Problem("the file holds no edits"))
    if missing or not table.records:
        raise EditFileError(table.source, problems)
    ignored = [c for c in table.columns if c not in (*REQUIRED, *OPTIONAL)]
    if ignored:
        logger.info("ignoring column(s) %s", ", ".join(ignored))
    pairs = []
    for rec in table.records:
        req, found = _check_record(rec)
        problems += found
        if req is not None:
            pairs.append((rec, req))
    problems += _check_repeats(pairs)
    if problems:
        raise EditFileError(table.source, problems)
    return EditSet(table.source, [req for _, req in pairs], [rec.row for rec, _ in pairs])


def load_edits(source: str | Path, mapping: dict[str, str] | None = None,
               split: str = "train") -> EditSet:
    """Read, rename and validate an edit file; raises :class:`EditFileError` with all problems."""
    table = read_table(source, split)
    table.problems += map_columns(table, mapping or {})
    return validate(table)


# ---- tokenisation -----------------------------------------------------------------------------
def tokenisation_problems(edits: EditSet, tok) -> list[Problem]:
    """What the model's tokenizer cannot do with the requests (checked before any edit)."""
    from massedit.engine.keys import encode_rows
    from massedit.engine.tokens import encode_target

    unk = getattr(tok, "unk_token_id", None)
    problems = []
    for req, row in zip(edits.requests, edits.rows, strict=True):
        try:
            encoded = encode_rows(tok, [req], [""])[0]
        except ValueError:
            problems.append(Problem(f"subject {req.subject!r} maps to no token of {req.text!r}",
                                    row))
            continue
        if unk is not None and encoded.ids[encoded.subject_last] == unk:
            problems.append(Problem(f"the tokenizer does not know the subject {req.subject!r}",
                                    row))
        for name in ("target_new", "target_true"):
            target = getattr(req, name)
            if target is None:
                continue
            try:
                ids = encode_target(tok, target)
            except ValueError:
                problems.append(Problem(f"{name} {target!r} tokenises to nothing", row))
                continue
            if unk is not None and unk in ids:
                problems.append(Problem(f"{name} {target!r} has tokens the tokenizer does not "
                                        "know", row))
    return problems
