"""Second-moment statistics: one pass for all sites, exact sums, fingerprinted cache."""

from __future__ import annotations

import dataclasses
import json

import torch
from safetensors import safe_open

from massedit.corpus import iter_texts
from massedit.models import get_adapter
from massedit.stats import StatsSpec, accumulate_moments, cache_path, fingerprint, get_moments
from massedit.testing import tiny_model


def test_one_pass_equals_explicit_sum(tiny_corpus):
    model, tok = tiny_model("llama")
    adapter = get_adapter(model)
    sites = [adapter.site_name(1), adapter.site_name(2)]
    spec = StatsSpec(corpus=str(tiny_corpus), max_length=16, batch_size=3)
    texts = iter_texts(str(tiny_corpus))
    moments = accumulate_moments(model, tok, sites, texts, 200, spec, progress=False)
    assert moments[sites[0]].count == 200
    # The same keys collected by hand: tokens of the first chunks, no padding counted.
    from massedit.hooks import capture
    from massedit.stats import token_chunks
    from massedit.tokens import pad_id_of, pad_right

    chunks, total = [], 0
    for c in token_chunks(tok, iter_texts(str(tiny_corpus)), 16):
        chunks.append(c[: 200 - total])
        total += len(chunks[-1])
        if total >= 200:
            break
    batch = pad_right(chunks, pad_id_of(tok))
    with torch.no_grad(), capture(model, sites, inputs=True) as seen:
        model(**batch)
    mask = batch["attention_mask"].bool()
    for site in sites:
        k = seen[site][mask]  # (200, d_in)
        assert torch.allclose(moments[site].total, k.T @ k, rtol=1e-4, atol=1e-4)


def test_cache_fingerprint_and_corruption(tiny_corpus, tmp_path, caplog):
    model, tok = tiny_model("gpt2")
    spec = StatsSpec(corpus=str(tiny_corpus), cache_dir=str(tmp_path), max_length=32)
    first, record = get_moments(model, tok, [1], spec, 300, progress=False)
    assert record["tokens_used"] == {"1": 300}
    site = get_adapter(model).site_name(1)
    fp = fingerprint(model, site, spec, str(tiny_corpus), 300)
    path = cache_path(tmp_path, fp)
    with safe_open(str(path), framework="pt") as fh:
        assert json.loads(fh.metadata()["fingerprint"]) == fp
    # Every part of the spec is in the fingerprint.
    for change in ({"max_length": 16}, {"dtype": "float64"}, {"seed": 1}):
        other = fingerprint(model, site, dataclasses.replace(spec, **change), str(tiny_corpus),
                            300)
        assert cache_path(tmp_path, other) != path
    assert cache_path(tmp_path, fingerprint(model, site, spec, str(tiny_corpus), 301)) != path
    # A cache hit returns the same sums; a corrupted file is detected and recomputed.
    again, _ = get_moments(model, tok, [1], spec, 300, progress=False)
    assert torch.equal(again[1].total, first[1].total)
    raw = bytearray(path.read_bytes())
    raw[-8:] = b"\x00\x01\x02\x03\x04\x05\x06\x07"
    path.write_bytes(bytes(raw))
    with caplog.at_level("WARNING"):
        fixed, _ = get_moments(model, tok, [1], spec, 300, progress=False)
    assert "corrupt" in caplog.text or "unreadable" in caplog.text
    assert torch.equal(fixed[1].total, first[1].total)


def test_self_corpus_samples_from_the_model(tmp_path):
    model, tok = tiny_model("gpt2")
    spec = StatsSpec(corpus="self", cache_dir=str(tmp_path), max_length=32)
    moments, record = get_moments(model, tok, [0], spec, 256, progress=False)
    assert record["corpus"] == "self" and moments[0].count == 256
    assert torch.isfinite(moments[0].total).all()
