"""Run directories: what a command writes, written so that no interruption leaves a half file.

A run directory belongs to one command with one set of arguments, recorded in ``run.json`` with a
fingerprint. Opening it again with the same fingerprint resumes it; any other command or arguments
are refused, so a finished result is never overwritten. Every file is written under a temporary
name and renamed into place. Sequential edits leave one checkpoint per finished batch (the
cumulative :class:`~massedit.engine.patch.EditPatch`), from which a re-run continues.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from massedit.atomic import (
    LockHeld,
    fault_point,
    is_temporary,
    lock_path_of,
    locked,
    remove_tree,
    sweep_temporaries,
    write_safetensors_atomic,
)
from massedit.atomic import atomic_dir as atomic_dir
from massedit.atomic import write_json_atomic as write_json_atomic
from massedit.atomic import write_text_atomic as write_text_atomic
from massedit.engine.patch import EditPatch

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
CHECKPOINTS = "checkpoints"


class RunDirError(RuntimeError):
    """The run directory cannot be used for this command (it belongs to another one)."""


# ---- atomic writes (massedit.atomic; the names stay importable from here) -----------------
def save_pretrained_atomic(model, tok, path: str | os.PathLike, card=None) -> Path:
    """``save_pretrained`` of model and tokenizer into a new folder, renamed into place; with
    ``card`` (a :class:`~massedit.export.card.CardInfo`) its model card ``README.md`` too."""
    from massedit.export.card import write_card

    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        fault_point("save_model:weights")  # a kill here: half a folder, never renamed in
        if tok is not None:
            tok.save_pretrained(tmp)
        if card is not None:
            write_card(tmp, card)
    return Path(path)


def ensure_new_output(path: str | os.PathLike) -> Path:
    """Refuse an output folder that exists and is not empty (outputs are never overwritten)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RunDirError(f"{path} already exists; choose another output folder or delete it")
    return path


