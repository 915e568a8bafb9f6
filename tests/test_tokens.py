"""Subject positions from offset mappings: BOS tokenizers, repeated subjects, placeholders."""

from __future__ import annotations

import pytest

from massedit.engine.keys import encode_rows
from massedit.engine.requests import EditRequest
from massedit.engine.tokens import encode_target, encode_with_subject, pad_batch
from massedit.testing import TINY_WORDS
from massedit.testing.tokenizer import build_word_tokenizer


@pytest.mark.parametrize("add_bos", [False, True])
def test_subject_last_token_with_and_without_bos(add_bos):
    tok = build_word_tokenizer(TINY_WORDS, add_bos=add_bos)
    req = EditRequest("The {} is located in", "Eiffel Tower", "Rome")
    enc = encode_with_subject(tok, req.text, req.subject_span())
    words = tok.convert_ids_to_tokens(enc.ids)
    assert words[enc.subject_last] == "Tower"
    assert (words[0] == "<bos>") is add_bos


def test_repeated_subject_uses_the_placeholder_position():
    tok = build_word_tokenizer(TINY_WORDS)
    # The subject's text occurs twice; the placeholder marks the second occurrence.
    req = EditRequest("Paris is the capital . The city of {} is in", "Paris", "Italy")
    enc = encode_with_subject(tok, req.text, req.subject_span())
    assert enc.subject_last == len(tok(req.text)["input_ids"]) - 3
    # Written out, the last occurrence is taken; with a prefix, the span moves with it.
    written = EditRequest("Paris is the capital . The city of Paris is in", "Paris", "Italy")
    assert written.prompt == req.prompt
    prefix = "one two three . "
    rows = encode_rows(tok, [req], ["", prefix])
    assert rows[1].subject_last == rows[0].subject_last + 4


def test_placeholder_forms_are_equivalent():
    a = EditRequest("{subject} plays", "Michael Jordan", "football")
    b = EditRequest("{} plays", "Michael Jordan", "football")
    c = EditRequest("Michael Jordan plays", "Michael Jordan", "football")
    assert a.prompt == b.prompt == c.prompt == "{} plays"


def test_target_tokens_have_no_special_tokens():
    tok = build_word_tokenizer(TINY_WORDS, add_bos=True)
    ids = encode_target(tok, "Rome")
    assert tok.convert_ids_to_tokens(ids) == ["Rome"]


@pytest.mark.parametrize("side", ["left", "right"])
def test_pad_batch_offsets(side):
    ids, mask, offsets = pad_batch([[5, 6, 7], [8]], 0, side)
    assert ids.shape == (2, 3) and int(mask.sum()) == 4
    assert offsets == ([0, 2] if side == "left" else [0, 0])
    row = ids[1, offsets[1]: offsets[1] + 1]
    assert row.tolist() == [8]
