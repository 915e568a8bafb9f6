"""Where massedit keeps what it computes (the cache) and finds the data sets it reads.

One setting each, so that tests, benchmarks and users agree: ``$MASSEDIT_CACHE`` for the cache
(statistics, the converted embedded model, targets, toy models) and ``$MASSEDIT_DATA`` for a local
folder of data sets (see :mod:`massedit.data.datasets`).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: str | None = None) -> Path:
    """``cache_dir``, else ``$MASSEDIT_CACHE``, else the user cache directory."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("MASSEDIT_CACHE"):
        return Path(os.environ["MASSEDIT_CACHE"]).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("massedit"))
