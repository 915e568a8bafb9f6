"""Atomic writes: a temporary name in the same folder, then a rename (docs/design.md §12).

Readers (another process, a resumed run, a cache lookup) see either the old file or the whole
new one, never half of one: ``os.replace`` within one file system is atomic. The temporary name
is hidden (``.name.<random>.tmp``), so folder listings that glob ``*.safetensors`` or
``batch-*`` never pick it up, and it is removed when the write fails or is interrupted.

Files are fsynced before the rename and the folder after it, so after a power cut the new
name holds the new bytes, not an empty file (ext4/xfs may otherwise order the rename first).

>>> write_json_atomic("out/run.json", {"status": "running"})  # doctest: +SKIP
>>> with atomic_path("out/deltas.safetensors") as tmp:  # writers that need a path
...     save_file(tensors, tmp)  # doctest: +SKIP
>>> with atomic_dir("out/model") as tmp:  # whole folders
...     model.save_pretrained(tmp)  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import json
import logging
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

# ---- fault points (docs/design.md §12, "Fault injection") -------------------------------------
# The fault-injection suite (tests/test_faults.py) kills a command with SIGKILL at a chosen
# moment to prove that no interruption leaves a half-written file or a run that resumes to
# another result. ``$MASSEDIT_FAULT_AT=<point>:<n>`` names the moment: the n-th passage (from 1)
# of a point whose name matches ``<point>`` (a glob). Points are named ``<step>:<folder>/<name>``:
# ``write`` (a file written under its temporary name, not yet renamed), ``wrote`` (renamed into
# place), ``dir`` (a folder's temporary tree complete, not yet renamed), ``swap`` (an older folder
# moved aside, the new one not yet in place), ``remove`` (a folder moved aside, not yet deleted),
# e.g. ``dir:checkpoints/batch-*:2``; other modules add their own (``save_model:weights``).
# Without the variable a passage costs one environment lookup.
FAULT_ENV = "MASSEDIT_FAULT_AT"
_fault_passages: dict[str, int] = {}


def fault_point(name: str) -> None:
    """A named moment where the fault-injection suite may kill this process (SIGKILL: no
    ``finally`` runs, exactly as when a job is killed or the machine loses power)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    pattern, _, count = spec.rpartition(":")
    if not fnmatch.fnmatchcase(name, pattern):
        return
    passages = _fault_passages.get(pattern, 0) + 1
    _fault_passages[pattern] = passages
    if passages == int(count):
        logger.info("fault injection: killing this process at %s (passage %d)", name, passages)
        os.kill(os.getpid(), signal.SIGKILL)


# ---- hidden temporaries -------------------------------------------------------------------------
# Every name this module writes before a rename, or moves aside before a removal, is hidden and
# ends in .tmp (a write under way; .tmp.<ext> when the writer needs an extension), .old (a folder
# being replaced) or .del (a folder being removed). A killed process leaves them behind; they are
# never read as results, and whoever owns the folder may sweep them (``sweep_temporaries``).
_TEMPORARY = re.compile(r"^\..+\.(tmp|old|del)(\.\w+)?$")


def is_temporary(path: PathLike) -> bool:
    """True for a name this module uses before a rename or a removal (``.x.abc123.tmp``)."""
    return bool(_TEMPORARY.match(Path(path).name))


def sweep_temporaries(folder: PathLike) -> list[Path]:
    """Remove the temporaries a killed writer left anywhere under ``folder``; only for folders
    no other process is writing (a run folder whose lock this process holds). The removed paths."""
    removed = []
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = Path(root) / name
            if is_temporary(path):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
        dirs[:] = [d for d in dirs if not is_temporary(d)]
    if removed:
        logger.info("removed %d temporary file(s) an interrupted run left in %s", len(removed),
                    folder)
    return removed


