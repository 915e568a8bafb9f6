"""Key second-moment statistics ``C = E[k kᵀ]``: the store, the pass over a corpus,
checkpoints, sharding over processes and listing (docs/design.md §6)."""

from massedit.data.locations import cache_root
from massedit.stats.moments import (
    STATS_FORMAT,
    StatsSpec,
    cache_path,
    check_corpus,
    collect_moments,
    fingerprint,
    get_moments,
    load_cached,
    resolve_corpus,
)

__all__ = [
    "STATS_FORMAT", "StatsSpec", "cache_path", "cache_root", "check_corpus", "collect_moments",
    "fingerprint", "get_moments", "load_cached", "resolve_corpus",
]
