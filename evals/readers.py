"""Readers for the evaluation data sets into one :class:`EvalCase` shape.

Three schemas are understood:

- CounterFact as ROME ships it: ``requested_rewrite{prompt "{}", subject, target_new{str},
  target_true{str}}`` plus ``paraphrase_prompts``, ``neighborhood_prompts``,
  ``attribute_prompts`` and ``generation_prompts``;
- CounterFact in EasyEdit's flat form: ``prompt, subject, target_new, ground_truth,
  rephrase_prompt, locality_prompt, locality_ground_truth``;
- zsRE as MEND/MEMIT prepared it: ``subject, src, rephrase, alt, answers, loc, loc_ans``.

Errors name the file, the record's index and the missing or bad field. Named data sets are found
by :mod:`massedit.data.datasets` (the ``$MASSEDIT_DATA`` mirror, the cache, or a download from
the public source); ``counterfact_sample`` ships with massedit.

>>> cases = load_eval_dataset("counterfact", n=10)  # doctest: +SKIP
>>> cases[0].request.text, cases[0].request.target_new  # doctest: +SKIP
('Porsche 911, created by', 'Honda')
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from massedit.data.datasets import dataset_file
from massedit.data.locations import data_root
from massedit.engine.requests import EditRequest, RequestError

logger = logging.getLogger(__name__)

# Named evaluation data sets and their schemas; massedit.data.datasets finds their files.
NAMED_DATASETS: dict[str, str] = {
    "counterfact": "counterfact",
    "counterfact_sample": "counterfact",
    "counterfact_easyedit": "counterfact_easyedit",
    "zsre": "zsre",
}


class DatasetError(ValueError):
    """A data file or one of its records is malformed; the message names the record and field."""


@dataclass(frozen=True)
class EvalCase:
    """One benchmark case: the edit to make and the prompts that measure it.

    ``loc_prompt``/``loc_answer`` are an unrelated fact (EasyEdit's locality, zsRE's NQ question);
    ``neighborhood_prompts`` are prompts whose answer is ``request.target_true``.
    """

    request: EditRequest
    rewrite_prompts: tuple[str, ...]
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood_prompts: tuple[str, ...] = ()
    attribute_prompts: tuple[str, ...] = ()
    generation_prompts: tuple[str, ...] = ()
    loc_prompt: str | None = None
    loc_answer: str | None = None
    case_id: str | int | None = None
    dataset: str = ""

    def __post_init__(self) -> None:
        if self.case_id is None:  # one id for the case and its request, whichever was given
            object.__setattr__(self, "case_id", self.request.case_id)

    @property
    def target_new(self) -> str:
        return self.request.target_new

    @property
    def target_true(self) -> str | None:
        return self.request.target_true


def _field(record: Any, dotted: str, where: str) -> Any:
    """``record["a"]["b"]`` for ``"a.b"``, with an error naming the field when it is absent."""
    value = record
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise DatasetError(f"{where}: missing field {dotted!r}")
        value = value[part]
    return value


def _text(record: Any, dotted: str, where: str) -> str:
    value = _field(record, dotted, where)
    if not isinstance(value, str):
        kind = type(value).__name__
        raise DatasetError(f"{where}: field {dotted!r} must be a string, got {kind}")
    return value


def _texts(record: Any, dotted: str, where: str, required: bool = True) -> tuple[str, ...]:
    if not required and (not isinstance(record, Mapping) or dotted not in record):
        return ()
    value = _field(record, dotted, where)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise DatasetError(f"{where}: field {dotted!r} must be a list of strings")
    return tuple(value)


def _counterfact_case(record: Any, index: int, where: str) -> EvalCase:
    rewrite = _field(record, "requested_rewrite", where)
    case_id = record.get("case_id", index)
    request = EditRequest(
        prompt=_text(rewrite, "prompt", f"{where} requested_rewrite"),
        subject=_text(rewrite, "subject", f"{where} requested_rewrite"),
        target_new=_text(rewrite, "target_new.str", f"{where} requested_rewrite"),
        target_true=_text(rewrite, "target_true.str", f"{where} requested_rewrite"),
        paraphrases=_texts(record, "paraphrase_prompts", where),
        neighborhood=_texts(record, "neighborhood_prompts", where),
        case_id=case_id,
    )
    return EvalCase(
        request=request,
        rewrite_prompts=(request.text,),
        paraphrase_prompts=request.paraphrases,
        neighborhood_prompts=request.neighborhood,
        attribute_prompts=_texts(record, "attribute_prompts", where, required=False),
        generation_prompts=_texts(record, "generation_prompts", where, required=False),
        case_id=case_id,
        dataset="counterfact",
    )


def _counterfact_easyedit_case(record: Any, index: int, where: str) -> EvalCase:
    truth = _text(record, "ground_truth", where)
    loc_prompt = _text(record, "locality_prompt", where)
    loc_answer = _text(record, "locality_ground_truth", where)
    case_id = record.get("case_id", index)
    # In CounterFact the locality prompt is a neighbour sharing the true object; when its answer
    # is the true target it also serves ROME's neighbourhood success (P(true) > P(new)).
    neighbours = (loc_prompt,) if loc_answer.strip() == truth.strip() else ()
    request = EditRequest(
        prompt=_text(record, "prompt", where),
        subject=_text(record, "subject", where),
        target_new=_text(record, "target_new", where),
        target_true=truth,
        paraphrases=_texts(record, "rephrase_prompt", where),
        neighborhood=neighbours,
        case_id=case_id,
    )
    return EvalCase(
        request=request,
        rewrite_prompts=(request.text,),
        paraphrase_prompts=request.paraphrases,
        neighborhood_prompts=neighbours,
        loc_prompt=loc_prompt,
        loc_answer=loc_answer,
        case_id=case_id,
        dataset="counterfact_easyedit",
    )


def _zsre_case(record: Any, index: int, where: str) -> EvalCase:
    answers = _texts(record, "answers", where)
    case_id = record.get("case_id", index)
    # zsRE has no single true answer; the first gold answer makes P(new) vs P(true) computable.
    request = EditRequest(
        prompt=_text(record, "src", where),
        subject=_text(record, "subject", where),
        target_new=_text(record, "alt", where),
        target_true=answers[0] if answers else None,
        paraphrases=_texts(record, "rephrase", where),
        case_id=case_id,
    )
    return EvalCase(
        request=request,
        rewrite_prompts=(request.text,),
        paraphrase_prompts=request.paraphrases,
        loc_prompt=_text(record, "loc", where),
        loc_answer=_text(record, "loc_ans", where),
        case_id=case_id,
        dataset="zsre",
    )


_PARSERS: dict[str, Callable[[Any, int, str], EvalCase]] = {
    "counterfact": _counterfact_case,
    "counterfact_easyedit": _counterfact_easyedit_case,
    "zsre": _zsre_case,
}


def _load_records(path: Path) -> list[Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no data file at {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path}: line {line_no} is not JSON: {e}") from e
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _read(
    path: str | os.PathLike, schema: str | None, n: int | None, skip_invalid: bool,
    skipped: list[int] | None = None,
) -> list[EvalCase]:
    """Parse the first ``n`` valid records; ``schema=None`` detects it from the first record.
    Indices of records skipped as invalid are appended to ``skipped`` when given."""
    path = Path(path)
    records = _load_records(path)
    if not records:
        raise DatasetError(f"{path}: the file holds no records")
    if schema is None:
        schema = detect_schema(records[0], f"{path.name} record 0")
    if n is not None and (n < 1 or n > len(records)):
        raise ValueError(f"{path}: asked for n={n} cases but the file has {len(records)} "
                         "records (ask for all of them with n=None, `--n all` on the command line)")
    parse = _PARSERS[schema]
    cases: list[EvalCase] = []
    skipped = [] if skipped is None else skipped
    for index, record in enumerate(records):
        where = f"{path.name} record {index}"
        if not isinstance(record, Mapping):
            raise DatasetError(f"{where}: expected an object, got {type(record).__name__}")
        try:
            cases.append(parse(record, index, where))
        except RequestError as e:
            # EditRequest's message names the field; prefix it with the record's index.
            if not skip_invalid:
                raise DatasetError(f"{where}: {e} (pass skip_invalid=True to skip it)") from e
            skipped.append(index)
        if n is not None and len(cases) == n:
            break
    if skipped:
        logger.warning("%s: skipped %d invalid record(s): %s", path, len(skipped), skipped[:20])
    if n is not None and len(cases) < n:
        raise ValueError(f"{path}: asked for n={n} cases but only {len(cases)} records are valid "
                         f"(skipped: {skipped[:20]}); ask for fewer, or all with `--n all`")
    return cases


def read_counterfact(
    path: str | os.PathLike, n: int | None = None, *, skip_invalid: bool = False
) -> list[EvalCase]:
    """CounterFact in ROME's schema; the first ``n`` cases (all when ``None``)."""
    return _read(path, "counterfact", n, skip_invalid)


