"""Checkpoints of a statistics pass, so an interrupted run continues where it stopped.

A checkpoint holds the partial sums of every site of the pass (added over processes) and the
pass's position: texts read by each process, tokens counted in all and per process. It lives next
to the cache files as ``partial-<hash>.safetensors``, where the hash covers the fingerprints of
the sites and the number of processes (each process's shard depends on it), and it is removed
once the final files are written. A checkpoint that does not match or fails its checksum is
ignored with a warning and the pass starts from the beginning.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from massedit.atomic import OutOfSpaceError, write_safetensors_atomic
from massedit.stats.cache import cache_path, checksum, digest, stats_dir
from massedit.stats.distributed import Dist

logger = logging.getLogger(__name__)
PREFIX = "partial-"


@dataclass
class PassProgress:
    """Where a pass stands; the same on every process."""

    texts_done: int = 0  # texts read by each process (equal on all: the pass moves in lockstep)
    tokens_done: int = 0  # tokens counted over all processes
    rank_tokens: list[int] = field(default_factory=list)  # tokens counted by each process


class Checkpointer:
    """Saves and restores one pass's partial sums every ``every`` tokens (0: never)."""

    def __init__(self, root: Path, fingerprints: list[dict], world: int, every: int) -> None:
        self.identity = {"fingerprints": fingerprints, "world": world}
        self.path = stats_dir(root) / f"{PREFIX}{digest(self.identity)}.safetensors"
        self.every = max(0, int(every))
        self._writable = True

    def due(self, tokens_before: int, tokens_after: int) -> bool:
        """True when the pass crossed a multiple of ``every`` tokens in its last step."""
        return self.every > 0 and tokens_after // self.every > tokens_before // self.every

    def load(self, dist: Dist) -> tuple[PassProgress, dict[str, torch.Tensor]] | None:
        """The saved position (on every process) and sums (on the main process; empty on the
        others, which restart their own sums from zero), or None to start afresh."""
        found = self._read() if dist.is_main else None
        progress = dist.broadcast(None if found is None else asdict(found[0]))
        if progress is None:
            return None
        sums = found[1] if dist.is_main else {}
        return PassProgress(**progress), sums

    def _read(self) -> tuple[PassProgress, dict[str, torch.Tensor]] | None:
        if not self.path.exists():
            return None
        try:
            with safe_open(str(self.path), framework="pt") as fh:
                meta = fh.metadata() or {}
                sums = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
            if json.loads(meta.get("checkpoint", "{}")) != json.loads(json.dumps(self.identity)):
                logger.warning("checkpoint %s belongs to another run: starting afresh", self.path)
                return None
            if meta.get("checksum") != checksum(sums, meta.get("progress")):
                logger.warning("checkpoint %s is corrupt: starting afresh", self.path)
                return None
            progress = PassProgress(**json.loads(meta["progress"]))
        except Exception as err:  # truncated or foreign file
            logger.warning("checkpoint %s is unreadable (%s): starting afresh", self.path, err)
            return None
        return progress, sums

    def save(self, progress: PassProgress, sums: dict[str, torch.Tensor], dist: Dist) -> None:
        """Add the processes' sums on the main process and write them atomically there.

        Every process must call this at the same step (the addition is a collective)."""
        reduced = {site: dist.reduced_on_main(total) for site, total in sums.items()}
        if not dist.is_main or not self._writable:
            return
        state = json.dumps(asdict(progress))
        meta = {"checkpoint": json.dumps(self.identity, sort_keys=True), "progress": state,
                "checksum": checksum(reduced, state)}
        try:
            write_safetensors_atomic(self.path, reduced, meta)
            logger.debug("checkpoint at %d tokens: %s", progress.tokens_done, self.path)
        except OSError as err:
            self._writable = False
            logger.warning("%s; the pass goes on without checkpoints (a re-run resumes from "
                           "the last one written, if any)", _reason(err, self.path))

    def remove(self, dist: Dist) -> None:
        if dist.is_main:
            self.path.unlink(missing_ok=True)


def _reason(err: OSError, path: Path) -> str:
    """``err`` as a sentence naming ``path`` (an out-of-space error already names it)."""
    return str(err) if isinstance(err, OutOfSpaceError) else f"could not write {path} ({err})"


def remove_obsolete(root: Path) -> list[Path]:
    """Remove checkpoints whose every site now has its file in the cache. A run killed between
    writing its final files and removing its checkpoint leaves one behind, and the run that
    then computes only the missing sites has another identity, so it never removes it (for a
    large model, gigabytes). The removed paths."""
    removed = []
    for path in stats_dir(root).glob(f"{PREFIX}*.safetensors"):
        try:
            with safe_open(str(path), framework="pt") as fh:
                identity = json.loads((fh.metadata() or {})["checkpoint"])
            done = all(cache_path(root, fp).exists() for fp in identity["fingerprints"])
        except Exception:  # unreadable or foreign: not ours to judge
            continue
        if done:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
