"""The statistics store: where files live, what identifies them, atomic writes, integrity checks.

Each site's statistics are one safetensors file holding the sum of ``k kᵀ`` (tensor ``total``)
whose metadata carries the fingerprint of everything the sum depends on (docs/design.md §6), the
token count and a checksum. The file name is the site plus a hash of the fingerprint, so a change
to any part of the spec gives another file; a mismatched or corrupt file is reported and
recomputed. Files are written with :mod:`massedit.atomic`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from massedit.atomic import entry_lock
from massedit.atomic import write_safetensors_atomic as write_safetensors_atomic  # re-export
from massedit.data.corpus import corpus_id
from massedit.engine.problem import SecondMoment
from massedit.models.placement import stored_tensor

logger = logging.getLogger(__name__)
# 2: one row per text (with the tokenizer's special tokens, as edit keys have them), texts longer
# than max_length cut into several rows; 1 concatenated texts across row boundaries.
STATS_FORMAT = 2


@dataclass(frozen=True)
class StatsSpec:
    """Where statistics come from. ``tokens=None`` lets the editor choose from the MLP width.

    ``batch_size``, ``cache_dir`` and ``checkpoint_every`` change how the sums are computed, not
    what they are, so they are not part of the fingerprint.
    """

    corpus: str | None = None  # path, hub dataset id (name[:config]) or "self"; None: default
    tokens: int | None = None
    max_length: int = 256
    batch_size: int = 8
    dtype: str = "float32"
    seed: int = 0
    cache_dir: str | None = None
    checkpoint_every: int | None = None  # tokens between checkpoints; None: a tenth; 0: never


def stats_dir(root: Path) -> Path:
    return root / "stats"


def model_identity(model) -> str:
    """Model id and revision for hub models; for local ones a hash of config and token
    embeddings (which edits of MLP weights never change, so stats stay valid mid-edit)."""
    cfg = model.config
    name = getattr(cfg, "_name_or_path", "") or ""
    revision = getattr(cfg, "_commit_hash", None)
    if name and revision and not Path(name).exists():
        return f"{name}@{revision}"
    h = hashlib.sha256(json.dumps(cfg.to_diff_dict(), sort_keys=True, default=str).encode())
    emb = stored_tensor(model.get_input_embeddings()).detach()  # offloaded: its stored copy
    h.update(emb.float().cpu().numpy().tobytes())
    return f"local:{h.hexdigest()[:16]}"


def site_fingerprint(model, site: str, corpus_key: str, tokens: int, **fields: object) -> dict:
    """Everything one site's sum depends on: the store's format, the model, the site, the corpus
    (``corpus_key``, a content identity), the token budget, and the pass's own choices
    (``fields``: a corpus pass's max_length, dtype and seed; a parallel-text pass's kind and
    batch size)."""
    from massedit.version import __version__

    return {"format": STATS_FORMAT, "model": model_identity(model), "site": site,
            "corpus": corpus_key, "tokens": tokens, **fields, "massedit": __version__}


def fingerprint(model, site: str, spec: StatsSpec, corpus: str, tokens: int) -> dict:
    """Everything one site's sum over a text corpus depends on (docs/design.md §6)."""
    return site_fingerprint(model, site, corpus_id(corpus), tokens, max_length=spec.max_length,
                            dtype=spec.dtype, seed=spec.seed)


def digest(obj) -> str:
    """Short stable hash of a JSON-able object (file names)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


def checksum(tensors: dict[str, torch.Tensor], *extra: object) -> str:
    """Hash of the tensors' bytes (in name order) and of ``extra`` values."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().cpu().numpy().tobytes())
    for value in extra:
        h.update(str(value).encode())
    return h.hexdigest()


def _checksum(total: torch.Tensor, count: int) -> str:
    # The format of single-site files: the sum's bytes, then the count.
    h = hashlib.sha256(total.contiguous().cpu().numpy().tobytes())
    h.update(str(count).encode())
    return h.hexdigest()


def cache_path(root: Path, fp: dict) -> Path:
    safe_site = fp["site"].replace("/", "_")
    return stats_dir(root) / f"{safe_site}-{digest(fp)}.safetensors"


def load_cached(path: Path, fp: dict) -> SecondMoment | None:
    """The cached moment if the file exists, matches ``fp`` and is intact; else None."""
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            total = fh.get_tensor("total")
        stored_fp = json.loads(meta.get("fingerprint", "{}"))
        count = int(meta["count"])
        if stored_fp != fp:
            logger.warning("statistics file %s belongs to another spec: recomputing", path)
            return None
        if meta.get("checksum") != _checksum(total, count):
            logger.warning("statistics file %s is corrupt (checksum mismatch): recomputing", path)
            return None
        return SecondMoment(total, count)
    except Exception as err:  # unreadable or truncated file
        logger.warning("statistics file %s is unreadable (%s): recomputing", path, err)
        return None


def save_moment(path: Path, fp: dict, moment: SecondMoment, extra: dict | None = None) -> None:
    """Write one site's statistics atomically; ``extra`` is informative metadata (not checked)."""
    total = moment.total.contiguous().cpu()
    meta = {
        "fingerprint": json.dumps(fp, sort_keys=True),
        "count": str(moment.count),
        "checksum": _checksum(total, moment.count),
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()},
    }
    write_safetensors_atomic(path, {"total": total}, meta)


def cached_moments(
    root: Path, fps: Mapping[str, dict],
    compute: Callable[[list[str]], Mapping[str, SecondMoment]], extra: dict | None = None,
) -> dict[str, SecondMoment]:
    """Each site's moment from the store when its file matches ``fps[site]`` and is intact;
    ``compute(missing_sites)`` gives the others, which are then stored (an unwritable cache is
    reported and the moments are used anyway). One process: ``get_moments`` adds the
    distributed agreement for corpus passes."""
    with ExitStack() as held:
        # One writer per file (docs/design.md §12): another process wanting a missing one
        # waits, then finds it cached. Path order: overlapping sets cannot deadlock.
        for path in sorted({cache_path(root, fp) for fp in fps.values()}):
            if not path.exists():
                try:
                    held.enter_context(entry_lock(path, what=f"statistics {path.name}"))
                except OSError:  # unwritable: computed and not stored, nothing to guard
                    break
        return _load_or_compute(root, fps, compute, extra)


def _load_or_compute(root: Path, fps: Mapping[str, dict],
                     compute: Callable[[list[str]], Mapping[str, SecondMoment]],
                     extra: dict | None) -> dict[str, SecondMoment]:
    found = {}
    for site, fp in fps.items():
        moment = load_cached(cache_path(root, fp), fp)
        if moment is not None:
            found[site] = moment
    missing = [site for site in fps if site not in found]
    if missing:
        computed = compute(missing)
        try:
            for site in missing:
                save_moment(cache_path(root, fps[site]), fps[site], computed[site], extra)
        except OSError as err:
            logger.warning("could not cache statistics in %s: %s", stats_dir(root), err)
        found.update({site: computed[site] for site in missing})
    return {site: found[site] for site in fps}


def check_writable(root: Path) -> None:
    """Fail before any work when statistics could not be stored under ``root``."""
    folder = stats_dir(root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OSError(f"statistics cache {folder} is not writable ({err.strerror or err}); "
                      "pass --cache-dir or set MASSEDIT_CACHE to a writable folder") from None
