"""Pair edits (Raunak & Menezes): write ``negative key -> positive value`` at one FF site.

>>> editor = PairEditor(model, tok, corpus="train_pairs.csv")
>>> patch = editor.edit(pairs, site="encoder.2", edit_dropout=0.3)
>>> patch.revert(model)

The update is any registered objective's closed form (default ``equality``: ROME for one pair,
EMMET for a batch) on a :class:`~massedit.contracts.LayerProblem` built from the pairs' keys and
residuals (:mod:`massedit.seq2seq.pair_keys`) and the site's second moment over parallel text
(:mod:`massedit.seq2seq.moments`, kept in the statistics store); the result is an ordinary
:class:`~massedit.EditPatch`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from massedit.editing.registry import get_objective
from massedit.engine.hparams import EditHparams
from massedit.engine.patch import EditPatch
from massedit.engine.problem import Delta, LayerProblem, SecondMoment
from massedit.engine.writing import edit_metadata, write_update
from massedit.models.adapters import get_adapter, get_module, read_weight
from massedit.models.seq2seq import Seq2SeqAdapter, Site, find_site
from massedit.seq2seq.dropout import Rescale, edit_dropout
from massedit.seq2seq.moments import parallel_corpus, parallel_moments
from massedit.seq2seq.pair_keys import Reduce, ValueKind, pair_keys_and_residuals
from massedit.seq2seq.pairs import EditPair, as_pairs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairSettings:
    """Pair-edit choices besides the objective's hyper-parameters (``EditHparams``)."""

    reduce: Reduce = "mean"  # span key: mean over the span's tokens, or its last token
    value: ValueKind = "site"  # "site": the FF output (paper); "stream": the post-FF stream
    edit_dropout: float = 0.0
    dropout_rescale: Rescale = "exact"
    dropout_seed: int = 0
    stats_tokens_per_width: int = 20  # full edit: tokens per stack = this × d_in
    sweep_tokens_per_width: int = 4  # location sweep: a few times d_in
    # Location sweep with held-out pairs: sites whose edit costs more BLEU than this rank last.
    max_bleu_drop: float = 2.0


@dataclass
class PairSolution:
    """One solved site: the problem (with a copy of W) and the update."""

    site: Site
    problem: LayerProblem
    delta: Delta


def pairs_digest(pairs: Sequence[EditPair]) -> str:
    payload = json.dumps([asdict(p) for p in pairs], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def require_seq2seq(model) -> Seq2SeqAdapter:
    adapter = get_adapter(model)
    if not isinstance(adapter, Seq2SeqAdapter):
        raise ValueError(
            f"pair edits need an encoder-decoder model (t5, bart, marian); "
            f"{model.config.model_type!r} is decoder-only: use subject edits (--edits)")
    return adapter


class PairEditor:
    """Solve and write pair edits on an encoder-decoder model."""

    def __init__(
        self, model, tok, *, corpus: str | Path | Sequence[tuple[str, str]],
        objective: str = "equality", settings: PairSettings | None = None,
        hparams: EditHparams | None = None, cache_dir: str | Path | None = None,
        **overrides: Any,
    ) -> None:
        self.model, self.tok = model, tok
        self.adapter = require_seq2seq(model)
        self.objective_name = objective
        self.objective = get_objective(objective)
        self.settings = settings or PairSettings()
        hp = hparams or EditHparams(mu=0.0)
        self.hparams = hp.replace(**overrides) if overrides else hp
        self.corpus = parallel_corpus(corpus, model, tok)
        self.cache_dir = cache_dir  # the statistics store's root (None: the massedit cache)
        self._moments: dict[tuple[str, int], SecondMoment] = {}

    # ---- pieces ------------------------------------------------------------------------------
    def site(self, site: Site | str) -> Site:
        return site if isinstance(site, Site) else find_site(self.model, site)

    def tokens_for(self, site: Site, sweep: bool = False) -> int:
        per = (self.settings.sweep_tokens_per_width if sweep
               else self.settings.stats_tokens_per_width)
        return per * self.adapter.stack(site.stack).mlp_width(self.model.config)

    def moments(self, sites: Sequence[Site], tokens: int) -> dict[str, SecondMoment]:
        """Moments of ``sites`` at this budget: kept for this editor, read from the statistics
        store, or the missing ones in one pass (then stored)."""
        missing = [s for s in sites if (s.name, tokens) not in self._moments]
        if missing:
            found = parallel_moments(self.model, self.tok, missing, self.corpus, tokens,
                                     cache_dir=self.cache_dir)
            self._moments.update({(name, tokens): m for name, m in found.items()})
        return {s.name: self._moments[(s.name, tokens)] for s in sites}

    def solve(self, pairs: Sequence[EditPair], site: Site | str, *, tokens: int | None = None,
              outputs: Sequence[str] | None = None) -> PairSolution:
        """The update for ``pairs`` at ``site`` on the current model (nothing is written, and
        nothing is guarded yet: :meth:`write` refuses an update the guard rejects)."""
        site = self.site(site)
        tokens = tokens or self.tokens_for(site)
        keys, residual = pair_keys_and_residuals(self.model, self.tok, pairs, site,
                                                 self.settings.reduce, outputs,
                                                 self.settings.value)
        module = get_module(self.model, site.name)
        weight = read_weight(module, self.adapter.layout).detach()  # (d_out, d_in)
        problem = LayerProblem(weight=weight.clone(), keys=keys, residual=residual,
                               moment=self.moments([site], tokens)[site.name],
                               hparams=self.hparams, layer=site.layer)
        delta = self.objective.solve(problem)
        s = self.settings
        if s.edit_dropout > 0:
            delta = edit_dropout(delta, keys, residual, s.edit_dropout, s.dropout_seed,
                                 s.dropout_rescale)
        return PairSolution(site, problem, delta)

    def write(self, solution: PairSolution, patch: EditPatch) -> float:
        """Guard a solved update, write it into the model and record it in ``patch``, the
        same way the Editor does (docs/design.md §3, §12); returns ‖ΔW‖ / ‖W‖. An update the
        guard refuses raises :class:`~massedit.engine.writing.EditError` before any write."""
        site = solution.site
        return write_update(self.model, site.name, site.layer, self.adapter.layout,
                            solution.delta.compact(), patch, self.hparams.max_update_ratio,
                            moment=solution.problem.moment, ridge=self.hparams.moment_ridge)

    # ---- the edit ----------------------------------------------------------------------------
    def edit(self, pairs: Iterable[EditPair | Mapping[str, Any]], site: Site | str) -> EditPatch:
        """Write all pairs at ``site`` (one batched solve); returns the patch."""
        pairs = as_pairs(pairs)
        site = self.site(site)
        solution = self.solve(pairs, site)
        patch = EditPatch(metadata=self.metadata(pairs, site))
        self.write(solution, patch)
        logger.info("pair edit at %s: |ΔW| = %.4g", site.label,
                    float(solution.delta.matrix().norm()))
        return patch

    def metadata(self, pairs: Sequence[EditPair], site: Site) -> dict[str, Any]:
        return edit_metadata(
            self.model, self.hparams, kind="pairs", objective=self.objective_name,
            site=site.label, layers=[site.layer], stack=site.stack,
            settings=asdict(self.settings), stats_tokens=self.tokens_for(site),
            n_pairs=len(pairs), pairs_digest=pairs_digest(pairs),
        )
