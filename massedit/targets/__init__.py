"""Target hidden states ``z`` by optimising a free vector δ per request: token rows, the
forward passes, the suffix shortcut (docs/design.md §5)."""

from massedit.targets.optimise import CachedTarget, TargetResult, compute_targets

__all__ = ["CachedTarget", "TargetResult", "compute_targets"]
