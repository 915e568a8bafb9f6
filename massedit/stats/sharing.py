"""Statistics shared through a hub dataset repository (docs/design.md §6, "Shared statistics").

The repository mirrors the cache's ``stats/`` folder: each entry is the cache's own safetensors
file (the sum, with fingerprint, count and checksum in its header) and beside it a small
fingerprint JSON, ``<same name>.json``, holding the fingerprint, the count, the file's sha256 and
where it was made, so that a pull chooses entries without downloading sums it does not want.

A pulled entry enters the cache only when everything agrees: the JSON's fingerprint is the one
asked for (or matches the model and sites asked for), the file's sha256 is the JSON's, the
header's fingerprint is the JSON's and its checksum verifies the sum (``load_cached``). Files are
downloaded into a hidden folder inside the cache and only a verified entry is written into place
(atomically, with ``source`` added to its header for ``stats --list``); the folder is removed
whatever happens, so a refused, corrupt or interrupted download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from massedit.hub import HubError, check_repo_id, download, list_files, push_folder
from massedit.stats.cache import cache_path, load_cached, save_moment, stats_dir
from massedit.stats.checkpoint import PREFIX

logger = logging.getLogger(__name__)

REPO_TYPE = "dataset"
FOLDER = "stats"  # the folder inside the repository, as inside the cache
SOURCE_KEY = "source"  # header metadata of a pulled file: where it came from


@dataclass
class PullReport:
    """What a pull did: entries installed (cache paths), refused (with why), others skipped."""

    installed: list[Path] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    other_models: set[str] = field(default_factory=set)  # model identities not asked for
    available: int = 0  # entries in the repository


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _header(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as fh:
        return fh.metadata() or {}


def cache_files(root: Path) -> list[Path]:
    """Finished statistics files of the cache (no checkpoints, no hidden temporaries)."""
    folder = stats_dir(root)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.safetensors")
                  if not p.name.startswith((PREFIX, ".")))


def entry_record(path: Path) -> dict:
    """The fingerprint JSON pushed beside a cache file."""
    meta = _header(path)
    return {"fingerprint": json.loads(meta["fingerprint"]), "count": int(meta["count"]),
            "checksum": meta["checksum"], "sha256": _sha256(path), "file": path.name,
            "model_name": meta.get("model_name", ""), "created": meta.get("created", "")}


def push_stats(root: Path, repo_id: str, *, model_id: str | None = None,
               sites: Iterable[str] | None = None, private: bool = True,
               token: str | None = None) -> list[str]:
    """Upload the cache's entries (of ``model_id`` at ``sites``; each None: any) with their
    fingerprint JSON to the dataset repository ``repo_id``; returns the uploaded file names."""
    site_set = set(sites) if sites is not None else None
    check_repo_id(repo_id)
    files = []
    for path in cache_files(root):
        try:
            record = entry_record(path)
        except Exception as err:  # noqa: BLE001 - a foreign or truncated file is not pushed
            logger.warning("not pushing %s: unreadable (%s)", path, err)
            continue
        fp = record["fingerprint"]
        if ((model_id is None or fp.get("model") == model_id)
                and (site_set is None or fp.get("site") in site_set)):
            files.append((path, record))
    if not files:
        selected = model_id is not None or site_set is not None
        raise ValueError(f"no statistics to push in {stats_dir(root)}"
                         + (" for this model and these layers" if selected else ""))
    with tempfile.TemporaryDirectory(prefix="massedit-stats-push-") as tmp:
        folder = Path(tmp) / FOLDER
        folder.mkdir()
        for path, record in files:
            shutil.copy2(path, folder / path.name)
            (folder / f"{path.name}.json").write_text(json.dumps(record, indent=1))
        push_folder(tmp, repo_id, repo_type=REPO_TYPE, private=private, token=token,
                    commit_message=f"massedit statistics: {len(files)} entr"
                                   f"{'y' if len(files) == 1 else 'ies'}")
    return [path.name for path, _ in files]


def _install(root: Path, repo_id: str, name: str, record: dict, tmp: Path,
             want: dict | None, token: str | None) -> Path:
    """Download one entry into ``tmp``, verify it, write it into the cache; ValueError says
    why an entry is refused."""
    fp = record["fingerprint"]
    if want is not None and fp != want:
        raise ValueError("its fingerprint is not the one asked for")
    target = cache_path(root, fp)
    if target.name != name:
        raise ValueError(f"its name does not match its fingerprint (expected {target.name})")
    path = download(repo_id, f"{FOLDER}/{name}", tmp, repo_type=REPO_TYPE, token=token)
    if _sha256(path) != record.get("sha256"):
        raise ValueError("checksum mismatch: the file is not the one its fingerprint JSON "
                         "describes (corrupt or tampered)")
    try:
        header_fp = json.loads(_header(path)["fingerprint"])
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"unreadable file ({err})") from None
    if header_fp != fp:
        raise ValueError("the file's own fingerprint differs from its fingerprint JSON")
    moment = load_cached(path, fp)  # the sum's checksum against its header
    if moment is None:
        raise ValueError("the sum does not match its checksum (corrupt or tampered)")
    meta = _header(path)
    extra = {k: v for k, v in meta.items() if k not in ("fingerprint", "count", "checksum")}
    extra[SOURCE_KEY] = f"hf://datasets/{repo_id}"
    save_moment(target, fp, moment, extra)
    return target


def pull_stats(root: Path, repo_id: str, *, wanted: Iterable[dict] | None = None,
               model_id: str | None = None, sites: Iterable[str] | None = None,
               token: str | None = None) -> PullReport:
    """Download the repository's entries that are ``wanted`` (exact fingerprints), else those
    of ``model_id`` at ``sites`` (each None: any), into the cache under ``root``.

    Each entry is verified before it is written (see the module docstring); a refused entry is
    reported in ``PullReport.refused`` and never used. :class:`HubError` when the repository
    cannot be listed or a download fails: what was verified before stays, nothing partial."""
    check_repo_id(repo_id)
    names = [f for f in list_files(repo_id, repo_type=REPO_TYPE, token=token)
             if f.startswith(f"{FOLDER}/") and f.endswith(".safetensors")]
    index = {Path(n).name: n for n in names}
    want_by_name: dict[str, dict] | None = None
    if wanted is not None:
        want_by_name = {cache_path(root, fp).name: fp for fp in wanted}
    site_set = set(sites) if sites is not None else None
    report = PullReport(available=len(index))
    stats_dir(root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=stats_dir(root), prefix=".pull-"))
    try:
        for name in sorted(index):
            if want_by_name is not None and name not in want_by_name:
                continue
            sidecar = download(repo_id, f"{index[name]}.json", tmp, repo_type=REPO_TYPE,
                               token=token)
            try:
                record = json.loads(sidecar.read_text(encoding="utf-8"))
                fp = record["fingerprint"]
            except (ValueError, KeyError) as err:
                report.refused.append(f"{name}: unreadable fingerprint JSON ({err})")
                continue
            if model_id is not None and fp.get("model") != model_id:
                report.other_models.add(str(fp.get("model")))
                continue
            if site_set is not None and fp.get("site") not in site_set:
                continue
            want = want_by_name[name] if want_by_name is not None else None
            try:
                report.installed.append(_install(root, repo_id, name, record, tmp, want, token))
            except HubError:
                raise  # a failed download: reported by the caller, nothing partial kept
            except ValueError as err:
                report.refused.append(f"{name}: {err}")
                logger.warning("statistics %s from %s refused: %s", name, repo_id, err)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


STATS_REPO_ENV = "MASSEDIT_STATS_REPO"


def fetch_shared(root: Path, fps: Mapping[int, dict]) -> list[int]:
    """The editor's look-up (``get_moments``): with ``$MASSEDIT_STATS_REPO`` set, pull the
    entries whose fingerprints are exactly ``fps`` (layer -> fingerprint) into the cache and
    return the layers now there. Any failure is reported and the statistics are computed as
    usual: a shared repository can save work, never break an edit."""
    repo = os.environ.get(STATS_REPO_ENV, "").strip()
    if not repo or not fps:
        return []
    try:
        report = pull_stats(root, repo, wanted=list(fps.values()))
    except (HubError, OSError) as err:
        logger.warning("%s=%s: %s; computing the statistics here", STATS_REPO_ENV, repo, err)
        return []
    for problem in report.refused:
        logger.warning("%s: %s", repo, problem)
    got = {p.name for p in report.installed}
    layers = [layer for layer, fp in fps.items() if cache_path(root, fp).name in got]
    if layers:
        logger.info("statistics of layer(s) %s pulled from %s", layers, repo)
    return layers