def sweep_temporaries_of(path: PathLike) -> list[Path]:
    """Remove the temporaries a killed writer of ``path`` left beside it (``.<name>.*.tmp``);
    for a caller that holds ``path``'s entry lock, so no live writer owns them."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = [p for p in path.parent.glob(f".{glob.escape(path.name)}.*") if is_temporary(p)]
    for stale in removed:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    return removed


_NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class OutOfSpaceError(OSError):
    """A write ran out of space (a full disk, a quota, a file-size limit) and was abandoned:
    the destination still holds what it held before, or still does not exist."""

    def __init__(self, path: Path, code: int) -> None:
        kept = "keeps its previous content" if path.exists() else "was not created"
        super().__init__(code, f"could not write {path}: {os.strerror(code)} (out of disk "
                               f"space or over a file-size limit); nothing was replaced: "
                               f"{path} {kept}")
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


@contextmanager
def _space_errors_named(path: Path):
    """Restate an out-of-space error raised inside for ``path`` (the original names a
    temporary the user never sees)."""
    try:
        yield
    except Exception as err:
        code = _no_space_errno(err)
        if code is not None:
            raise OutOfSpaceError(path, code) from err
        raise


def _no_space_errno(err: BaseException) -> int | None:
    """The errno of a lack of space not yet restated (a nested atomic write already named its
    file), else None. Writers that are not Python raise their own errors: safetensors' Rust
    writer says "I/O error: File too large (os error 27)"."""
    if isinstance(err, OutOfSpaceError):
        return None
    code = err.errno if isinstance(err, OSError) else None
    if code is None:
        found = re.search(r"\(os error (\d+)\)", str(err))
        code = int(found[1]) if found else None
    return code if code in _NO_SPACE else None


def remove_tree(path: PathLike) -> None:
    """Remove folder ``path`` so that no reader ever sees it half-removed: it is first renamed
    to a hidden ``.del`` name (one atomic step), then deleted file by file."""
    path = Path(path)
    if not path.exists():
        return
    aside = _aside_name(path, ".del")
    os.replace(path, aside)
    fault_point(f"remove:{_where(path)}")
    shutil.rmtree(aside, ignore_errors=True)


def _where(path: Path) -> str:
    """A fault point's place: ``<folder>/<name>`` (``checkpoints/batch-000003``)."""
    return f"{path.parent.name}/{path.name}"


def _aside_name(path: Path, suffix: str) -> Path:
    return path.parent / f".{path.name}.{os.urandom(4).hex()}{suffix}"


