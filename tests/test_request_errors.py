"""Request validation happens once (EditRequest, EditPair) and its errors carry field and reason
as data, which edit files report by row without parsing messages (docs/design.md §12)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from massedit.engine.requests import EditRequest, RequestError, as_requests
from massedit.jobs.edit_files import EditFileError, load_edits
from massedit.seq2seq.pairs import CheckInput, EditPair, as_pairs


@pytest.mark.parametrize(("args", "field", "reason"), [
    (("{} is in", "Paris", " "), "target_new", "field 'target_new' is empty"),
    (("{} {} is in", "Paris", "Rome"), "prompt", "field 'prompt' has 2 '{}' placeholders"),
    (("The tower is in", "Eiffel Tower", "Rome"), "prompt",
     "field 'prompt' contains neither a '{}' placeholder nor the subject 'Eiffel Tower'"),
])
def test_request_error_carries_field_and_reason(args, field, reason):
    with pytest.raises(RequestError) as info:
        EditRequest(*args, case_id=7)
    err = info.value
    assert err.field == field and err.reason.startswith(reason) and err.where == "request 7"
    assert str(err) == f"request 7: {err.reason}"
    assert err.problems == [(field, err.reason)]
    again = pickle.loads(pickle.dumps(err))  # the parts survive a process boundary
    assert (again.field, again.reason, again.where) == (err.field, err.reason, err.where)


def test_every_empty_field_is_named():
    with pytest.raises(RequestError) as info:
        EditRequest("", "", "Rome")
    assert info.value.field == "prompt"
    assert [f for f, _ in info.value.problems] == ["prompt", "subject"]
    with pytest.raises(RequestError) as info:
        as_requests([{"prompt": "{} is in"}])
    assert [f for f, _ in info.value.problems] == ["subject", "target_new"]


def test_edit_file_reports_the_requests_fields_by_row(tmp_path: Path):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,subject,target_new,target_true\n"
                    ",,Rome,Paris\n"                     # row 1: two empty fields
                    "Where is it,Eiffel Tower,Rome,\n"   # row 2: subject not in prompt
                    "The {} is in,Colosseum,Rome,Rome\n"  # row 3: nothing to edit
                    "The {} is in,Big Ben,Rome,London\n")  # row 4: fine
    with pytest.raises(EditFileError) as info:
        load_edits(path)
    got = [(p.row, p.line, p.field, p.reason) for p in info.value.problems]
    assert got == [
        (1, 2, "prompt", "field 'prompt' is empty"),
        (1, 2, "subject", "field 'subject' is empty"),
        (2, 3, "prompt", got[2][3]),
        (3, 4, "target_true", "target_new equals target_true ('Rome'): nothing to edit"),
    ]
    assert got[2][3].startswith("field 'prompt' contains neither a '{}' placeholder nor the "
                                "subject 'Eiffel Tower'")
    # The row number replaces the request's name: no "request ..." left in the report.
    assert "request" not in str(info.value)


def test_pair_and_check_errors_name_the_field():
    with pytest.raises(RequestError) as info:
        EditPair("he ran 5 yards", "she walked", "yards", case_id=7)
    assert (info.value.field, info.value.where) == ("span", "pair 7")
    assert info.value.reason.startswith("span 'yards' does not occur in positive_source")
    with pytest.raises(RequestError) as info:
        as_pairs([{"negative_source": "a b", "positive_source": "", "span": ""}], "p.csv")
    assert str(info.value) == ("p.csv: pair 'row 1': field 'positive_source' is empty; "
                               "field 'span' is empty")
    with pytest.raises(RequestError) as info:
        CheckInput("a source")
    assert info.value.field == "expected"
