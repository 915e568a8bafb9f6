"""Download a file into the cache: checked before it is visible, never left half-written.

The bytes go to a temporary file in the destination's folder while their sha256 is computed;
the file is renamed into place only when the digest matches the expected one (when one is pinned)
and the caller's ``check`` accepts it. Any failure (network, digest, check, interrupt) removes the
temporary file, so the cache holds either nothing or a verified copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path

from massedit.atomic import atomic_path

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
TIMEOUT_S = 60


class DownloadError(OSError):
    """A download failed or gave other bytes than expected; nothing was kept."""


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_url(url: str, fh, digest) -> int:
    """Stream ``url`` into ``fh``, updating ``digest``; the number of bytes."""
    size = 0
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # http(s) and file://
        for chunk in iter(lambda: response.read(CHUNK), b""):
            fh.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    return size


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None,
             check: Callable[[Path], None] | None = None) -> str:
    """Fetch ``url`` to ``dest`` atomically; returns the file's sha256.

    ``sha256``: the expected digest (a mismatch is refused). ``check(path)``: raises when the
    downloaded file is unusable (e.g. not the expected JSON structure); it runs on the temporary
    file, before the rename."""
    dest = Path(dest)
    with atomic_path(dest, suffix=".part") as tmp:  # renamed into place only when accepted
        digest = hashlib.sha256()
        logger.info("downloading %s to %s", url, dest)
        with tmp.open("wb") as fh:
            try:
                size = _copy_url(url, fh, digest)
            except OSError as err:  # URLError and HTTPError are OSErrors
                raise DownloadError(f"could not download {url}: {err}") from err
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256.lower():
            raise DownloadError(f"{url}: sha256 {actual} ({size} bytes) differs from the pinned "
                                f"{sha256}; the file was not kept")
        if check is not None:
            try:
                check(tmp)
            except (ValueError, OSError) as err:
                raise DownloadError(f"{url}: the downloaded file is not usable ({err}); it was "
                                    "not kept") from err
    logger.info("%s: %d bytes, sha256 %s", dest, size, actual)
    return actual
