"""Targets on disk: the second level under ``Editor.target_cache`` (docs/design.md §11, §12).

A target ``z`` depends on the request, the context prefixes, the last edit block, the target
settings and the weights (their identity, :mod:`massedit.engine.identity`), and on the model and
massedit version. One small safetensors file per target under ``cache_root()/targets``, named by
the hash of all of that, so an interrupted 10,000-fact run, a re-run, or a study in another
process reads what was already computed instead of optimising it again.

Files are written atomically (temporary name, then rename) with a checksum of their tensors and
key; a file that is unreadable, corrupt or made for another key is reported and recomputed. An
unwritable store only costs the reuse: targets are computed and used, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from massedit.atomic import entry_lock, sweep_temporaries_of
from massedit.data.locations import cache_root
from massedit.stats.cache import checksum, write_safetensors_atomic
from massedit.targets.optimise import CachedTarget
from massedit.version import __version__

logger = logging.getLogger(__name__)

STORE_FORMAT = 1


class TargetStore:
    """Targets as files under ``root``: ``get(key)`` / ``put(key, target)``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._unwritable_reported = False

    @classmethod
    def default(cls, cache_dir: str | None = None) -> TargetStore:
        """The store in the massedit cache (``cache_dir``, else ``$MASSEDIT_CACHE``, else the
        user cache)."""
        return cls(cache_root(cache_dir) / "targets")

    @staticmethod
    def key(parts: Any) -> str:
        """The file key of a JSON-able description of everything a target depends on."""
        payload = json.dumps([STORE_FORMAT, __version__, parts], sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str, device: torch.device | str = "cpu") -> CachedTarget | None:
        """The stored target (``z`` and ``h`` on ``device``, as computed targets are), or None
        when absent, unreadable, corrupt or another key's."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {name: fh.get_tensor(name) for name in ("z", "h", "nll", "steps")}
            seconds = float(meta["seconds"])
            if meta.get("key") != key or meta.get("checksum") != checksum(tensors, key, seconds):
                logger.warning("target file %s is corrupt (checksum mismatch): recomputing", path)
                return None
        except Exception as err:  # truncated or unreadable file
            logger.warning("target file %s is unreadable (%s): recomputing", path, err)
            return None
        return CachedTarget(tensors["z"].to(device), tensors["h"].to(device), tensors["nll"],
                            tensors["steps"], seconds)

    def put(self, key: str, target: CachedTarget) -> None:
        """Store ``target`` under ``key`` (atomically); a failure to write is only a warning."""
        tensors = {"z": target.z, "h": target.h, "nll": target.nll, "steps": target.steps}
        tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
        meta = {"key": key, "seconds": repr(float(target.seconds)),
                "checksum": checksum(tensors, key, float(target.seconds)),
                "format": str(STORE_FORMAT)}
        path = self.path(key)
        try:
            # One writer per file (docs/design.md §12): a process that stored the same target
            # meanwhile (same key: same request, weights and settings) leaves nothing to write.
            with entry_lock(path, what=f"target {key[:12]}"):
                if self.get(key) is None:
                    sweep_temporaries_of(path)  # a killed writer's; we hold the entry now
                    write_safetensors_atomic(path, tensors, meta)
        except OSError as err:
            if not self._unwritable_reported:
                logger.warning("target store %s is not writable (%s): targets are computed "
                               "and used but not kept", self.root, err.strerror or err)
                self._unwritable_reported = True
