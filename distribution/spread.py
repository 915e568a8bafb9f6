"""MEMIT's spreading: layer j of m gets ``R / (m − j)`` of the residual still left at that step.

The residual is re-measured on the partly edited model before each layer, so earlier layers'
over- or under-shoot is corrected by the later ones.
"""

from collections.abc import Sequence

from torch import Tensor


class Spread:
    """Layer j of m takes R / (m − j) of the re-measured residual (MEMIT)."""

    name = "spread"

    def layers(self, preset_layers: Sequence[int]) -> Sequence[int]:
        return sorted(preset_layers)

    def share(self, residual: Tensor, step: int, remaining: int) -> Tensor:
        return residual / remaining
