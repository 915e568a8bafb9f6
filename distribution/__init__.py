"""Edit-distribution strategies across layers (``massedit.distribution``)."""

from massedit.distribution.single import SingleLayer
from massedit.distribution.spread import Spread

__all__ = ["SingleLayer", "Spread"]
