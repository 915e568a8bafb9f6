"""A distribution in one small file: spread the residual over the edit layers in proportion to a
per-layer score, e.g. each layer's causal-tracing effect (``massedit trace``), instead of MEMIT's
equal shares. Import this file (or name it in an entry point) and use
``Editor(..., distribution="score_weighted")`` or ``--distribution score_weighted``.
"""

from collections.abc import Sequence

from torch import Tensor

from massedit.editing.registry import register_distribution


@register_distribution
class ScoreWeighted:
    """Layer l takes a share of the residual proportional to SCORES[l] (default 1: MEMIT)."""

    name = "score_weighted"
    # layer -> score, e.g. the indirect effect of its MLP from a causal trace; set before editing
    SCORES: dict[int, float] = {}

    def layers(self, preset_layers: Sequence[int]) -> Sequence[int]:
        self._layers = sorted(preset_layers)
        return self._layers

    def share(self, residual: Tensor, step: int, remaining: int) -> Tensor:
        # The residual is re-measured before each layer, so each layer takes its score's part of
        # what is still missing: score(l) / (sum of the scores of this and the later layers).
        scores = [max(self.SCORES.get(layer, 1.0), 1e-6) for layer in self._layers[step:]]
        return residual * (scores[0] / sum(scores))
