"""Bad input fails before any weight changes; a failing edit leaves the model as it was."""

from __future__ import annotations

import pytest
import torch

from massedit import EditError, Editor, EditRequest
from massedit.engine.requests import RequestError
from massedit.testing import tiny_model
from tests.test_engine_algebra import REQUESTS, _editor


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_request_validation_names_the_field():
    with pytest.raises(RequestError, match="request 7: field 'target_new' is empty"):
        EditRequest("{} is in", "Paris", " ", case_id=7)
    with pytest.raises(RequestError, match="neither a '{}' placeholder nor the subject"):
        EditRequest("The tower is in", "Eiffel Tower", "Rome", case_id=1)
    with pytest.raises(RequestError, match="field 'subject' is empty"):
        EditRequest("{} is in", "", "Rome")
    # Prompts with {subject} or the subject written out (last occurrence) are normalised.
    assert EditRequest("{subject} is in", "Rome", "Paris").prompt == "{} is in"
    assert EditRequest("Rome is Rome", "Rome", "Paris").prompt == "Rome is {}"


def test_unknown_method_and_model_type():
    model, tok = tiny_model("gpt2")
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        Editor(model, tok, method="nope")
    with pytest.raises(ValueError, match="unknown objective"):
        Editor(model, tok, method="memit", objective="nope")
    model.config.model_type = "mystery"
    with pytest.raises(ValueError, match="register_adapter"):
        Editor(model, tok)


def test_bad_row_in_a_batch_fails_before_any_edit(tiny_corpus, stats_dir):
    model, tok = tiny_model("gpt2")
    before = _state(model)
    editor = _editor(model, tok, tiny_corpus, stats_dir, "memit", layers=(1,))
    rows = [REQUESTS[0].to_dict(), {"prompt": "The {} is in", "subject": "Paris"}]
    with pytest.raises(RequestError, match="request 1: missing field"):
        editor.edit(rows)
    rows[1] = {"prompt": "The city is in", "subject": "Paris", "target_new": "Rome"}
    with pytest.raises(RequestError, match="request 1: field 'prompt'"):
        editor.edit(rows)
    assert all(torch.equal(before[k], v) for k, v in _state(model).items())


def test_exploding_update_stops_and_restores(tiny_corpus, stats_dir):
    model, tok = tiny_model("llama")
    before = _state(model)
    editor = _editor(model, tok, tiny_corpus, stats_dir, "memit", layers=(1, 2),
                     max_update_ratio=1e-6)
    with pytest.raises(EditError, match="weight's own norm"):
        editor.edit(REQUESTS)
    assert all(torch.equal(before[k], v) for k, v in _state(model).items())


def test_non_finite_update_stops_and_restores(tiny_corpus, stats_dir, monkeypatch):
    model, tok = tiny_model("llama")
    before = _state(model)
    editor = _editor(model, tok, tiny_corpus, stats_dir, "memit", layers=(1, 2))
    real_solve = editor.objective.solve
    calls = {"n": 0}

    def poisoned(problem):  # the second layer's update goes bad after the first was written
        calls["n"] += 1
        delta = real_solve(problem)
        if calls["n"] == 2:
            delta.u = delta.u * float("nan")
        return delta

    monkeypatch.setattr(editor.objective, "solve", poisoned)
    with pytest.raises(EditError, match="non-finite"):
        editor.edit(REQUESTS)
    assert calls["n"] == 2
    assert all(torch.equal(before[k], v) for k, v in _state(model).items())
