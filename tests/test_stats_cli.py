"""``massedit stats``: fills the cache the editor reads, lists it, refuses bad input cleanly."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import massedit.stats.moments as stats_module
from massedit.stats.cache import stats_dir
from massedit.testing import TINY_WORDS, tiny_model
from tests.test_cli import invoke

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("stats-cli")
    model, tok = tiny_model("llama")
    model.save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    rng = random.Random(2)
    words = list(TINY_WORDS)
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 24))) + " ."
             for _ in range(900)]  # about 15k tokens: more than the default budget (100 × 96)
    (folder / "corpus.txt").write_text("\n\n".join(texts))
    return folder / "model", folder / "corpus.txt"


def _files(cache: Path) -> list[Path]:
    return sorted(stats_dir(cache).glob("*.safetensors")) if stats_dir(cache).is_dir() else []


def test_stats_fill_the_editors_cache_and_list_it(saved, tmp_path, monkeypatch):
    from massedit import Editor, EditRequest
    from massedit.models.loading import load_model
    from massedit.stats.moments import StatsSpec

    model_dir, corpus = saved
    cache = tmp_path / "cache"
    # Two layers named on both sides (a 4-layer model's shape default is one layer).
    result = invoke("stats", "--model", model_dir, "--method", "memit", "--layers", "0-1",
                    "--corpus", corpus, "--cache-dir", cache)
    assert result.exit_code == 0, result.output
    files = _files(cache)
    assert len(files) == 2 and "computed" in result.output

    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    listed = invoke("stats", "--list", "--cache-dir", cache)
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if "corpus.txt" in line)
    cells = [c.strip() for c in row.split("│")]
    assert cells[1].endswith("/model") and cells[2] == "model.layers.{0-1}.mlp.down_proj"
    assert cells[3].startswith("corpus.txt (") and cells[4] == "9600" and cells[6] == "float32"

    # The editor, with the same options, finds every file and computes nothing.
    def no_pass(*args, **kwargs):
        raise AssertionError("the editor recomputed statistics massedit stats had cached")

    monkeypatch.setattr(stats_module, "collect_moments", no_pass)
    model, tok = load_model(str(model_dir))
    editor = Editor(model, tok, method="memit", stats=StatsSpec(corpus=str(corpus),
                    cache_dir=str(cache)), progress=False, v_num_grad_steps=2, layers=(0, 1))
    patch = editor.edit([EditRequest("{} is located in", "Paris", "Rome", "London")])
    # The patch records the statistics budget it used.
    assert patch.metadata["stats"]["tokens_requested"] == 9600
    assert patch.metadata["stats"]["tokens_used"] == {"0": 9600, "1": 9600}
    assert patch.metadata["stats"]["cached_layers"] == [0, 1]

    # A corrupted file is rejected: the next run recomputes that site and keeps the other.
    raw = bytearray(files[0].read_bytes())
    raw[-16:] = bytes(16)
    files[0].write_bytes(bytes(raw))
    monkeypatch.undo()
    again = invoke("stats", "--model", model_dir, "--method", "memit", "--layers", "0-1",
                   "--corpus", corpus, "--cache-dir", cache, "--batch-size", "16")
    assert again.exit_code == 0, again.output
    assert again.output.count("computed") >= 1 and again.output.count("cached") >= 1
    assert _files(cache) == files


@pytest.mark.parametrize("args, message", [
    (["--layers", "2-9"], "do not exist"),
    (["--layers", "two"], "write layers as"),
    ([], "give --method"),
    (["--layers", "1", "--dtype", "float16"], "float32 or float64"),
    (["--layers", "1", "--corpus", "missing.txt"], "cannot read the statistics corpus"),
    (["--layers", "1", "--cache-dir", "BLOCKER"], "not writable"),
])
def test_bad_input_is_refused_and_nothing_is_written(saved, tmp_path, args, message):
    model_dir, corpus = saved
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    args = [str(blocker) if a == "BLOCKER" else str(tmp_path / a) if a == "missing.txt" else a
            for a in args]
    if "--corpus" not in args:
        args += ["--corpus", str(corpus)]
    if "--cache-dir" not in args:
        args += ["--cache-dir", str(tmp_path / "cache")]
    result = invoke("stats", "--model", model_dir, "--tokens", "500", *args)
    assert result.exit_code == 1, result.output
    assert message in " ".join(result.output.split())
    assert _files(tmp_path / "cache") == []


def test_unreadable_corpus_is_refused(saved, tmp_path):
    model_dir, _ = saved
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"no_text_field": 1}\n')
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81 not utf-8")
    for corpus, message in ((binary, "cannot read"), (tmp_path / "nowhere.jsonl", "cannot read")):
        result = invoke("stats", "--model", model_dir, "--layers", "1", "--corpus", corpus,
                        "--cache-dir", tmp_path / "cache", "--tokens", "50")
        assert result.exit_code == 1 and message in result.output, result.output
    # A bad record further in is found when the pass reaches it; nothing is written then either.
    result = invoke("stats", "--model", model_dir, "--layers", "1", "--corpus", bad,
                    "--cache-dir", tmp_path / "cache", "--tokens", "500")
    assert result.exit_code == 1 and "record 1" in result.output, result.output
    assert _files(tmp_path / "cache") == []
