"""Fault injection (docs/design.md §12, "Fault injection"): commands killed with SIGKILL at
named moments and by timers, then resumed, end exactly as uninterrupted ones; no kill ever
leaves a half-written file; a write that runs out of space keeps the previous state and says so.

The commands are real processes forked by one :class:`~massedit.testing.faults.CommandServer`
(one torch import for all of them); the uninterrupted reference edit is a fresh
``python -m massedit`` process, so the chain is also compared with an ordinary run.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from safetensors.torch import load_file

from massedit.testing.faults import FACT_COLUMNS, CommandServer, fault_facts, folder_problems

REPO = Path(__file__).resolve().parents[1]
FAST = ["--method", "memit", "--batch-size", "5", "--set", "v_num_grad_steps=5",
        "--set", "layers=[1,2]", "--stats-tokens", "2000", "--save-model"]
# Patch metadata that records how this run got its statistics and targets (computed, read
# from the cache) and how long it took, not what it wrote.
HOW_IT_RAN = ("seconds", "stats", "targets")
FILE_SIZE_LIMIT = 20_000  # bytes: target files (<1 kB) fit, a checkpoint (>30 kB) does not


@dataclass
class Tally:
    """What the kills found, printed at the end of each test."""

    kills: list[str] = field(default_factory=list)  # the points that killed a command
    resumed_equal: int = 0
    half_written: list[str] = field(default_factory=list)
    temporaries: set[str] = field(default_factory=set)  # hidden leftovers of kills
    commands: int = 0
    seconds: float = 0.0  # in the commands

    def ran(self, outcome) -> None:
        self.commands += 1
        self.seconds += outcome.seconds

    def check(self, *folders: Path) -> None:
        for folder in folders:
            if folder.exists():
                report = folder_problems(folder)
                self.half_written += report.broken
                self.temporaries.update(report.temporaries)

    def line(self, what: str) -> str:
        return (f"{what}: {len(self.kills)} kills at {len(set(self.kills))} distinct points, "
                f"{self.resumed_equal} resumed run(s) equal to the uninterrupted one, "
                f"{len(self.half_written)} half-written file(s) found; {len(self.temporaries)} "
                f"hidden temporaries left by kills; {self.commands} commands, "
                f"{self.seconds:.1f} s")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_corpus):
    """A tiny GPT-2 saved as a folder, 40 facts, and a command server."""
    from massedit.testing import tiny_model

    root = tmp_path_factory.mktemp("faults")
    model, tok = tiny_model("gpt2")
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    with (root / "facts.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, FACT_COLUMNS)
        writer.writeheader()
        writer.writerows(fault_facts(40))
    with CommandServer(cwd=REPO, log_dir=root / "logs",
                       preload=("transformers.models.gpt2.modeling_gpt2",)) as server:
        yield {"root": root, "server": server, "corpus": tiny_corpus}


def _edit_args(world, out: Path) -> list[str | Path]:
    return ["edit", "--model", world["root"] / "base", "--edits", world["root"] / "facts.csv",
            "--stats-corpus", world["corpus"], *FAST, "--out", out]


def _reference_edit(world) -> subprocess.Popen:
    """The uninterrupted run, as a fresh interpreter (it runs beside the chain)."""
    root = world["root"]
    return subprocess.Popen(
        [sys.executable, "-m", "massedit", *map(str, _edit_args(world, root / "reference"))],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MASSEDIT_CACHE": str(root / "cache-ref")})


def _assert_same_result(reference: Path, run: Path) -> None:
    """Bit for bit: the patch's tensors, the saved model's weights, the results table; the
    patch's metadata but for how its statistics and targets were obtained."""
    for name in ("patch/deltas.safetensors", "patch/originals.safetensors",
                 "model/model.safetensors", "results.csv"):
        assert (reference / name).read_bytes() == (run / name).read_bytes(), name
    docs = [json.loads((r / "patch" / "patch.json").read_text()) for r in (reference, run)]
    for doc in docs:
        for key in HOW_IT_RAN:
            doc["metadata"].pop(key, None)
    assert docs[0] == docs[1]


