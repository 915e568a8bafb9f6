"""What a whole-editor method receives besides the model, tokenizer, requests and settings
(docs/design.md §4, the ``WholeEditor`` contract).

A whole editor (fine-tuning, knowledge neurons, a hypernetwork...) computes its updates its own
way, but writes them through :meth:`WholeEditContext.write`, the one path every editor shares
(:func:`massedit.engine.writing.write_update`: the guard, the original weight kept in the patch,
``cast(fp32(W) + ΔW)`` written, the ``SiteDelta`` appended). So its patch saves, loads,
re-applies bit for bit and reverts exactly like a closed-form one, and an exception anywhere
lets the ``Editor`` revert everything written so far.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from massedit.engine.identity import record_write, site_parameter, tensor_identity
from massedit.engine.patch import EditPatch
from massedit.engine.problem import Delta, SecondMoment
from massedit.engine.writing import write_update
from massedit.models.adapters import ModelAdapter, get_module, read_weight


@dataclass
class WholeEditContext:
    """One batch's access to the editor's shared pieces.

    ``layers``: the edit layers the preset (or ``--set layers=...``) chose; ``site(layer)``: the
    module name of that layer's edit site (the MLP output projection the adapter names);
    ``moments()``: the key second moments per edit layer (computed, or read from the cache, on
    first call; only for editors that declare ``uses_statistics = True``, else ``{}``);
    ``weight(layer)``: the site's current weight ``(d_out, d_in)``; ``prefixes()``: the
    editor's context prefixes (``[""]`` when ``context_lengths`` is empty);
    ``info``: JSON-able notes saved in the patch's metadata under ``"editor_info"``.
    """

    model: Any
    adapter: ModelAdapter
    layers: list[int]
    patch: EditPatch
    moments: Callable[[], dict[int, SecondMoment]]
    prefixes: Callable[[], list[str]]
    max_update_ratio: float
    moment_ridge: float = 0.0
    progress: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def site(self, layer: int) -> str:
        return self.adapter.site_name(layer)

    def weight(self, layer: int, site: str | None = None) -> torch.Tensor:
        """The site's current weight in Linear layout ``(d_out, d_in)`` (GPT-2's Conv1D
        transposed), the model's dtype: a view of the parameter, to read, never to write."""
        return read_weight(get_module(self.model, site or self.site(layer)), self.adapter.layout)

    def write(self, layer: int, delta: Delta, site: str | None = None) -> float:
        """Guard and write ``delta`` (``ΔW`` in Linear layout ``(d_out, d_in)``) at ``site``
        (default: ``layer``'s edit site) and record it in the batch's patch. Returns
        ‖ΔW‖ / ‖W‖; raises :class:`massedit.engine.writing.EditError` with nothing written when
        the guard refuses it (the Editor then reverts the whole call)."""
        site = site or self.site(layer)
        param = site_parameter(self.model, site)
        before = tensor_identity(param)
        ratio = write_update(self.model, site, layer, self.adapter.layout, delta, self.patch,
                             self.max_update_ratio, moment=self.moments().get(layer),
                             ridge=self.moment_ridge)
        record_write(param, before, delta)  # the weights' new identity (targets cache, §11)
        return ratio
