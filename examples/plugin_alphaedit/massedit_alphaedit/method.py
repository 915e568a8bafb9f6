"""The ``alphaedit`` method: the null-space objective with MEMIT's spreading over layers."""

from __future__ import annotations

from dataclasses import dataclass

from massedit.editing.registry import MethodSpec, register_method
from massedit.engine.hparams import EditHparams
from massedit_alphaedit.objective import DEFAULT_L2, DEFAULT_THRESHOLD, NullSpaceObjective


@dataclass(frozen=True)
class AlphaEditHparams(EditHparams):
    """MEMIT's settings plus AlphaEdit's two: which directions count as unused, and the ridge."""

    # Eigenvalues of C below this × tr(C)/d_in span the null space the update may use.
    null_space_threshold: float = DEFAULT_THRESHOLD
    # α = null_space_l2 × tr(C)/d_in: ridge on ΔW; larger = smaller updates, weaker edits.
    null_space_l2: float = DEFAULT_L2


ALPHAEDIT = register_method(MethodSpec(
    "alphaedit", NullSpaceObjective.name, "spread",
    description="AlphaEdit: null-space-projected mass editing (massedit-alphaedit plug-in)",
    hparams=AlphaEditHparams, presets="massedit_alphaedit.presets",
))
