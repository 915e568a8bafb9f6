"""The hub, against a fake: the ``HfApi`` methods massedit uses (create_repo, upload_folder,
list_repo_files, hf_hub_download) replaced by a local folder (docs/design.md §14). Pushing
adapters, models and patches (private by default); sharing statistics: a pulled entry makes the
next edit compute none, a tampered or interrupted one is refused and leaves nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from massedit import Editor, EditRequest, StatsSpec
from massedit.cli import app
from massedit.hub import HubError, check_repo_id
from massedit.stats.listing import list_cache
from massedit.stats.sharing import STATS_REPO_ENV, cache_files, pull_stats, push_stats
from massedit.testing import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

FACTS = [
    EditRequest("The {} is located in", "Eiffel Tower", "Rome", "Paris"),
    EditRequest("{} plays", "Michael Jordan", "football", "basketball"),
]
FAST = dict(v_num_grad_steps=2, context_lengths=(), stats_tokens_per_width=30,
            max_update_ratio=1e9, layers=(1, 2))


class FakeHub:
    """Repositories as folders under ``root/<type>/<user>/<name>``."""

    def __init__(self, root: Path):
        self.root = root
        self.private: dict[tuple[str, str], bool] = {}
        self.fail_downloads_of: str | None = None  # a file-name suffix whose download breaks

    def folder(self, repo_id: str, repo_type: str | None) -> Path:
        return self.root / (repo_type or "model") / repo_id

    def install(self, monkeypatch) -> None:
        hub = self

        def create_repo(api, repo_id, *, private=None, repo_type=None, exist_ok=False, **_):
            key = (repo_type or "model", repo_id)
            if key in hub.private and not exist_ok:
                raise OSError("409 repository exists")
            hub.private.setdefault(key, bool(private))
            hub.folder(repo_id, repo_type).mkdir(parents=True, exist_ok=True)
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(api, *, repo_id, folder_path, repo_type=None, **_):
            if (repo_type or "model", repo_id) not in hub.private:
                raise OSError("404 repository not found")
            shutil.copytree(folder_path, hub.folder(repo_id, repo_type), dirs_exist_ok=True)

        def list_repo_files(api, repo_id, *, repo_type=None, **_):
            folder = hub.folder(repo_id, repo_type)
            if not folder.is_dir():
                raise OSError("404 repository not found")
            return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                          if p.is_file())

        def hf_hub_download(api, repo_id, filename, *, repo_type=None, local_dir=None, **_):
            source = hub.folder(repo_id, repo_type) / filename
            target = Path(local_dir) / filename
            target.parent.mkdir(parents=True, exist_ok=True)
            if hub.fail_downloads_of and filename.endswith(hub.fail_downloads_of):
                target.write_bytes(source.read_bytes()[:100])  # half a file, then the failure
                raise OSError("connection reset by peer")
            shutil.copy(source, target)
            return str(target)

        for name, fn in [("create_repo", create_repo), ("upload_folder", upload_folder),
                         ("list_repo_files", list_repo_files),
                         ("hf_hub_download", hf_hub_download)]:
            monkeypatch.setattr(HfApi, name, fn)


@pytest.fixture
def hub(tmp_path, monkeypatch) -> FakeHub:
    fake = FakeHub(tmp_path / "hub")
    fake.install(monkeypatch)
    return fake


def _edit(model, tok, corpus, cache):
    editor = Editor(model, tok, method="memit", progress=False,
                    stats=StatsSpec(corpus=str(corpus), cache_dir=str(cache)), **FAST)
    return editor.edit(FACTS)


def invoke(*args):
    # A wide console: rich folds table cells to the terminal's width otherwise.
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_repo_ids_are_checked():
    assert check_repo_id("user/name") == "user/name"
    for bad in ("no/t/valid", "spaces in/name", "", "user//name"):
        with pytest.raises(HubError, match="repository id"):
            check_repo_id(bad)


def test_push_adapter_and_patch_private_by_default(hub, tiny_corpus, tmp_path):
    model, tok = tiny_model("llama")
    patch = _edit(model, tok, tiny_corpus, tmp_path / "cache")
    adapter = patch.to_peft(model, tmp_path / "adapter")
    adapter.push_to_hub("me/adapter")
    assert hub.private[("model", "me/adapter")] is True
    pushed = hub.folder("me/adapter", "model")
    assert {p.name for p in pushed.iterdir()} == {
        "adapter_config.json", "adapter_model.safetensors", "README.md"}
    patch.push_to_hub("me/patch", private=False)
    assert hub.private[("model", "me/patch")] is False
    assert (hub.folder("me/patch", "model") / "patch.json").is_file()
    assert (hub.folder("me/patch", "model") / "README.md").is_file()


def test_shared_statistics_make_the_next_edit_compute_none(hub, tiny_corpus, tmp_path,
                                                           monkeypatch):
    model, tok = tiny_model("llama")
    first = tmp_path / "alice"
    patch = _edit(model, tok, tiny_corpus, first)
    assert patch.metadata["stats"]["computed_layers"] == [1, 2]
    patch.revert(model)
    assert len(push_stats(first, "team/stats")) == 2
    assert hub.private[("dataset", "team/stats")] is True
    names = {Path(f).name for f in HfApi().list_repo_files("team/stats", repo_type="dataset")}
    assert {f"{p.name}.json" for p in cache_files(first)} <= names  # fingerprint JSON beside

    # A colleague with an empty cache: the editor pulls instead of computing.
    import massedit.stats.moments as moments

    def no_pass(*args, **kwargs):
        raise AssertionError("statistics were computed although the repository has them")

    monkeypatch.setattr(moments, "collect_moments", no_pass)
    monkeypatch.setenv(STATS_REPO_ENV, "team/stats")
    second = tmp_path / "bob"
    again = _edit(model, tok, tiny_corpus, second)
    record = again.metadata["stats"]
    assert record["computed_layers"] == [] and record["pulled_layers"] == [1, 2]
    for a, b in zip(patch.deltas, again.deltas, strict=True):  # the same statistics, the same edit
        assert torch.equal(a.delta.matrix(), b.delta.matrix())
    entries = list_cache(second)
    assert [e.source for e in entries] == ["hf://datasets/team/stats"]
    assert [e.source for e in list_cache(first)] == ["local"]
    assert not [p for p in (second / "stats").iterdir() if p.name.startswith(".")]


def test_tampered_entry_is_refused_and_computed_here(hub, tiny_corpus, tmp_path, monkeypatch):
    model, tok = tiny_model("llama")
    patch = _edit(model, tok, tiny_corpus, tmp_path / "alice")
    patch.revert(model)
    push_stats(tmp_path / "alice", "team/stats")
    # Tamper with one sum in the repository, keeping its header (fingerprint, checksum).
    target = sorted(hub.folder("team/stats", "dataset").glob("stats/*.safetensors"))[0]
    from safetensors import safe_open

    with safe_open(str(target), framework="pt") as fh:
        meta = fh.metadata()
    total = load_file(str(target))["total"]
    total[0, 0] += 1.0
    save_file({"total": total}, str(target), metadata=meta)
    record = json.loads(Path(f"{target}.json").read_text())
    record["sha256"] = __import__("hashlib").sha256(target.read_bytes()).hexdigest()
    Path(f"{target}.json").write_text(json.dumps(record))  # even a matching JSON

    report = pull_stats(tmp_path / "bob", "team/stats")
    assert len(report.installed) == 1 and len(report.refused) == 1
    assert "checksum" in report.refused[0]
    assert {p.name for p in cache_files(tmp_path / "bob")} == {p.name for p in report.installed}

    monkeypatch.setenv(STATS_REPO_ENV, "team/stats")
    again = _edit(model, tok, tiny_corpus, tmp_path / "carol")
    record = again.metadata["stats"]
    assert len(record["pulled_layers"]) == 1 and len(record["computed_layers"]) == 1
    for a, b in zip(patch.deltas, again.deltas, strict=True):  # the tampered sum was not used
        assert torch.equal(a.delta.matrix(), b.delta.matrix())


def test_interrupted_download_leaves_nothing(hub, tiny_corpus, tmp_path):
    model, tok = tiny_model("llama")
    _edit(model, tok, tiny_corpus, tmp_path / "alice")
    push_stats(tmp_path / "alice", "team/stats")
    hub.fail_downloads_of = ".safetensors"
    with pytest.raises(HubError, match="connection reset"):
        pull_stats(tmp_path / "bob", "team/stats")
    assert list((tmp_path / "bob" / "stats").iterdir()) == []  # no partial file, no temp folder


def test_stats_cli_push_pull_list(hub, tiny_corpus, tmp_path):
    model, tok = tiny_model("llama")
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    other, _ = tiny_model("gpt2")
    other.save_pretrained(tmp_path / "other")
    tok.save_pretrained(tmp_path / "other")
    _edit(model, tok, tiny_corpus, tmp_path / "alice")

    result = invoke("stats", "push", "--repo", "team/stats", "--cache-dir", tmp_path / "alice")
    assert result.exit_code == 0, result.output
    assert "pushed 2" in result.output

    result = invoke("stats", "pull", "--repo", "team/stats", "--model", tmp_path / "base",
                    "--layers", "2", "--cache-dir", tmp_path / "bob")
    assert result.exit_code == 0, result.output
    assert len(cache_files(tmp_path / "bob")) == 1  # only the layer asked for
    listed = invoke("stats", "--list", "--cache-dir", tmp_path / "bob")
    assert "hf://datasets/team/stats" in listed.output

    wrong = invoke("stats", "pull", "--repo", "team/stats", "--model", tmp_path / "other",
                   "--cache-dir", tmp_path / "carol")
    assert wrong.exit_code == 1 and "match" in wrong.output
    assert cache_files(tmp_path / "carol") == []
    bad = invoke("stats", "pull", "--repo", "not a repo", "--cache-dir", tmp_path / "carol")
    assert bad.exit_code == 1 and "repository id" in bad.output
    missing = invoke("stats", "pull", "--repo", "team/none", "--cache-dir", tmp_path / "carol")
    assert missing.exit_code == 1 and "could not list" in missing.output


def test_cli_edit_and_export_push(hub, tiny_corpus, tmp_path, monkeypatch):
    import csv

    model, tok = tiny_model("gpt2")
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    with (tmp_path / "facts.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "subject", "target_new", "target_true"])
        writer.writerows([(f.prompt, f.subject, f.target_new, f.target_true) for f in FACTS])
    monkeypatch.setenv("MASSEDIT_CACHE", str(tmp_path / "cache"))
    bad = invoke("edit", "--model", tmp_path / "base", "--edits", tmp_path / "facts.csv",
                 "--out", tmp_path / "run", "--push-to-hub", "bad id")
    assert bad.exit_code == 1 and "repository id" in bad.output
    assert not (tmp_path / "run").exists()  # refused before any work
    result = invoke("edit", "--model", tmp_path / "base", "--edits", tmp_path / "facts.csv",
                    "--out", tmp_path / "run", "--stats-corpus", tiny_corpus,
                    "--set", "v_num_grad_steps=2", "--set", "layers=[1,2]",
                    "--set", "max_update_ratio=1e9", "--stats-tokens", "2000",
                    "--push-to-hub", "me/patch")
    assert result.exit_code == 0, result.output
    assert hub.private[("model", "me/patch")] is True
    assert (hub.folder("me/patch", "model") / "patch.json").is_file()
    card = (hub.folder("me/patch", "model") / "README.md").read_text()
    assert "efficacy_success" in card and "Eiffel Tower" not in card

    result = invoke("export", tmp_path / "run", "--peft", tmp_path / "adapter",
                    "--push-to-hub", "me/adapter", "--public")
    assert result.exit_code == 0, result.output
    assert hub.private[("model", "me/adapter")] is False
    assert (hub.folder("me/adapter", "model") / "adapter_model.safetensors").is_file()
