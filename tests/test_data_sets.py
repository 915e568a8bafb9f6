"""Named data sets without a sibling data folder: mirror, cache, checked download (file:// URLs
stand in for the public sources; nothing here touches the network), and the shipped corpus."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import massedit.data.datasets as datasets
import massedit.data.download as download
from massedit.data.datasets import DataUnavailable, cached_path, dataset_file
from massedit.data.download import DownloadError, sha256_file

RECORD = {"case_id": 0, "requested_rewrite": {
    "prompt": "{} is located in", "subject": "Eiffel Tower", "target_new": {"str": "Rome"},
    "target_true": {"str": "Paris"}}, "paraphrase_prompts": ["Eiffel Tower is in"],
    "neighborhood_prompts": ["Louvre is located in"]}


@pytest.fixture
def public(tmp_path: Path, monkeypatch) -> dict:
    """A 'public' CounterFact file behind a file:// URL, an empty mirror and an empty cache."""
    source_file = tmp_path / "public" / "counterfact.json"
    source_file.parent.mkdir()
    source_file.write_text(json.dumps([RECORD, {**RECORD, "case_id": 1}]))
    monkeypatch.setenv("MASSEDIT_DATA", str(tmp_path / "mirror"))
    monkeypatch.setenv("MASSEDIT_CACHE", str(tmp_path / "cache"))
    pinned = dataclasses.replace(datasets.SOURCES["counterfact"], url=source_file.as_uri(),
                                 sha256=sha256_file(source_file))
    monkeypatch.setitem(datasets.SOURCES, "counterfact", pinned)
    return {"file": source_file, "source": pinned, "cache": tmp_path / "cache"}


def _cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def test_download_is_checked_then_cached(public, monkeypatch) -> None:
    from massedit.evals.readers import load_eval_dataset

    path = dataset_file("counterfact")
    assert path == cached_path(public["source"])
    assert path.read_bytes() == public["file"].read_bytes()
    assert [c.case_id for c in load_eval_dataset("counterfact")] == [0, 1]
    # The second time it comes from the cache: no download is attempted.
    monkeypatch.setattr(download, "_copy_url", lambda *a: pytest.fail("downloaded again"))
    assert dataset_file("counterfact") == path


def test_checksum_mismatch_is_refused_and_nothing_kept(public, monkeypatch) -> None:
    wrong = dataclasses.replace(public["source"], sha256="0" * 64)
    monkeypatch.setitem(datasets.SOURCES, "counterfact", wrong)
    with pytest.raises(DataUnavailable, match="differs from the pinned"):
        dataset_file("counterfact")
    assert _cache_files(public["cache"]) == []


def test_interrupted_download_leaves_no_partial_file(public, monkeypatch) -> None:
    def cut(url, fh, digest):
        fh.write(b'[{"case_id": 0, "requested')  # half a file, then the connection drops
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(download, "_copy_url", cut)
    with pytest.raises(DataUnavailable, match="connection reset"):
        dataset_file("counterfact")
    assert _cache_files(public["cache"]) == []
    # A KeyboardInterrupt mid-download cleans up too.
    monkeypatch.setattr(download, "_copy_url", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        dataset_file("counterfact")
    assert _cache_files(public["cache"]) == []


def test_unpinned_download_is_checked_for_structure_and_its_digest_recorded(public, tmp_path,
                                                                            monkeypatch) -> None:
    bad = tmp_path / "public" / "zsre.json"
    bad.write_text(json.dumps([{"subject": "UniFirst", "src": "What does UniFirst make?"}]))
    zsre = dataclasses.replace(datasets.SOURCES["zsre"], url=bad.as_uri())
    monkeypatch.setitem(datasets.SOURCES, "zsre", zsre)
    with pytest.raises(DataUnavailable, match=r"record 0 lacks \['rephrase', 'alt'"):
        dataset_file("zsre")
    assert _cache_files(public["cache"]) == []

    record = {"subject": "UniFirst", "src": "What does UniFirst make?", "rephrase": "r",
              "alt": "drones", "answers": ["uniforms"], "loc": "nq question: q", "loc_ans": "a"}
    bad.write_text(json.dumps([record]))
    path = dataset_file("zsre")
    assert (path.parent / (path.name + ".sha256")).read_text().strip() == sha256_file(bad)
    # A cached copy that changed afterwards is not trusted: it is fetched again.
    path.write_text("[]")
    assert json.loads(dataset_file("zsre").read_text()) == [record]


def test_mirror_comes_first_and_offline_errors_say_where_to_look(public, tmp_path,
                                                                   monkeypatch) -> None:
    mirror = tmp_path / "mirror" / "counterfact"
    mirror.mkdir(parents=True)
    (mirror / "counterfact_dev.json").write_text(json.dumps([RECORD]))
    assert dataset_file("counterfact") == mirror / "counterfact_dev.json"
    (mirror / "counterfact_dev.json").unlink()
    with pytest.raises(DataUnavailable, match="downloads are off") as err:
        dataset_file("counterfact", allow_download=False)
    assert "counterfact/counterfact.json" in str(err.value) and "MASSEDIT_DATA" in str(err.value)
    with pytest.raises(DataUnavailable, match="counterfact_train_easyedit.json"):
        dataset_file("counterfact_easyedit")  # no public URL: mirror or path only
    with pytest.raises(ValueError, match="unknown data set 'counterfactual'"):
        dataset_file("counterfactual")


def test_download_helper_alone(tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_text("hello")
    digest = download.download(src.as_uri(), tmp_path / "out" / "copy.txt")
    assert digest == sha256_file(src) and (tmp_path / "out" / "copy.txt").read_text() == "hello"
    with pytest.raises(DownloadError, match="could not download"):
        download.download((tmp_path / "absent.txt").as_uri(), tmp_path / "out" / "absent.txt")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["copy.txt"]


def test_eval_config_names_the_file_read(tmp_path: Path, monkeypatch) -> None:
    from massedit.data.embedded import embedded_file
    from massedit.evals.eval_job import dataset_record

    sample = embedded_file("counterfact_sample.json")
    assert dataset_record("counterfact_sample") == {"file": str(sample),
                                                    "sha256": sha256_file(sample)}
    own = tmp_path / "mine.json"
    own.write_text(json.dumps([RECORD]))
    assert dataset_record(str(own))["sha256"] == sha256_file(own)


def test_default_corpus_offline_is_the_shipped_excerpt(monkeypatch, caplog) -> None:
    import massedit.stats.moments as moments
    from massedit.data.corpus import corpus_id, iter_texts
    from massedit.stats.cache import StatsSpec

    def unreachable(corpus, *args, **kwargs):
        raise ConnectionError(f"Couldn't reach {corpus!r} on the Hub")

    monkeypatch.setattr(moments, "iter_texts", unreachable)
    with caplog.at_level("WARNING"):
        assert moments.resolve_corpus(StatsSpec(), None, None) == "wikitext-excerpt"
    assert "wikitext-excerpt" in caplog.text
    assert moments.resolve_corpus(StatsSpec(corpus="mine.txt"), None, None) == "mine.txt"
    texts = list(iter_texts("wikitext-excerpt"))
    assert len(texts) == 180 and texts[0].startswith("Homarus gammarus , known as")
    assert corpus_id("wikitext-excerpt").startswith("file:wikitext-2-valid-excerpt.txt:")
