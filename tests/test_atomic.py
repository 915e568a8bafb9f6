"""massedit.atomic: whole files or nothing, temporary names removed, races between caches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from massedit.atomic import (
    atomic_dir,
    atomic_path,
    write_bytes_atomic,
    write_json_atomic,
    write_safetensors_atomic,
    write_text_atomic,
)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_files_are_written_whole_and_leave_no_temporary(tmp_path: Path):
    write_text_atomic(tmp_path / "sub" / "a.txt", "héllo\r\n")  # the folder is made
    write_json_atomic(tmp_path / "b.json", {"x": Path("p")})  # default=str
    write_bytes_atomic(tmp_path / "c.bin", b"\x00\x01")
    write_safetensors_atomic(tmp_path / "d.safetensors", {"t": torch.arange(3.0)[::2]},
                             {"k": "v"})
    assert (tmp_path / "sub" / "a.txt").read_bytes() == "héllo\r\n".encode()  # no newline change
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": "p"}
    assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
    assert torch.equal(load_file(tmp_path / "d.safetensors")["t"], torch.tensor([0.0, 2.0]))
    assert _names(tmp_path) == ["b.json", "c.bin", "d.safetensors", "sub"]
    assert _names(tmp_path / "sub") == ["a.txt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_write_keeps_the_old_file(tmp_path: Path, error):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(error), atomic_path(path) as tmp:
        tmp.write_text("half")
        assert tmp.parent == path.parent and tmp.name.startswith(".out.txt.")
        raise error()
    assert path.read_text() == "old" and _names(tmp_path) == ["out.txt"]


def test_atomic_path_replaces_and_keeps_a_suffix_for_format_guessing(tmp_path: Path):
    path = tmp_path / "plot.png"
    path.write_text("old")
    with atomic_path(path, suffix=".tmp.png") as tmp:
        assert tmp.name.endswith(".tmp.png") and tmp.exists()
        tmp.write_text("new")
    assert path.read_text() == "new" and _names(tmp_path) == ["plot.png"]


def test_atomic_dir_refuses_replaces_and_cleans_up(tmp_path: Path):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError
    assert _names(tmp_path) == []  # nothing left: neither the folder nor its temporary
    with atomic_dir(out) as tmp:
        (tmp / "weights").write_text("one")
    assert _names(out) == ["weights"]
    with pytest.raises(FileExistsError, match="never overwritten"), atomic_dir(out):
        pass
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "other").write_text("two")
    assert _names(out) == ["other"] and _names(tmp_path) == ["model"]


def test_atomic_dir_lets_a_complete_copy_win_a_race(tmp_path: Path):
    """Two processes filling the same cache folder: the one that renames second keeps the
    winner's complete copy and raises nothing; an incomplete folder there is an error."""
    out = tmp_path / "cache"
    with atomic_dir(out, complete_marker="done") as tmp:
        (tmp / "done").write_text("mine")
        out.mkdir()  # the other process renames its copy into place meanwhile
        (out / "done").write_text("theirs")
    assert (out / "done").read_text() == "theirs" and _names(tmp_path) == ["cache"]
    other = tmp_path / "half"
    with pytest.raises(OSError), atomic_dir(other, complete_marker="done") as tmp:
        (tmp / "done").write_text("mine")
        other.mkdir()
        (other / "partial").write_text("no marker")
    assert _names(tmp_path) == ["cache", "half"] and _names(other) == ["partial"]
