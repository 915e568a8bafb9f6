"""Second-moment statistics: one pass for all sites, exact sums, fingerprinted cache, resume."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import pytest
import torch
from safetensors import safe_open

import massedit.stats.moments as stats_module
from massedit.data.corpus import iter_texts
from massedit.models.adapters import get_adapter
from massedit.stats.cache import stats_dir
from massedit.stats.checkpoint import PREFIX, Checkpointer
from massedit.stats.listing import list_cache
from massedit.stats.moments import (
    StatsSpec,
    accumulate_moments,
    cache_path,
    fingerprint,
    get_moments,
)
from massedit.stats.passes import (
    add_gram_upper_,
    budget_cut,
    collect_moments,
    row_blocks,
    symmetrised,
)
from massedit.testing import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


class Interrupted(RuntimeError):
    pass


def interrupted(texts, after: int) -> Iterator[str]:
    """The corpus, failing after ``after`` texts (a crash or Ctrl-C mid-pass)."""
    for i, text in enumerate(texts):
        if i == after:
            raise Interrupted(f"stopped after {after} texts")
        yield text


def test_one_pass_equals_explicit_sum(tiny_corpus):
    model, tok = tiny_model("llama")
    adapter = get_adapter(model)
    sites = [adapter.site_name(1), adapter.site_name(2)]
    spec = StatsSpec(corpus=str(tiny_corpus), max_length=16, batch_size=3)
    moments = accumulate_moments(model, tok, sites, iter_texts(str(tiny_corpus)), 200, spec,
                                 progress=False)
    assert moments[sites[0]].count == 200
    # The same keys collected by hand: each text tokenised on its own (with <bos>), the first
    # 200 tokens in corpus order, rows of at most 16 tokens, no padding counted.
    from massedit.engine.hooks import capture
    from massedit.engine.tokens import pad_id_of, pad_right

    rows, total = [], 0
    for text in iter_texts(str(tiny_corpus)):
        ids = tok(text)["input_ids"][: 200 - total]
        assert ids[0] == tok.bos_token_id
        rows += [ids[i : i + 16] for i in range(0, len(ids), 16)]
        total += len(ids)
        if total >= 200:
            break
    batch = pad_right(rows, pad_id_of(tok))
    with torch.no_grad(), capture(model, sites, inputs=True) as seen:
        model(**batch)
    mask = batch["attention_mask"].bool()
    for site in sites:
        k = seen[site][mask]  # (200, d_in)
        assert torch.allclose(moments[site].total, k.T @ k, rtol=1e-4, atol=1e-4)


def test_block_upper_gram_is_exact():
    gen = torch.Generator().manual_seed(0)
    for d in (7, 600, 1000):
        k = torch.randn(50, d, generator=gen, dtype=torch.float64)  # (tokens, d_in)
        blocks = row_blocks(d)
        assert blocks[0][0] == 0 and blocks[-1][1] == d and len(blocks) == max(1, min(8, d // 128))
        total = torch.zeros(d, d, dtype=torch.float64)
        add_gram_upper_(total, k[:20], blocks)
        add_gram_upper_(total, k[20:], blocks)
        assert torch.allclose(symmetrised(total, blocks), k.T @ k, rtol=1e-12, atol=1e-10)


def test_budget_cut_follows_corpus_order_across_processes():
    # Corpus texts of lengths 5, 3, 7, 2; budget 10 takes 5 + 3 + 2 (third text cut).
    one = budget_cut(torch.tensor([[5, 3, 7, 2]]), 10)
    assert one.tolist() == [[5, 3, 2, 0]]
    # Two processes: process 0 holds texts 0 and 2, process 1 texts 1 and 3 (-1: no text).
    two = budget_cut(torch.tensor([[5, 7], [3, 2]]), 10)
    assert two.tolist() == [[5, 2], [3, 0]]
    assert budget_cut(torch.tensor([[4, -1], [6, -1]]), 100).tolist() == [[4, 0], [6, 0]]


def test_cache_fingerprint_and_corruption(tiny_corpus, tmp_path, caplog):
    model, tok = tiny_model("gpt2")
    spec = StatsSpec(corpus=str(tiny_corpus), cache_dir=str(tmp_path), max_length=32)
    first, record = get_moments(model, tok, [1], spec, 300, progress=False)
    assert record["tokens_used"] == {"1": 300} and record["computed_layers"] == [1]
    site = get_adapter(model).site_name(1)
    fp = fingerprint(model, site, spec, str(tiny_corpus), 300)
    path = cache_path(tmp_path, fp)
    with safe_open(str(path), framework="pt") as fh:
        assert json.loads(fh.metadata()["fingerprint"]) == fp
    # Every part of the spec (and the model, site, corpus, budget) is in the fingerprint.
    for change in ({"max_length": 16}, {"dtype": "float64"}, {"seed": 1}):
        other = fingerprint(model, site, dataclasses.replace(spec, **change), str(tiny_corpus),
                            300)
        assert cache_path(tmp_path, other) != path
    assert cache_path(tmp_path, fingerprint(model, site, spec, str(tiny_corpus), 301)) != path
    assert cache_path(tmp_path, fingerprint(model, site, spec, "self", 300)) != path
    other_site = get_adapter(model).site_name(2)
    assert fingerprint(model, other_site, spec, str(tiny_corpus), 300)["site"] == other_site
    other_model, _ = tiny_model("gpt2", seed=1)
    assert cache_path(tmp_path, fingerprint(other_model, site, spec, str(tiny_corpus),
                                            300)) != path
    # Batch size and cache folder change how sums are computed, not what they are.
    same = dataclasses.replace(spec, batch_size=3, cache_dir="/elsewhere", checkpoint_every=7)
    assert fingerprint(model, site, same, str(tiny_corpus), 300) == fp
    # A cache hit returns the same sums; a corrupted file is detected and recomputed.
    again, record = get_moments(model, tok, [1], spec, 300, progress=False)
    assert torch.equal(again[1].total, first[1].total) and record["cached_layers"] == [1]
    raw = bytearray(path.read_bytes())
    raw[-8:] = b"\x00\x01\x02\x03\x04\x05\x06\x07"
    path.write_bytes(bytes(raw))
    with caplog.at_level("WARNING"):
        fixed, record = get_moments(model, tok, [1], spec, 300, progress=False)
    assert "corrupt" in caplog.text or "unreadable" in caplog.text
    assert record["computed_layers"] == [1]
    assert torch.equal(fixed[1].total, first[1].total)


def test_float64_sums_and_short_corpus(tmp_path, caplog):
    model, tok = tiny_model("gpt2")
    corpus = tmp_path / "short.txt"
    corpus.write_text("the cat sat on the mat .\n\nthe dog ran .\n")
    spec = StatsSpec(corpus=str(corpus), cache_dir=str(tmp_path), dtype="float64")
    with caplog.at_level("WARNING"):
        moments, record = get_moments(model, tok, [0, 1], spec, 10_000, progress=False)
    real = sum(len(tok(t)["input_ids"]) for t in ("the cat sat on the mat .", "the dog ran ."))
    assert "ran out" in caplog.text
    assert record["tokens_used"] == {"0": real, "1": real}
    assert moments[0].total.dtype == torch.float64
    # The real count is what the file records; the request stays in the fingerprint.
    fp = fingerprint(model, get_adapter(model).site_name(0), spec, str(corpus), 10_000)
    with safe_open(str(cache_path(tmp_path, fp)), framework="pt") as fh:
        assert int(fh.metadata()["count"]) == real


def test_resume_after_interruption_equals_uninterrupted(tiny_corpus, tmp_path, monkeypatch):
    model, tok = tiny_model("llama")
    spec = StatsSpec(corpus=str(tiny_corpus), max_length=16, batch_size=4, checkpoint_every=300)
    budget = 1500
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    clean, _ = get_moments(model, tok, [1, 2], dataclasses.replace(
        spec, cache_dir=str(tmp_path / "clean")), budget, progress=False)
    clean_calls = len(calls)

    cache = tmp_path / "interrupted"
    spec = dataclasses.replace(spec, cache_dir=str(cache))
    real_iter_texts = stats_module.iter_texts
    monkeypatch.setattr(stats_module, "iter_texts",
                        lambda *a, **k: interrupted(real_iter_texts(*a, **k), after=70))
    with pytest.raises(Interrupted):
        get_moments(model, tok, [1, 2], spec, budget, progress=False)
    handle.remove()
    partial = list(stats_dir(cache).glob(f"{PREFIX}*"))
    assert len(partial) == 1 and not list(stats_dir(cache).glob("model.*"))
    [entry] = list_cache(cache)  # what `massedit stats --list` shows
    assert entry.partial and 300 <= entry.tokens < budget and len(entry.sites) == 2

    monkeypatch.setattr(stats_module, "iter_texts", real_iter_texts)
    calls.clear()
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    resumed, record = get_moments(model, tok, [1, 2], spec, budget, progress=False)
    handle.remove()
    assert 300 <= record["resumed_at"] < budget
    assert record["tokens_used"] == {"1": budget, "2": budget}
    for layer in (1, 2):
        assert resumed[layer].count == clean[layer].count
        assert torch.allclose(resumed[layer].total, clean[layer].total, rtol=1e-6, atol=1e-6)
    # The resumed run only ran what the checkpoint lacked, and cleaned up after itself.
    assert 0 < len(calls) < clean_calls
    assert not list(stats_dir(cache).glob(f"{PREFIX}*"))


def test_checkpoint_of_another_run_or_corrupt_is_ignored(tiny_corpus, tmp_path, caplog):
    model, tok = tiny_model("llama")
    sites = [get_adapter(model).site_name(1)]
    spec = StatsSpec(corpus=str(tiny_corpus), max_length=16, batch_size=4)
    fps = [fingerprint(model, sites[0], spec, str(tiny_corpus), 800)]
    ckpt = Checkpointer(tmp_path, fps, world=1, every=200)
    with pytest.raises(Interrupted):
        collect_moments(model, tok, sites, interrupted(iter_texts(str(tiny_corpus)), 40), 800,
                        spec, checkpointer=ckpt, progress=False)
    assert ckpt.path.exists()
    # Another world size is another run: its checkpoint is not picked up.
    other = Checkpointer(tmp_path, fps, world=2, every=200)
    assert other.path != ckpt.path
    raw = bytearray(ckpt.path.read_bytes())
    raw[-4:] = b"\xff\xfe\xfd\xfc"
    ckpt.path.write_bytes(bytes(raw))
    with caplog.at_level("WARNING"):
        result = collect_moments(model, tok, sites, iter_texts(str(tiny_corpus)), 800, spec,
                                 checkpointer=ckpt, progress=False)
    assert "checkpoint" in caplog.text and result.resumed_at == 0
    clean = accumulate_moments(model, tok, sites, iter_texts(str(tiny_corpus)), 800, spec,
                               progress=False)
    assert torch.allclose(result.moments[sites[0]].total, clean[sites[0]].total, rtol=1e-6)


def test_self_corpus_samples_from_the_model(tmp_path):
    model, tok = tiny_model("gpt2")
    spec = StatsSpec(corpus="self", cache_dir=str(tmp_path), max_length=32)
    moments, record = get_moments(model, tok, [0], spec, 256, progress=False)
    assert record["corpus"] == "self" and moments[0].count == 256
    assert torch.isfinite(moments[0].total).all()


def test_unwritable_cache_still_gives_statistics_to_the_editor(tiny_corpus, tmp_path, caplog):
    model, tok = tiny_model("gpt2")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    spec = StatsSpec(corpus=str(tiny_corpus), cache_dir=str(blocker))
    with caplog.at_level("WARNING"):
        moments, _ = get_moments(model, tok, [1], spec, 200, progress=False)
    assert moments[1].count == 200 and "not writable" in caplog.text
    with pytest.raises(OSError, match="not writable"):
        get_moments(model, tok, [1], spec, 200, progress=False, require_cache=True)


def test_folder_corpus_reads_its_files_in_name_order_and_fingerprints_them(tmp_path):
    from massedit.data.corpus import corpus_id

    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "b.txt").write_text("second file, first paragraph\n\nsecond paragraph\n")
    (folder / "a.jsonl").write_text(json.dumps({"text": "first file"}) + "\n")
    (folder / "notes.md").write_text("not a corpus file")
    assert list(iter_texts(str(folder))) == [
        "first file", "second file, first paragraph", "second paragraph"]
    before = corpus_id(str(folder))
    assert before.startswith("folder:texts:")
    (folder / "b.txt").write_text("changed\n")
    assert corpus_id(str(folder)) != before  # new content: statistics are not re-used
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no"):
        list(iter_texts(str(empty)))