# (the point, as $MASSEDIT_FAULT_AT) in the order a run meets them; each command resumes
# the folder the one before was killed in.
EDIT_KILLS = [
    "write:*/run.json:1",  # the run folder's first file, before its rename
    "write:stats/*:2",  # the second statistics file (the first is in place)
    "write:[0-9a-f][0-9a-f]/*:3",  # a stored target (targets/<2 hex>/<key>.safetensors)
    "dir:checkpoints/batch-000001:1",  # a checkpoint written, not yet renamed into place
    "wrote:checkpoints/batch-000002:1",  # a checkpoint in place, the older one not yet removed
    "remove:checkpoints/batch-*:2",  # older checkpoints being removed
    "dir:*/patch:1",  # the final patch, before its rename
    "write:*/results.json:1",  # the tables
    "swap:*/patch:1",  # the patch re-saved over the one a killed run left
    "write:*/config.json:1",
    "save_model:weights:1",  # --save-model: weights written, tokenizer not yet
    "dir:*/model:1",  # --save-model: the whole folder, before its rename
    "write:*/run.json:1",  # marking the run finished
    "remove:*/checkpoints:1",  # the finished run's checkpoints being removed
]
NO_SPACE_AFTER = "remove:checkpoints/batch-*:2"  # the disk fills up after this kill


def test_edit_killed_anywhere_resumes_to_the_uninterrupted_result(world, capsys):
    reference = _reference_edit(world)
    try:
        _kill_resume_and_compare(world, reference, capsys)
    finally:
        if reference.poll() is None:  # the chain failed first
            reference.kill()
            reference.communicate()


def _kill_resume_and_compare(world, reference: subprocess.Popen, capsys) -> None:
    root, server = world["root"], world["server"]
    run, cache = root / "chain", root / "cache-chain"
    env = {"MASSEDIT_CACHE": str(cache)}
    args = _edit_args(world, run)
    tally = Tally()
    seconds_to_finish = None
    for point in EDIT_KILLS:
        outcome = server.run(args, fault=point, env=env)
        tally.ran(outcome)
        assert outcome.killed, f"{point}: not reached (exit {outcome.exit_code})\n{outcome.log}"
        tally.kills.append(point)
        tally.check(run, cache)
        if point == "dir:*/patch:1":
            seconds_to_finish = outcome.seconds  # a whole run, its targets all stored
        if point == NO_SPACE_AFTER:
            _out_of_space_keeps_the_checkpoint(server, args, run, env)
    outcome = server.run(args, env=env)
    tally.ran(outcome)
    assert outcome.exit_code == 0, outcome.log
    assert "already holds this finished run" in outcome.log
    # The kills' leftovers were swept: by the run folder's holder, by the writer of each entry.
    assert folder_problems(run).temporaries == [] and folder_problems(cache).temporaries == []

    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, out[-3000:]
    _assert_same_result(root / "reference", run)
    tally.resumed_equal += 1

    # Timer kills at random moments of a whole run (statistics and targets from the cache).
    rng = random.Random(18)
    timed = root / "timed"
    timed_args = [*args[:-1], timed]
    for _ in range(3):
        delay = rng.uniform(0.1, 0.6) * seconds_to_finish
        outcome = server.run(timed_args, kill_after=delay, env=env)
        tally.ran(outcome)
        if not outcome.killed:  # finished first
            break
        tally.kills.append(f"timer {delay:.2f}s")
        tally.check(timed, cache)
    outcome = server.run(timed_args, env=env)
    tally.ran(outcome)
    assert outcome.exit_code == 0, outcome.log
    _assert_same_result(root / "reference", timed)
    tally.resumed_equal += 1

    assert tally.half_written == []
    assert len(set(tally.kills)) >= 10
    with capsys.disabled():
        print("\n" + tally.line("fault injection, massedit edit"))