def read_counterfact_easyedit(
    path: str | os.PathLike, n: int | None = None, *, skip_invalid: bool = False
) -> list[EvalCase]:
    """CounterFact in EasyEdit's flat schema; the first ``n`` cases (all when ``None``)."""
    return _read(path, "counterfact_easyedit", n, skip_invalid)


def read_zsre(
    path: str | os.PathLike, n: int | None = None, *, skip_invalid: bool = False
) -> list[EvalCase]:
    """zsRE in MEND's schema: edit ``src`` -> ``alt``; ``loc``/``loc_ans`` is the unrelated fact.

    The developers' 700-record dev file (``zsre/zsre_dev.json`` in the data mirror) has one
    record (index 534) with an empty ``alt``; reading it raises unless ``skip_invalid=True``.
    """
    return _read(path, "zsre", n, skip_invalid)


def detect_schema(record: Any, where: str = "record 0") -> str:
    """Which schema a record follows, from its keys."""
    keys = set(record) if isinstance(record, Mapping) else set()
    if "requested_rewrite" in keys:
        return "counterfact"
    if {"src", "alt"} <= keys:
        return "zsre"
    if {"prompt", "target_new", "ground_truth"} <= keys:
        return "counterfact_easyedit"
    raise DatasetError(
        f"{where}: cannot tell the schema from its keys {sorted(keys)}; expected "
        "'requested_rewrite' (CounterFact), 'src'+'alt' (zsRE) or "
        "'prompt'+'target_new'+'ground_truth' (EasyEdit CounterFact)"
    )


