"""``massedit stats --list``: what the statistics cache holds, one row per computed set of sites.

Only file headers are read (safetensors keeps its metadata there), so listing a cache of large
matrices is instant. Files of one pass share everything in their fingerprint but the site and are
shown together; unfinished passes (checkpoints) are listed as partial.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from massedit.stats.cache import stats_dir
from massedit.stats.checkpoint import PREFIX

LOCAL = "local"  # computed on this machine (a pulled file's header names its repository)


@dataclass
class CacheEntry:
    """Statistics files that differ only in their site (or one checkpoint)."""

    model: str
    corpus: str
    tokens_requested: int
    tokens: int  # counted (fewer than requested when the corpus ran out)
    max_length: int  # 0: the pass does not cut texts (parallel text of pair edits)
    dtype: str
    sites: list[str] = field(default_factory=list)
    size: int = 0  # bytes
    processes: int = 1
    partial: bool = False
    files: list[Path] = field(default_factory=list)
    sources: set[str] = field(default_factory=set)  # "local", or the hub repository pulled from

    @property
    def source(self) -> str:
        return ", ".join(sorted(self.sources)) or LOCAL


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


def compress_sites(sites: Iterable[str]) -> str:
    """``model.layers.{2-4,7}.mlp.down_proj`` for sites that differ only in the layer index."""
    groups: dict[tuple[str, str], list[int]] = {}
    others: list[str] = []
    for site in sites:
        match = re.fullmatch(r"(.*?\.)(\d+)(\..*)?", site)
        if match:
            groups.setdefault((match[1], match[3] or ""), []).append(int(match[2]))
        else:
            others.append(site)
    out = []
    for (head, tail), layers in sorted(groups.items()):
        layers = sorted(set(layers))
        runs, start = [], layers[0]
        for prev, cur in zip(layers, [*layers[1:], None], strict=True):
            if cur != prev + 1:
                runs.append(str(start) if start == prev else f"{start}-{prev}")
                start = cur
        inner = runs[0] if len(runs) == 1 and "-" not in runs[0] else "{" + ",".join(runs) + "}"
        out.append(f"{head}{inner}{tail}")
    return ", ".join(out + sorted(others))


def _header(path: Path) -> dict[str, str] | None:
    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except Exception:  # noqa: BLE001 - a foreign or truncated file is skipped, not fatal
        return None


def list_cache(root: Path) -> list[CacheEntry]:
    """Entries of the cache under ``root``, finished ones first."""
    entries: dict[str, CacheEntry] = {}
    folder = stats_dir(root)
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        meta = _header(path)
        if meta is None:
            continue
        if path.name.startswith(PREFIX):
            entry = _partial_entry(path, meta)
            if entry is not None:
                entries[str(path)] = entry
            continue
        try:
            fp = json.loads(meta["fingerprint"])
        except (KeyError, ValueError):
            continue
        group = json.dumps({k: v for k, v in fp.items() if k != "site"}, sort_keys=True)
        entry = entries.get(group)
        if entry is None:
            entry = entries[group] = CacheEntry(
                model=meta.get("model_name") or fp["model"], corpus=fp["corpus"],
                tokens_requested=fp["tokens"], tokens=int(meta.get("count", 0)),
                max_length=fp.get("max_length", 0), dtype=fp["dtype"],
                processes=int(meta.get("processes", 1)))
        entry.sites.append(fp["site"])
        entry.sources.add(meta.get("source") or LOCAL)
        entry.size += path.stat().st_size
        entry.files.append(path)
    return sorted(entries.values(), key=lambda e: (e.partial, e.model, e.corpus, e.tokens))


def _partial_entry(path: Path, meta: dict[str, str]) -> CacheEntry | None:
    try:
        identity = json.loads(meta["checkpoint"])
        progress = json.loads(meta["progress"])
        fps = identity["fingerprints"]
        first = fps[0]
    except (KeyError, ValueError, IndexError):
        return None
    return CacheEntry(model=first["model"], corpus=first["corpus"],
                      tokens_requested=first["tokens"], tokens=int(progress["tokens_done"]),
                      max_length=first["max_length"], dtype=first["dtype"],
                      sites=[fp["site"] for fp in fps], size=path.stat().st_size,
                      processes=int(identity["world"]), partial=True, files=[path])


def print_cache(console, root: Path) -> list[CacheEntry]:
    """The cache as a table on ``console``."""
    from rich.table import Table

    entries = list_cache(root)
    if not entries:
        console.print(f"no statistics in {stats_dir(root)}")
        return entries
    table = Table(title=f"key statistics in {stats_dir(root)}")
    for column in ("model", "sites", "corpus", "tokens", "len", "dtype", "procs", "size",
                   "source"):
        table.add_column(column, overflow="fold")
    for e in entries:
        if e.partial:
            tokens = f"{e.tokens} of {e.tokens_requested} (partial: resumable)"
        elif e.tokens < e.tokens_requested:
            tokens = f"{e.tokens} ({e.tokens_requested} asked; corpus ran out)"
        else:
            tokens = str(e.tokens)
        table.add_row(_short_model(e.model), compress_sites(e.sites), _short_corpus(e.corpus),
                      tokens, str(e.max_length or "-"), e.dtype, str(e.processes),
                      human_size(e.size), e.source)
    console.print(table)
    return entries


def _short_model(model: str) -> str:
    """A local folder by its last two parts; hub ids and hashes as they are."""
    path = Path(model)
    return "/".join(path.parts[-2:]) if path.is_absolute() else model


def _short_corpus(corpus: str) -> str:
    """``file:NAME:HASH`` as ``NAME (HASH[:8])``; ``parallel:N:HASH`` (pair-edit statistics) as
    ``N parallel pairs (HASH[:8])``."""
    kind, _, rest = corpus.partition(":")
    if kind in ("file", "parallel") and ":" in rest:
        name, _, digest = rest.rpartition(":")
        label = f"{name} parallel pairs" if kind == "parallel" else name
        return f"{label} ({digest[:8]})"
    return corpus
