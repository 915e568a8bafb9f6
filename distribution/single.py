"""All of the residual goes into one layer (ROME): the last of the preset's layers."""

from collections.abc import Sequence

from torch import Tensor


class SingleLayer:
    """The whole residual into the last preset layer (ROME)."""

    name = "single"

    def layers(self, preset_layers: Sequence[int]) -> Sequence[int]:
        # The target z is defined at the last preset layer, so that is where one edit writes it.
        return [preset_layers[-1]]

    def share(self, residual: Tensor, step: int, remaining: int) -> Tensor:
        return residual
