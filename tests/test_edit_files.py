"""Reading and validating edit files: formats, encodings, column mapping, every problem class."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from massedit.jobs.edit_files import EditFileError, load_edits, parse_mapping, tokenisation_problems

HEADER = "prompt,subject,target_new,target_true,paraphrase,neighborhood\n"
GOOD = (
    "The {} is located in,Eiffel Tower,Rome,Paris,The Eiffel Tower is in|Eiffel Tower is in,"
    "The Louvre is in\n"
    "Big Ben is located in the city of,Big Ben,Berlin,London,,\n"
)
RECORDS = [
    {"prompt": "The {} is located in", "subject": "Eiffel Tower", "target_new": "Rome",
     "target_true": "Paris", "paraphrase": ["The Eiffel Tower is in", "Eiffel Tower is in"],
     "neighborhood": ["The Louvre is in"]},
    {"prompt": "Big Ben is located in the city of", "subject": "Big Ben", "target_new": "Berlin",
     "target_true": "London"},
]


def _check_good(edits) -> None:
    first, second = edits.requests
    assert edits.rows == [1, 2]
    assert first.prompt == "The {} is located in" and first.target_true == "Paris"
    assert first.paraphrases == ("The Eiffel Tower is in", "Eiffel Tower is in")
    assert first.neighborhood == ("The Louvre is in",)
    # A subject written out in the prompt becomes the placeholder.
    assert second.prompt == "{} is located in the city of" and second.paraphrases == ()


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_csv_with_and_without_bom(tmp_path: Path, bom: bytes) -> None:
    path = tmp_path / "edits.csv"
    path.write_bytes(bom + (HEADER + GOOD).encode())
    _check_good(load_edits(path))


def test_tsv(tmp_path: Path) -> None:
    path = tmp_path / "edits.tsv"
    path.write_text((HEADER + GOOD).replace(",", "\t"), encoding="utf-8")
    _check_good(load_edits(path))


def test_json_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "e.json").write_text(json.dumps(RECORDS), encoding="utf-8")
    (tmp_path / "e.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n")
    _check_good(load_edits(tmp_path / "e.json"))
    _check_good(load_edits(tmp_path / "e.jsonl"))


def test_datasets_folder(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [{**r, "paraphrase": r.get("paraphrase", []), "neighborhood": r.get("neighborhood", [])}
            for r in RECORDS]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    _check_good(load_edits(tmp_path / "ds"))


def test_column_mapping(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("question,entity,new_value\nThe {} is in,Eiffel Tower,Rome\n")
    mapping = parse_mapping(["prompt=question", "subject=entity", "target_new=new_value"])
    edits = load_edits(path, mapping)
    assert edits.requests[0].text == "The Eiffel Tower is in"
    assert edits.requests[0].target_true is None
    with pytest.raises(ValueError, match="not a column massedit reads"):
        parse_mapping(["colour=question"])
    with pytest.raises(EditFileError, match="has no column 'nope'"):
        load_edits(path, {"prompt": "nope", "subject": "entity", "target_new": "new_value"})


def _problems(tmp_path: Path, body: str, name: str = "bad.csv", raw: bytes | None = None):
    path = tmp_path / name
    if raw is None:
        path.write_text(body, encoding="utf-8")
    else:
        path.write_bytes(raw)
    with pytest.raises(EditFileError) as info:
        load_edits(path)
    return [str(p) for p in info.value.problems]


def test_all_problems_reported_together(tmp_path: Path) -> None:
    body = HEADER + GOOD + (
        "The {} is in,,Rome,Paris,,\n"                                   # row 3: empty subject
        "Where is the tower,Eiffel Tower,Rome,Paris,,\n"                 # row 4: subject missing
        "The {} is located in,Eiffel Tower,Rome,Paris,,\n"               # row 5: duplicate of 1
        "The {} is located in,Eiffel Tower,Tokyo,Paris,,\n"              # row 6: conflicts with 1
        "The {} is in,Colosseum,Rome,Rome,,\n"                           # row 7: new == true
    )
    problems = _problems(tmp_path, body)
    assert len(problems) == 5, problems
    assert problems[0] == "row 3 (line 4): field 'subject' is empty"
    assert problems[1].startswith("row 4 (line 5): field 'prompt' contains neither a '{}' "
                                  "placeholder nor the subject 'Eiffel Tower'")
    assert problems[2] == "row 5 (line 6): exact duplicate of row 1"
    assert problems[3].startswith("row 6 (line 7): conflicts with row 1")
    assert problems[4].startswith("row 7 (line 8): target_new equals target_true")


def test_missing_column(tmp_path: Path) -> None:
    problems = _problems(tmp_path, "prompt,target_new\nThe {} is in,Rome\n")
    assert problems == [
        "line 1: missing column 'subject' (columns found: prompt, target_new); rename it in "
        "the file or pass --map subject=YOUR_COLUMN"
    ]


def test_unreadable_encoding(tmp_path: Path) -> None:
    raw = (HEADER + GOOD).encode() + "The {} is in,Caf\xe9 Central,Rome,,,\n".encode("latin-1")
    problems = _problems(tmp_path, "", raw=raw)
    assert len(problems) == 1 and problems[0].startswith("row 3 (line 4): unreadable encoding")
    utf16 = (HEADER + GOOD).encode("utf-16")
    assert _problems(tmp_path, "", name="u16.csv", raw=utf16) == [
        "the file is UTF-16 encoded; save it as UTF-8"]


def test_json_syntax_and_placeholders(tmp_path: Path) -> None:
    lines = [json.dumps(RECORDS[0]), "{not json", json.dumps({**RECORDS[1], "prompt": "{} {}"})]
    problems = _problems(tmp_path, "\n".join(lines), name="bad.jsonl")
    assert problems[0].startswith("row 2 (line 2): not valid JSON")
    assert problems[1].startswith("row 3 (line 3): field 'prompt' has 2 '{}' placeholders")


def test_empty_file_and_unknown_type(tmp_path: Path) -> None:
    assert _problems(tmp_path, "") == ["the file is empty"]
    assert _problems(tmp_path, HEADER) == ["the file holds no edits"]
    assert _problems(tmp_path, "x", name="edits.xlsx")[0].startswith("unknown file type")


def test_tokenisation_problems(tmp_path: Path) -> None:
    from massedit.testing import build_word_tokenizer

    tok = build_word_tokenizer("The is in Eiffel Tower Rome Paris Big Ben located the city of "
                               "Berlin London Louvre".split())
    path = tmp_path / "e.csv"
    path.write_text(HEADER + GOOD + "The {} is in,Eiffel Tower,Zanzibar,Paris,,\n")
    problems = tokenisation_problems(load_edits(path), tok)
    assert [str(p) for p in problems] == [
        "row 3: target_new 'Zanzibar' has tokens the tokenizer does not know"]