def _visible_files(folder: Path) -> dict[Path, bytes]:
    """Every file under ``folder`` outside hidden names, with its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def _out_of_space_keeps_the_checkpoint(server, args, run: Path, env) -> None:
    """The next checkpoint cannot be written (a file-size limit, as a full disk): the command
    fails naming the file and what was kept, and the last checkpoint is untouched."""
    checkpoints = run / "checkpoints"
    before = _visible_files(checkpoints)
    assert Path("batch-000003/deltas.safetensors") in before
    outcome = server.run(args, env=env, file_size_limit=FILE_SIZE_LIMIT)
    assert outcome.exit_code == 1, outcome.log
    text = " ".join(outcome.log.split())
    assert "could not write" in text and "batch-000004" in text, text[-2000:]
    assert "out of disk space or over a file-size limit" in text
    assert "nothing was replaced" in text and "was not created" in text
    assert "keeps its last complete state (15 of 40 requests edited)" in text
    after = _visible_files(checkpoints)
    assert after == before
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".")]  # cleaned up


STATS_KILLS = [
    "write:stats/partial-*:2",  # during the second checkpoint write
    "wrote:stats/partial-*:2",  # after two more checkpoints
    "write:stats/*.mlp.*:2",  # the second final file, the first in place
]


def _stats_files(cache: Path) -> dict[str, dict]:
    """Finished statistics files by name: their tensors."""
    return {p.name: load_file(str(p)) for p in (cache / "stats").glob("*.safetensors")
            if not p.name.startswith("partial-")}


def test_stats_killed_during_checkpoints_resume_to_the_same_statistics(world, capsys):
    root, server = world["root"], world["server"]
    args = ["stats", "--model", root / "base", "--layers", "1,2", "--corpus", world["corpus"],
            "--tokens", "3000", "--checkpoint-every", "400", "--max-length", "32"]
    outcome = server.run([*args, "--cache-dir", root / "stats-ref"])
    assert outcome.exit_code == 0, outcome.log
    cache = root / "stats-chain"
    tally = Tally()
    for point in STATS_KILLS:
        outcome = server.run([*args, "--cache-dir", cache], fault=point)
        tally.ran(outcome)
        assert outcome.killed, f"{point}: not reached (exit {outcome.exit_code})\n{outcome.log}"
        tally.kills.append(point)
        tally.check(cache)
        if point == "wrote:stats/partial-*:2":
            _out_of_space_keeps_the_stats_checkpoint(server, [*args, "--cache-dir", cache],
                                                     cache)
    outcome = server.run([*args, "--cache-dir", cache])
    tally.ran(outcome)
    assert outcome.exit_code == 0, outcome.log
    # The kills' temporaries were swept and no checkpoint outlived its sites' files.
    assert folder_problems(cache).temporaries == []
    assert not list((cache / "stats").glob("partial-*"))
    reference, resumed = _stats_files(root / "stats-ref"), _stats_files(cache)
    assert len(reference) == 2 and reference.keys() == resumed.keys()
    for name, tensors in reference.items():
        assert tensors.keys() == resumed[name].keys()
        for key, tensor in tensors.items():
            assert tensor.equal(resumed[name][key]), (name, key)
    tally.resumed_equal += 1
    assert tally.half_written == []
    with capsys.disabled():
        print("\n" + tally.line("fault injection, massedit stats"))


def _out_of_space_keeps_the_stats_checkpoint(server, args, cache: Path) -> None:
    """Checkpoints and the final files cannot be written: the checkpoint already there stays
    as it was (a later run resumes from it) and the command fails naming the file."""
    (checkpoint,) = (cache / "stats").glob("partial-*.safetensors")
    before = checkpoint.read_bytes()
    outcome = server.run(args, file_size_limit=FILE_SIZE_LIMIT)
    assert outcome.exit_code == 1, outcome.log
    text = " ".join(outcome.log.split())
    assert "could not write" in text and "out of disk space" in text, text[-2000:]
    assert "nothing was replaced" in text
    assert checkpoint.read_bytes() == before


# ---- the pieces, in process ---------------------------------------------------------------------
def test_folder_problems_finds_half_written_files_and_ignores_temporaries(tmp_path):
    import torch
    from safetensors.torch import save_file

    good = tmp_path / "run" / "patch"
    good.mkdir(parents=True)
    (good / "patch.json").write_text("{}")
    save_file({"x": torch.ones(3)}, str(good / "deltas.safetensors"))
    (tmp_path / "run" / ".results.json.abc123.tmp").write_text('{"half')  # hidden: not read
    report = folder_problems(tmp_path / "run")
    assert report.broken == [] and report.files_checked == 2
    assert [Path(p).name for p in report.temporaries] == [".results.json.abc123.tmp"]

    cut = good.parent / "checkpoints" / "batch-000001"
    cut.mkdir(parents=True)
    (cut / "patch.json").write_text('{"deltas": [')  # cut short
    data = (good / "deltas.safetensors").read_bytes()
    (cut / "deltas.safetensors").write_bytes(data[: len(data) // 2])
    (good.parent / "model").mkdir()
    (good.parent / "model" / "config.json").write_text("{}")
    broken = "\n".join(folder_problems(tmp_path / "run").broken)
    assert "batch-000001/patch.json: JSONDecodeError" in broken
    assert "batch-000001/deltas.safetensors: SafetensorError" in broken
    assert "model/model.safetensors: missing" in broken


def test_a_write_out_of_space_names_the_file_and_keeps_the_old_one(tmp_path):
    import errno

    from massedit.atomic import OutOfSpaceError, atomic_dir, atomic_path, write_json_atomic

    target = write_json_atomic(tmp_path / "run.json", {"status": "running"})
    with pytest.raises(OutOfSpaceError) as caught, atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert str(caught.value) == (
        f"could not write {target}: No space left on device (out of disk space or over a "
        f"file-size limit); nothing was replaced: {target} keeps its previous content")
    assert json.loads(target.read_text()) == {"status": "running"}

    class RustWriterError(Exception):  # safetensors' writer raises no OSError
        pass

    folder = tmp_path / "patch"
    with pytest.raises(OutOfSpaceError, match="File too large .* was not created"), \
            atomic_dir(folder):
        raise RustWriterError("Error while serializing: I/O error: File too large (os error 27)")
    assert list(tmp_path.iterdir()) == [target]  # no folder, no temporary
    with pytest.raises(PermissionError), atomic_path(target):  # other errors pass as they are
        raise PermissionError(errno.EACCES, "Permission denied")


def test_fault_point_kills_at_the_nth_passage_only(monkeypatch):
    import signal

    import massedit.atomic as atomic

    kills = []
    monkeypatch.setattr(atomic, "_fault_passages", {})
    monkeypatch.setattr(atomic.os, "kill", lambda pid, sig: kills.append((pid, sig)))
    monkeypatch.setenv("MASSEDIT_FAULT_AT", "write:checkpoints/batch-*:2")
    for i in range(1, 4):
        atomic.fault_point(f"write:checkpoints/batch-00000{i}")
        atomic.fault_point("write:run/run.json")  # another point: not counted
        if i == 1:
            assert kills == []
    assert kills == [(os.getpid(), signal.SIGKILL)]


def test_a_replacement_that_cannot_be_renamed_in_puts_the_old_folder_back(tmp_path, monkeypatch):
    import massedit.atomic as atomic

    folder = tmp_path / "patch"
    with atomic.atomic_dir(folder) as tmp:
        (tmp / "patch.json").write_text('{"old": true}')
    real_replace = os.replace

    def refuse_the_new_folder(src, dst):
        if Path(src).name.endswith(".tmp"):
            raise OSError(16, "Device or resource busy")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", refuse_the_new_folder)
    with pytest.raises(OSError, match="busy"), atomic.atomic_dir(folder, overwrite=True) as tmp:
        (tmp / "patch.json").write_text('{"new": true}')
    monkeypatch.undo()
    assert json.loads((folder / "patch.json").read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["patch"]  # nothing aside, no temporary