def shared_data_dir() -> Path | None:
    """The local data mirror, ``$MASSEDIT_DATA`` (an older name of
    :func:`massedit.data.locations.data_root`, kept for callers of ``massedit.evals``)."""
    return data_root()


def load_eval_dataset(
    name_or_path: str | os.PathLike, n: int | None = None, *, skip_invalid: bool = False,
    skipped: list[int] | None = None,
) -> list[EvalCase]:
    """Cases from a named data set (:data:`NAMED_DATASETS`: ``"counterfact"``,
    ``"counterfact_sample"``, ``"counterfact_easyedit"``, ``"zsre"``; see
    :func:`massedit.data.datasets.dataset_file` for where each is found) or a JSON/JSONL file
    whose schema is read from its first record. With ``skip_invalid``, records whose values are
    unusable (an empty target) are left out and their indices appended to ``skipped``; missing
    fields are always an error."""
    name = str(name_or_path)
    if name in NAMED_DATASETS:
        path = dataset_file(name)
        return _read(path, NAMED_DATASETS[name], n, skip_invalid, skipped)
    path = Path(name_or_path)
    if not path.exists() and path.suffix not in (".json", ".jsonl"):
        raise ValueError(f"unknown data set {name!r}: use one of {sorted(NAMED_DATASETS)} or the "
                         "path of a .json/.jsonl file")
    return _read(path, None, n, skip_invalid, skipped)
