"""Optimisation objectives (``massedit.algorithms``): each turns a LayerProblem into a Delta."""

from massedit.algorithms.equality import EqualityObjective
from massedit.algorithms.least_squares import LeastSquaresObjective

__all__ = ["EqualityObjective", "LeastSquaresObjective"]
