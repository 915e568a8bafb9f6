"""Inputs of the stream's perplexity, model-sampled statistics text and encoder-decoder runs go
to the input embedding's device (docs/design.md §12), as tests/test_offload.py checks for edits:
with the embedding offloaded to disk the first parameter is on ``meta``, where ids made
"on the model's device" would fail, as they would land on the wrong GPU of a split model."""

from __future__ import annotations

import copy
from itertools import islice

import pytest
import torch
from accelerate import dispatch_model

from evals.stream import perplexity
from massedit.data.corpus import iter_texts
from massedit.models.placement import input_device, is_offloaded
from massedit.seq2seq.running import encode_output, encode_source, teacher_forced_batch, translate
from massedit.testing.tiny_seq2seq import tiny_seq2seq_model
from tests.test_offload import _split

pytestmark = pytest.mark.usefixtures("one_thread")


def test_perplexity_and_model_text_of_an_offloaded_model_equal_the_whole_model(tmp_path):
    whole, split, tok, _ = _split("llama", tmp_path)
    assert next(split.parameters()).device.type == "meta" and input_device(split).type == "cpu"
    ids = tok("The Eiffel Tower is located in Paris and the Colosseum is in Rome .")["input_ids"]
    assert perplexity(split, ids, window=8) == pytest.approx(perplexity(whole, ids, window=8),
                                                             rel=1e-5)
    # Statistics' "self" corpus: text sampled from the model, with the same seed.
    texts = [list(islice(iter_texts("self", model=m, tok=tok, seed=3), 8)) for m in (whole, split)]
    assert texts[0] == texts[1] and len(texts[0]) == 8


def test_teacher_forcing_and_translation_of_an_offloaded_t5_equal_the_whole_model(tmp_path):
    whole, tok = tiny_seq2seq_model("t5")
    # The embeddings (tied to each other and to the head), the decoder and the head go to
    # disk; the encoder's blocks stay on the CPU.
    device_map = {"shared": "disk", "encoder.embed_tokens": "disk", "encoder.block": "cpu",
                  "encoder.final_layer_norm": "cpu", "encoder.dropout": "cpu",
                  "decoder": "disk", "lm_head": "disk"}
    split = dispatch_model(copy.deepcopy(whole), device_map, main_device="cpu",
                           offload_dir=str(tmp_path / "offload"))
    assert is_offloaded(split.shared) and next(split.parameters()).device.type == "meta"
    sources = ["The Eiffel Tower is located in Paris", "Michael Jordan plays basketball"]
    outputs = [encode_output(tok, "Paris"), encode_output(tok, "basketball")]
    encoded = [encode_source(tok, s) for s in sources]
    losses = []
    for model in (whole, split):
        batch, labels = teacher_forced_batch(model, tok, encoded, outputs)
        assert labels.device == input_device(model)
        with torch.no_grad():
            losses.append(model(**batch, labels=labels).loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    assert translate(split, tok, sources, max_new_tokens=6) == translate(whole, tok, sources,
                                                                         max_new_tokens=6)