def _fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk; best effort on systems that
    cannot open folders (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_path(Path(folder) / name)
        _fsync_path(Path(folder))


@contextmanager
def atomic_path(path: PathLike, *, suffix: str = ".tmp", fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary file path beside ``path`` (the file exists, empty) for writers that
    need a path (safetensors ``save_file``, ``savefig``, streamed downloads); when the block
    ends without error it is renamed to ``path``, otherwise removed.

    ``suffix`` ends the temporary name: keep the default ``.tmp`` unless the writer infers the
    format from the extension (then e.g. ``".tmp.png"``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        with _space_errors_named(path):
            yield tmp
            if fsync:
                _fsync_path(tmp)
        fault_point(f"write:{_where(path)}")
        os.replace(tmp, path)
        fault_point(f"wrote:{_where(path)}")
        if fsync:
            _fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: PathLike, text: str, *, fsync: bool = True) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically, line endings as given."""
    return write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync)


def write_json_atomic(path: PathLike, obj: Any, *, fsync: bool = True) -> Path:
    """Write ``obj`` as indented JSON (anything else as ``str``) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n", fsync=fsync)


def write_safetensors_atomic(path: PathLike, tensors: dict[str, Any],
                             metadata: dict[str, str] | None = None, *,
                             fsync: bool = True) -> Path:
    """Save ``tensors`` (moved to CPU, made contiguous) as safetensors at ``path`` atomically."""
    from safetensors.torch import save_file

    with atomic_path(path, fsync=fsync) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  metadata=metadata)
    return Path(path)


@contextmanager
def atomic_dir(path: PathLike, *, overwrite: bool = False, complete_marker: str | None = None,
               fsync: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path`` that becomes ``path`` when the block
    ends without error (removed otherwise).

    - By default an existing ``path`` is refused up front (``FileExistsError``): outputs are
      never overwritten.
    - ``overwrite=True`` replaces an existing ``path`` in two renames (the old folder aside
      under a hidden ``.old`` name, the new one into place, then the old one deleted): a
      process killed between them leaves ``path`` absent, never half of either. For folders
      only this process writes, such as a patch being re-saved.
    - ``complete_marker`` (a file name) is for caches that several processes may fill at once:
      if the rename fails because ``path`` appeared meanwhile and holds that file, another
      process won the race with a complete copy; ours is dropped and no error is raised.
    """
    path = Path(path)
    if path.exists() and not overwrite and complete_marker is None:
        raise FileExistsError(f"{path} already exists; it is never overwritten")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    old = None
    try:
        with _space_errors_named(path):
            yield tmp
            if fsync:
                _fsync_tree(tmp)
        fault_point(f"dir:{_where(path)}")
        if overwrite and path.exists():
            old = _aside_name(path, ".old")
            os.replace(path, old)
            fault_point(f"swap:{_where(path)}")
        try:
            os.replace(tmp, path)
        except OSError:
            if old is not None:  # the old folder back in place: nothing was replaced
                os.replace(old, path)
                old = None
                raise
            if complete_marker is None or not (path / complete_marker).is_file():
                raise
            logger.info("another process wrote %s first; using its copy", path)
        fault_point(f"wrote:{_where(path)}")
        if fsync:
            _fsync_path(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ---- one writer per cache entry ---------------------------------------------------------------
# Atomic renames keep readers from half-written files, but two processes that both find a cache
# entry missing would both produce it: twice the work, and for folders a lost rename. A lock file
# beside the entry (``.<name>.lock``, hidden like the temporary names) lets one produce it while
# the others wait, then read it. The holder removes the file before releasing it, so nothing is
# left behind; a waiter that then gets the lock of a removed file sees that the name now points
# elsewhere (or nowhere) and locks afresh, so two processes never hold "the" lock at once.


class LockHeld(RuntimeError):
    """A lock asked for without waiting is held by another process (``holder`` as it wrote
    itself into the lock file: its pid)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is locked by another process ({holder or 'pid unknown'})")
        self.path, self.holder = path, holder


def lock_path_of(path: PathLike) -> Path:
    """The lock file of the cache entry ``path`` (file or folder): ``.<name>.lock`` beside it."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def _acquire(lock: Path, fcntl, wait: bool, what: str | None) -> int:
    """A descriptor of ``lock`` holding its exclusive flock, the name still pointing to it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    logged = False
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    holder = os.pread(fd, 100, 0).decode(errors="replace").strip()
                    raise LockHeld(lock, holder) from None
                if not logged:
                    logger.info("waiting for another process to finish %s", what or lock)
                    logged = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            return fd
        os.close(fd)  # the holder removed the file as it finished: lock the name afresh


@contextmanager
def locked(lock: PathLike, *, wait: bool = True, what: str | None = None) -> Iterator[None]:
    """Hold the exclusive lock file ``lock`` (``fcntl.flock``) while the block runs.

    ``wait=True`` waits for another holder to finish (logged, naming ``what``); ``wait=False``
    raises :class:`LockHeld` at once. The lock is the kernel's: it is released when the block
    ends, and also when the holding process dies (even by SIGKILL), so a crash never leaves a
    stale lock (only, at worst, a lock file, which the next holder reuses and removes). On
    systems without ``fcntl`` (Windows) the block runs unlocked."""
    lock = Path(lock)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, atomic renames remain
        yield
        return
    fd = _acquire(lock, fcntl, wait, what)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())
        yield
    finally:
        try:
            os.unlink(lock)  # while still held: no one can hold this name's file meanwhile
        except OSError:
            pass
        os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def entry_lock(path: PathLike, *, what: str | None = None) -> Iterator[None]:
    """One writer per cache entry ``path``: wait for any other process producing it, then hold
    its lock while the block runs. Callers check for the entry again inside the block (another
    process may have produced it meanwhile) and produce it only if it is still missing::

        if not done(path):
            with entry_lock(path):
                if not done(path):
                    produce(path)
    """
    with locked(lock_path_of(path), what=what or str(path)):
        yield
