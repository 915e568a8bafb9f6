"""The built-in methods, each an (objective, distribution) composition (docs/design.md §4).

The registry registers them on its first lookup."""

from massedit.contracts import MethodSpec

BUILTIN_METHODS = (
    MethodSpec("rome", "equality", "single", description="ROME: rank-one, one layer"),
    MethodSpec("memit", "least_squares", "spread", description="MEMIT: mass editing"),
    MethodSpec("emmet", "equality", "spread", description="EMMET: batched equality"),
)
