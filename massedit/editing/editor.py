"""The Editor: requests -> targets -> per-layer problems -> objective -> patch (docs/design.md
§3)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from massedit.data.corpus import iter_texts
from massedit.editing.registry import get_distribution, get_method, get_objective, method_preset
from massedit.engine.context import corpus_prefixes, model_prefixes
from massedit.engine.hparams import EditHparams
from massedit.engine.keys import Read, subject_states
from massedit.engine.patch import EditPatch, weight_digest
from massedit.engine.post_norm import site_residual
from massedit.engine.problem import LayerProblem
from massedit.engine.requests import EditRequest, as_requests, requests_digest
from massedit.engine.writing import EditError as EditError  # re-exported: massedit.EditError
from massedit.engine.writing import write_update
from massedit.models.adapters import get_adapter, get_module, read_weight
from massedit.stats.moments import StatsSpec, get_moments
from massedit.targets.optimise import TargetResult, compute_targets
from massedit.version import library_versions

logger = logging.getLogger(__name__)


def weights_key(model) -> str:
    """Identity of the model's current edit-site weights (the only ones massedit changes), so
    targets computed on an edited model are never reused for another state of it."""
    adapter = get_adapter(model)
    h = hashlib.sha256()
    for layer in range(adapter.depth(model.config)):
        w = read_weight(get_module(model, adapter.site_name(layer)), adapter.layout)
        h.update(weight_digest(w).encode())
    return h.hexdigest()


class Editor:
    """Write facts into a model with a registered method or any objective × distribution.

    >>> editor = Editor(model, tok, method="memit", stats="wikitext-2/valid.txt", v_lr=0.5)
    >>> patch = editor.edit([EditRequest("{} is located in", "Eiffel Tower", "Rome", "Paris")])
    >>> patch.revert(model)
    """

    def __init__(
        self,
        model,
        tok,
        method: str = "memit",
        *,
        stats: StatsSpec | str | None = None,
        objective: str | None = None,
        distribution: str | None = None,
        hparams: EditHparams | None = None,
        progress: bool = True,
        keep_problems: bool = False,
        target_cache: dict | None = None,
        **overrides: Any,
    ) -> None:
        self.model, self.tok = model, tok
        self.adapter = get_adapter(model)
        spec = get_method(method)
        self.method = method
        self.objective_name = objective or spec.objective
        self.distribution_name = distribution or spec.distribution
        self.objective = get_objective(self.objective_name)
        self.distribution = get_distribution(self.distribution_name)
        if hparams is None:
            preset = method_preset(method, model, spread=self.distribution_name != "single")
            hparams, self.preset_source = preset.hparams, preset.source
        else:
            self.preset_source = "explicit"
        self.hparams = hparams.replace(**overrides) if overrides else hparams
        depth = self.adapter.depth(model.config)
        bad = [layer for layer in self.hparams.layers if not 0 <= layer < depth]
        if bad or not self.hparams.layers:
            raise ValueError(f"edit layers {list(self.hparams.layers)} invalid for {depth} layers")
        if isinstance(stats, str | Path):
            stats = StatsSpec(corpus=str(stats))
        self.stats_spec = stats or StatsSpec()
        self.progress = progress
        # For inspection and tests: every solved LayerProblem (with a copy of W) and its Delta.
        self.keep_problems = keep_problems
        self.solved: list[tuple[LayerProblem, Any]] = []
        # Targets depend on the request, prefixes, last edit layer, target settings and weights
        # only, so studies that vary λ, μ, objectives, earlier layers or the batch size share
        # them. Keys are per request; values are ``CachedTarget``s.
        self.target_cache = target_cache if target_cache is not None else {}
        self._moments: dict = {}
        self._stats_record: dict = {}
        self._prefixes: list[str] | None = None
        self._prior_keys: dict[int, torch.Tensor] = {}

    # ---- shared pieces -----------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return list(self.distribution.layers(self.hparams.layers))

    def stats_tokens(self, corpus: str | None) -> int:
        if self.stats_spec.tokens:
            return int(self.stats_spec.tokens)
        d_in = self.adapter.mlp_width(self.model.config)
        # Text sampled from the model is slow to make: a few times d_in is enough to be full rank.
        per_width = 4 if corpus == "self" else self.hparams.stats_tokens_per_width
        return per_width * d_in

    def moments(self) -> dict:
        missing = [layer for layer in self.layers if layer not in self._moments]
        if missing:
            from massedit.stats.moments import resolve_corpus

            corpus = resolve_corpus(self.stats_spec, self.model, self.tok)
            spec = StatsSpec(**{**self.stats_spec.__dict__, "corpus": corpus})
            found, record = get_moments(self.model, self.tok, missing, spec,
                                        self.stats_tokens(corpus), self.progress)
            self._moments.update(found)
            self._stats_record = record
            self.stats_spec = spec
        return self._moments

    def prefixes(self) -> list[str]:
        """Context prefixes, drawn once per editor with the preset's seed and saved in patches."""
        if self._prefixes is None:
            hp = self.hparams
            if hp.context_source == "model":
                self._prefixes = model_prefixes(self.model, self.tok, hp.context_lengths, hp.seed)
            else:
                self.moments()  # resolves the corpus
                texts = []
                for text in iter_texts(self.stats_spec.corpus, self.model, self.tok, hp.seed):
                    texts.append(text)
                    if sum(len(t) for t in texts) > 50_000:
                        break
                self._prefixes = corpus_prefixes(texts, hp.context_lengths, hp.seed)
        return self._prefixes

    # ---- state carried between sequential batches ------------------------------------------
    def sequential_state(self) -> dict[str, torch.Tensor]:
        """The keys written by earlier batches, per layer (objectives see them as
        ``prior_keys``), as CPU tensors: run checkpoints save them so a resumed run continues
        exactly as an uninterrupted one."""
        return {f"prior_keys.{layer}": keys.detach().contiguous().cpu()
                for layer, keys in self._prior_keys.items()}  # (d_in, m) each

    def restore_sequential_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Continue after the batches that :meth:`sequential_state` described."""
        self._prior_keys = {int(name.split(".", 1)[1]): keys for name, keys in state.items()
                            if name.startswith("prior_keys.")}

    # ---- the edit ----------------------------------------------------------------------------
    def edit(
        self,
        requests: Iterable[EditRequest | Mapping[str, Any]],
        *,
        batch_size: int | None = None,
        on_batch_done=None,
    ) -> EditPatch:
        """Write all requests; with ``batch_size`` they are written batch after batch, each batch
        seeing the model the previous one left. Returns one patch for everything written.
        ``on_batch_done(index, patch_so_far)`` is called after each batch (for checkpoints)."""
        reqs = as_requests(requests)
        self._validate(reqs)
        batch_size = batch_size or len(reqs)
        patch = EditPatch(metadata=self._metadata(reqs))
        t0 = time.perf_counter()
        prior_keys = dict(self._prior_keys)
        try:
            for b, lo in enumerate(range(0, len(reqs), batch_size)):
                self._edit_batch(reqs[lo : lo + batch_size], patch)
                if on_batch_done is not None:
                    on_batch_done(b, patch)
        except BaseException:
            patch.revert(self.model)  # the model is left exactly as it was
            self._prior_keys = prior_keys  # and so are the keys later batches will protect
            raise
        patch.metadata["seconds"] = round(time.perf_counter() - t0, 3)
        patch.metadata["stats"] = self._stats_record
        return patch

    def _validate(self, reqs: Sequence[EditRequest]) -> None:
        """Tokenise every request before anything runs, so bad input fails before any edit."""
        from massedit.engine.keys import encode_rows
        from massedit.engine.tokens import encode_target

        for i, req in enumerate(reqs):
            name = req.case_id if req.case_id is not None else i
            try:
                encode_rows(self.tok, [req], [""])
                encode_target(self.tok, req.target_new)
            except ValueError as err:
                raise ValueError(f"request {name!r}: {err}") from err

    def _metadata(self, reqs: Sequence[EditRequest]) -> dict[str, Any]:
        return {
            "method": self.method,
            "objective": self.objective_name,
            "distribution": self.distribution_name,
            "preset": self.preset_source,
            "hparams": self.hparams.to_dict(),
            "layers": self.layers,
            "model_type": self.model.config.model_type,
            "model": getattr(self.model.config, "_name_or_path", ""),
            "n_requests": len(reqs),
            "requests_digest": requests_digest(reqs),
            "versions": library_versions(),
        }

    def _edit_batch(self, reqs: list[EditRequest], patch: EditPatch) -> None:
        hp, adapter, layers = self.hparams, self.adapter, self.layers
        moments = self.moments()
        prefixes = self.prefixes()
        patch.metadata["prefixes"] = prefixes
        last_block = adapter.block_name(layers[-1])
        targets = self._targets(reqs, prefixes, last_block)
        patch.metadata.setdefault("target_nll", []).extend(
            [round(float(x), 5) for x in targets.nll])
        for j, layer in enumerate(layers):
            site = adapter.site_name(layer)
            keys, h_now = subject_states(
                self.model, self.tok, reqs, prefixes,
                [Read(site, inputs=True), Read(last_block, inputs=False, average=False)],
                stop_at=last_block, batch_rows=hp.batch_rows,
            )  # (n, d_in), (n, d_model)
            residual = self.distribution.share(targets.z - h_now, j, len(layers) - j)  # (n, d)
            # What the site must write for the stream to move so (a norm or scale after the MLP).
            residual = site_residual(self.model, self.tok, adapter, layer, reqs, residual,
                                     hp.batch_rows)  # (n, d_out), docs/design.md §5
            module = get_module(self.model, site)
            weight = read_weight(module, adapter.layout)  # (d_out, d_in)
            problem = LayerProblem(
                weight=weight.detach(), keys=keys.T.contiguous(), residual=residual.T.contiguous(),
                moment=moments[layer], hparams=hp, layer=layer,
                prior_keys=self._prior_keys.get(layer),
            )
            delta = self.objective.solve(problem).compact()
            if self.keep_problems:
                problem.weight = weight.detach().clone()  # W before the write below
                self.solved.append((problem, delta))
            # Guard, record the original, write, append the SiteDelta (docs/design.md §3).
            write_update(self.model, site, layer, adapter.layout, delta, patch,
                         hp.max_update_ratio)
            prior = self._prior_keys.get(layer)
            self._prior_keys[layer] = problem.keys if prior is None else torch.cat(
                [prior.to(problem.keys.device), problem.keys], dim=1)
            logger.info("layer %d: |ΔW| = %.4g (|W| = %.4g), residual %.4g", layer,
                        float(delta.matrix().norm()), float(weight.detach().float().norm()),
                        float(residual.norm()))

    def _targets(self, reqs, prefixes, last_block) -> TargetResult:
        """Targets per request, from the cache where the same request was optimised before
        (any batch: requests do not interact in the optimisation); the others in one call."""
        hp = self.hparams
        shared = (tuple(prefixes), last_block, hp.v_lr, hp.v_num_grad_steps, hp.kl_factor,
                  hp.v_weight_decay, hp.clamp_norm_factor, hp.early_stop_loss,
                  weights_key(self.model))
        keys = [(requests_digest([r]), *shared) for r in reqs]
        missing = [i for i, key in enumerate(keys) if key not in self.target_cache]
        if missing:
            t0 = time.perf_counter()
            result = compute_targets(self.model, self.tok, [reqs[i] for i in missing], prefixes,
                                     last_block, hp, self.progress)
            share = (time.perf_counter() - t0) / len(missing)
            for i, item in zip(missing, result.split(share), strict=True):
                self.target_cache[keys[i]] = item
        return TargetResult.stack([self.target_cache[key] for key in keys])