def fingerprint(arguments: dict[str, Any]) -> str:
    """A stable digest of everything that determines a command's result."""
    payload = json.dumps(arguments, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


# ---- run directories --------------------------------------------------------------------------
@dataclass
class RunDir:
    """A run directory opened for one command; see :func:`check_run_dir` and :meth:`open`."""

    path: Path
    record: dict[str, Any]
    created: bool = False  # made by this process (not resumed)
    # The folder's lock (``.<folder>.lock`` beside it), held from :meth:`open` until
    # :meth:`close` or the process ends: one process per run folder (docs/design.md §12).
    _lock: ExitStack | None = field(default=None, repr=False, compare=False)

    @classmethod
    def open(cls, path: str | os.PathLike, command: str, arguments: dict[str, Any],
             key: str) -> RunDir:
        """Create ``path`` for ``command`` or reopen the same command's run there. A folder
        another live process holds is refused (:class:`RunDirError`), never shared."""
        path = Path(path)
        check_run_dir(path, command, key)  # refuse another command's folder before making any
        lock = hold_run_lock(path)
        try:
            existing = check_run_dir(path, command, key)  # as it is now that we hold it
            if path.is_dir():  # what a killed run was writing; no one else writes here now
                sweep_temporaries(path)
            if existing is not None:
                logger.info("resuming the run in %s", path)
                return cls(path, existing, _lock=lock)
            from massedit.version import __version__

            record = {"command": command, "fingerprint": key, "arguments": arguments,
                      "massedit": __version__, "status": "running",
                      "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path / RUN_FILE, record)
        except BaseException:
            lock.close()  # refused or failed: the folder is free again
            raise
        return cls(path, record, created=True, _lock=lock)

    def close(self) -> None:
        """Release the folder's lock (also released when the process ends, however it ends)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @property
    def finished(self) -> bool:
        return self.record.get("status") == "finished"

    def mark_finished(self, **extra: Any) -> None:
        self.record.update(status="finished", **extra,
                           finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        write_json_atomic(self.path / RUN_FILE, self.record)
        remove_tree(self.path / CHECKPOINTS)
        self.close()  # nothing more is written: another process may read or extend it now

    def update_record(self, **fields: Any) -> None:
        """Add ``fields`` to ``run.json`` (written atomically)."""
        self.record.update(fields)
        write_json_atomic(self.path / RUN_FILE, self.record)

    def discard_if_empty(self) -> None:
        """Remove a folder this process created when it holds nothing worth resuming from."""
        if self.created and not self.finished and not any((self.path / CHECKPOINTS).glob("b*")):
            shutil.rmtree(self.path, ignore_errors=True)
            self.close()

    # ---- checkpoints of sequential batches -------------------------------------------------
    def save_checkpoint(self, patch: EditPatch, batches_done: int, requests_done: int,
                        state: dict[str, torch.Tensor] | None = None) -> Path:
        """Save the cumulative patch after ``batches_done`` batches, then drop older ones.

        Each checkpoint is a new folder renamed into place, so at every moment the newest
        complete folder is a consistent state, whenever the process is killed. ``state``
        (the editor's :meth:`~massedit.editing.editor.Editor.sequential_state`, e.g. keys of earlier
        batches) is written first, beside it, and kept as long as its checkpoint."""
        root = self.path / CHECKPOINTS
        if state:
            write_safetensors_atomic(root / f"state-{batches_done:06d}.safetensors", state)
        snapshot = EditPatch(list(patch.deltas), patch.originals, patch.base_digests,
                             {**patch.metadata, "checkpoint": {"batches_done": batches_done,
                                                               "requests_done": requests_done}})
        target = snapshot.save(root / f"batch-{batches_done:06d}")
        for old in root.glob("batch-*"):
            if old != target:
                remove_tree(old)  # never seen half-removed: a kill here keeps both whole
        for old in root.glob("state-*.safetensors"):
            if old.name != f"state-{batches_done:06d}.safetensors":
                old.unlink(missing_ok=True)
        return target

    def load_checkpoint_state(self, batches_done: int) -> dict[str, torch.Tensor]:
        """The editor state saved with the checkpoint after ``batches_done`` batches ({} if
        that checkpoint has none)."""
        path = self.path / CHECKPOINTS / f"state-{batches_done:06d}.safetensors"
        return load_file(str(path)) if path.exists() else {}

    def load_checkpoint(self) -> tuple[EditPatch | None, int, int]:
        """The newest checkpoint: (patch, batches done, requests done); (None, 0, 0) if none."""
        root = self.path / CHECKPOINTS
        found = sorted(p for p in root.glob("batch-*") if (p / "patch.json").exists())
        if not found:
            return None, 0, 0
        patch = EditPatch.load(found[-1])
        info = patch.metadata.pop("checkpoint")
        return patch, int(info["batches_done"]), int(info["requests_done"])


# Run-folder locks this process holds: {folder: (lock file's inode, its ExitStack)}. A process
# does not conflict with itself (a command re-run in the same process resumes its folder), and
# flock would refuse a second descriptor of the same file even within one process.
_HELD: dict[Path, tuple[int, ExitStack]] = {}


def hold_run_lock(path: Path) -> ExitStack:
    """Take the lock of run folder ``path`` (``.<name>.lock`` beside it) without waiting;
    :class:`RunDirError` naming the holder when another process has it (a second command on
    the same folder would interleave its checkpoints and results with the first's). Held until
    the returned stack is closed or the process ends (released by the kernel even on SIGKILL)."""
    key, lock_file = path.resolve(), lock_path_of(path)
    if key in _HELD:
        inode, stack = _HELD[key]
        if lock_file.exists() and lock_file.stat().st_ino == inode:
            return stack
        stack.close()  # our lock file was removed by someone else: it guards nothing now
    stack = ExitStack()
    try:
        stack.enter_context(locked(lock_file, wait=False))
    except LockHeld as err:
        holder = err.holder or "pid unknown"
        raise RunDirError(
            f"{path} is in use by another running massedit process ({holder}); wait for it to "
            "finish, stop it, or choose another --out") from None
    stack.callback(_HELD.pop, key, None)
    _HELD[key] = (lock_file.stat().st_ino, stack)
    return stack


def tidy_run_dir(path: Path) -> None:
    """Sweep the temporaries a killed process left in a finished run folder, unless another
    process holds the folder (then it is that process's to tidy)."""
    try:
        with locked(lock_path_of(path), wait=False):
            sweep_temporaries(path)
    except LockHeld:
        pass


def check_run_dir(path: str | os.PathLike, command: str, key: str) -> dict[str, Any] | None:
    """The record of ``command``'s earlier run in ``path`` (same fingerprint), None when the
    folder is new or empty; :class:`RunDirError` when it belongs to anything else."""
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_dir():
        raise RunDirError(f"{path} exists and is not a folder")
    run_file = path / RUN_FILE
    if not run_file.exists():
        # Only a killed run's temporaries (its run.json never renamed in): still a new folder.
        if any(not is_temporary(p) for p in path.iterdir()):
            raise RunDirError(f"{path} exists and is not a massedit run folder; choose another "
                              "--out or delete it")
        return None
    record = json.loads(run_file.read_text(encoding="utf-8"))
    if record.get("command") != command or record.get("fingerprint") != key:
        made_by = f"`massedit {record.get('command')}`"
        raise RunDirError(
            f"{path} holds a run made by {made_by} with other arguments; it is never "
            "overwritten: choose another --out, or re-run the exact command that made it")
    return record
