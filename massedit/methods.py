"""The built-in methods, each a registered (objective, distribution) composition (DESIGN §4)."""

from massedit.registry import MethodSpec, register_method

register_method(MethodSpec("rome", "equality", "single", description="ROME: rank-one, one layer"))
register_method(MethodSpec("memit", "least_squares", "spread", description="MEMIT: mass editing"))
register_method(MethodSpec("emmet", "equality", "spread", description="EMMET: batched equality"))
