"""Parallel-text moments of pair-edit sites go through the statistics store (docs/design.md §7)."""

from __future__ import annotations

import random

import pytest
import torch

import massedit.seq2seq.moments as moments_module
from massedit.models.adapters import get_module
from massedit.seq2seq import find_site
from massedit.seq2seq.moments import parallel_moments
from massedit.seq2seq.running import encode_output, encode_source, teacher_forced_batch
from massedit.stats.cache import cache_path, stats_dir
from massedit.testing import TINY_WORDS
from massedit.testing.tiny_seq2seq import tiny_seq2seq_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, str]]:
    rng = random.Random(1)
    words = list(TINY_WORDS)
    return [(" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))),
             " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))) for _ in range(120)]


@torch.no_grad()
def reference_moment(model, tok, site, pairs, tokens, batch_size=32):
    """The computation before the store (explicit hook, full ``addmm_``, one stack alone)."""
    total, count, mask = None, 0, {}

    def hook(_m, args, _out):
        nonlocal total
        k = args[0].reshape(-1, args[0].shape[-1])[mask["m"]].float()  # (t, d_in)
        total = torch.zeros(k.shape[1], k.shape[1]) if total is None else total
        total.addmm_(k.T, k)

    handle = get_module(model, site.name).register_forward_hook(hook)
    try:
        for lo in range(0, len(pairs), batch_size):
            if count >= tokens:
                break
            chunk = pairs[lo : lo + batch_size]
            batch, _ = teacher_forced_batch(model, tok, [encode_source(tok, s) for s, _ in chunk],
                                            [encode_output(tok, t) for _, t in chunk])
            key = "attention_mask" if site.stack == "encoder" else "decoder_attention_mask"
            mask["m"] = batch[key].reshape(-1).bool()
            model(**batch, use_cache=False)
            count += int(mask["m"].sum())
    finally:
        handle.remove()
    return total, count


@pytest.mark.parametrize("model_type", ["marian", "t5"])
def test_store_path_equals_the_explicit_sum_and_reads_its_cache(model_type, pairs, tmp_path,
                                                                  monkeypatch):
    model, tok = tiny_seq2seq_model(model_type)
    sites = [find_site(model, "encoder.1"), find_site(model, "decoder.1")]
    tokens = 300  # a few batches: the budget, not the corpus, ends each stack
    found = parallel_moments(model, tok, sites, pairs, tokens, cache_dir=tmp_path)
    for site in sites:
        total, count = reference_moment(model, tok, site, pairs, tokens)
        assert found[site.name].count == count
        assert torch.allclose(found[site.name].total, total, rtol=1e-5, atol=1e-4)
        assert torch.allclose(found[site.name].mean, (total / count).double(), rtol=1e-5,
                              atol=1e-6)
    files = sorted(p.name for p in stats_dir(tmp_path).iterdir())
    assert len(files) == 2 and all(f.endswith(".safetensors") for f in files)

    def no_pass(*_args, **_kwargs):
        raise AssertionError("a second call must read the store, not run the pass")

    monkeypatch.setattr(moments_module, "parallel_pass", no_pass)
    again = parallel_moments(model, tok, sites, pairs, tokens, cache_dir=tmp_path)
    for site in sites:
        assert torch.equal(again[site.name].total, found[site.name].total)
        assert again[site.name].count == found[site.name].count
    # Another budget, batch size or corpus is another fingerprint: computed, not read.
    for other in ({"tokens": 200}, {"batch_size": 16}, {"pairs": pairs[1:]}):
        args = {"tokens": tokens, "batch_size": 32, "pairs": pairs, **other}
        with pytest.raises(AssertionError, match="must read the store"):
            parallel_moments(model, tok, sites[:1], args["pairs"], args["tokens"],
                             args["batch_size"], cache_dir=tmp_path)


def test_a_sites_moment_does_not_depend_on_the_other_sites_of_the_pass(pairs, tmp_path):
    """Cached per site, so a stack stops counting at its own budget whatever shares the pass."""
    model, tok = tiny_seq2seq_model("bart")
    enc, dec = find_site(model, "encoder.0"), find_site(model, "decoder.1")
    both = moments_module.parallel_pass(model, tok, [enc, dec], pairs, 250, batch_size=8)
    for site in (enc, dec):
        alone = moments_module.parallel_pass(model, tok, [site], pairs, 250, batch_size=8)
        assert alone[site.name].count == both[site.name].count
        assert torch.allclose(alone[site.name].total, both[site.name].total, rtol=1e-6)


def test_pair_editor_reads_what_another_editor_stored(pairs, tmp_path, monkeypatch):
    from massedit.seq2seq.pair_edit import PairEditor

    model, tok = tiny_seq2seq_model("marian")
    site = find_site(model, "encoder.2")
    first = PairEditor(model, tok, corpus=pairs, cache_dir=tmp_path).moments([site], 200)
    fp_file = [p for p in stats_dir(tmp_path).iterdir()]
    assert len(fp_file) == 1 and fp_file[0].name.startswith(site.name)
    monkeypatch.setattr(moments_module, "parallel_pass", lambda *a, **k: pytest.fail("ran"))
    second = PairEditor(model, tok, corpus=pairs, cache_dir=tmp_path).moments([site], 200)
    assert torch.equal(first[site.name].total, second[site.name].total)
    fp = moments_module.parallel_fingerprint(
        model, site, moments_module.parallel_corpus_id(pairs), 200, 32)
    assert cache_path(tmp_path, fp) == fp_file[0]


def test_stats_listing_shows_parallel_statistics(pairs, tmp_path):
    from rich.console import Console

    from massedit.stats.listing import list_cache, print_cache

    model, tok = tiny_seq2seq_model("t5")
    parallel_moments(model, tok, [find_site(model, "encoder.0"), find_site(model, "encoder.1")],
                     pairs, 100, cache_dir=tmp_path)
    [entry] = list_cache(tmp_path)  # both sites: one pass, one row
    assert len(entry.sites) == 2 and entry.max_length == 0 and entry.tokens >= 100
    console = Console(record=True, width=200)
    print_cache(console, tmp_path)
    assert f"{len(pairs)} parallel pairs" in console.export_text()
