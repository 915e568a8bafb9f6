"""Where massedit keeps what it computes (the cache) and finds the data sets it reads.

One setting each, so that tests, benchmarks and users agree: ``$MASSEDIT_CACHE`` for the cache
(statistics, the converted embedded model, downloaded data sets, toy models) and
``$MASSEDIT_DATA`` for a local mirror folder of data sets, laid out as the named data sets'
``mirror`` paths say (see :mod:`massedit.data.datasets`): ``counterfact/counterfact.json``,
``wikitext-2/valid.txt``, ... Nothing else is searched: a file outside the repository is found
through ``$MASSEDIT_DATA`` or given by its path.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "MASSEDIT_CACHE"
DATA_ENV = "MASSEDIT_DATA"


def cache_root(cache_dir: str | None = None) -> Path:
    """``cache_dir``, else ``$MASSEDIT_CACHE``, else the user cache directory."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("massedit"))


def data_root() -> Path | None:
    """The local data mirror ``$MASSEDIT_DATA``; ``None`` when unset or not a folder."""
    value = os.environ.get(DATA_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_dir() else None


def describe_data_root() -> str:
    """``$MASSEDIT_DATA`` as a message shows it: its value, and whether the folder exists."""
    value = os.environ.get(DATA_ENV)
    if not value:
        return f"${DATA_ENV} is not set"
    state = "" if Path(value).expanduser().is_dir() else ", which does not exist"
    return f"${DATA_ENV}={value}{state}"


def mirror_file(relative: str) -> Path | None:
    """``$MASSEDIT_DATA/relative`` when that file exists, else ``None``."""
    root = data_root()
    if root is None:
        return None
    path = root / relative
    return path if path.is_file() else None


def require_mirror_file(relative: str) -> Path:
    """``$MASSEDIT_DATA/relative``, or an error naming the file and the setting (benchmarks and
    tests that need the developers' data mirror)."""
    path = mirror_file(relative)
    if path is None:
        raise FileNotFoundError(f"{relative} not found in the data mirror ({describe_data_root()});"
                                f" set {DATA_ENV} to a folder that holds it")
    return path


def default_data_root(checkout: Path) -> Path:
    """For the test suite and benchmarks of a checkout: ``$MASSEDIT_DATA`` defaults to the
    developers' mirror, ``data`` in the ``shared`` folder beside the checkout. The variable is
    set only when it is unset, so a user's own mirror (or an empty folder, to run as a clone
    without data would) wins."""
    os.environ.setdefault(DATA_ENV, str(Path(checkout).resolve().parent / "shared" / "data"))
    return Path(os.environ[DATA_ENV])
