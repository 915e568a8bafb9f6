"""The contracts a plug-in author implements — read this module first (docs/design.md §4).

A *method* is either a composition of an :class:`Objective` (how one layer's update is solved)
and a :class:`Distribution` (which layers take how much of the residual), or a
:class:`WholeEditor` that does everything itself. Methods are described by a :class:`MethodSpec`
and registered with :mod:`massedit.editing.registry` (decorators or entry points).

Objectives receive a :class:`LayerProblem` and return a :class:`Delta`; their settings are an
:class:`EditHparams` dataclass, which a method extends with a subclass of its own fields
(``MethodSpec(hparams=MyHparams)``) instead of reading unknown keys with ``getattr``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import Tensor

from massedit.engine.hparams import EditHparams
from massedit.engine.problem import BatchPlan, Delta, LayerProblem, SecondMoment
from massedit.engine.requests import EditRequest
from massedit.engine.whole import WholeEditContext


@runtime_checkable
class Objective(Protocol):
    """Turns one layer's problem into an update ``ΔW``.

    Optional class attributes tell the conformance kit what to check: ``exact`` (new keys are
    written exactly), ``normal_equations`` (``ΔW (λC + K Kᵀ) = R Kᵀ``), ``preserves_corpus_keys``,
    ``uses_prior_keys`` (reads ``problem.prior_gram()``, the keys of earlier sequential batches
    as ``Kₚ Kₚᵀ``; the editor accumulates it only for objectives that declare this). An optional
    ``check_batch(plan: BatchPlan) -> str | None`` refuses, before any work, batches the
    objective cannot solve (docs/design.md §4)."""

    name: ClassVar[str]

    def solve(self, problem: LayerProblem) -> Delta: ...


@runtime_checkable
class Distribution(Protocol):
    """Chooses the layers an edit writes and each one's share of the re-measured residual."""

    name: ClassVar[str]

    def layers(self, preset_layers: Sequence[int]) -> Sequence[int]: ...

    def share(self, residual: Tensor, step: int, remaining: int) -> Tensor:
        """The part of ``residual`` (n, d) that layer ``step`` writes, ``remaining`` layers
        (this one included) still to go."""
        ...


class WholeEditor(Protocol):
    """A method that is not an objective × distribution (fine-tuning, knowledge neurons...).

    Called once per batch with the batch's validated requests (``EditRequest``), the method's
    hyper-parameters (its ``MethodSpec.hparams`` class, preset and overrides applied) and a
    :class:`WholeEditContext`. It writes every update through ``context.write(layer, delta)``
    (guarded, recorded in the patch, revertible bit for bit) and must otherwise leave the model
    as it found it (it may change weights while it works if it restores them). Returns nothing.

    Optional attributes: ``uses_statistics = True`` (``context.moments()`` then gives the key
    second moments of the edit layers; otherwise no statistics are computed for it) and
    ``check_model(model) -> str | None`` (a reason it cannot edit this model, given before any
    work; the Editor names the method and the model type). See docs/plugins.md."""

    def __call__(self, model: Any, tok: Any, requests: Sequence[EditRequest],
                 hparams: EditHparams, context: WholeEditContext) -> None: ...


@dataclass(frozen=True)
class MethodSpec:
    """A method: a closed-form composition (objective + distribution) or a whole editor.

    ``hparams`` is the hyper-parameter class (:class:`EditHparams` or a dataclass subclass that
    adds the method's own fields); ``presets`` an importable package holding
    ``<model>.yaml`` files (and ``default.yaml``) for plug-in methods, whose presets cannot live
    in ``massedit/presets``.
    """

    name: str
    objective: str | None = None
    distribution: str | None = None
    editor: WholeEditor | None = None
    description: str = ""
    hparams: type = EditHparams
    presets: str | None = None


__all__ = ["BatchPlan", "Delta", "Distribution", "EditHparams", "EditRequest", "LayerProblem",
           "MethodSpec", "Objective", "SecondMoment", "WholeEditContext", "WholeEditor"]
