"""The Editor: requests -> targets -> per-layer problems -> objective -> patch (docs/design.md
§3)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from massedit.data.corpus import iter_texts
from massedit.editing.registry import get_distribution, get_method, get_objective, method_preset
from massedit.editing.whole import WholeMethod
from massedit.engine.context import corpus_prefixes, model_prefixes
from massedit.engine.hparams import EditHparams
from massedit.engine.identity import record_write, site_parameter, tensor_identity, weights_identity
from massedit.engine.keys import Read, encode_rows, subject_states
from massedit.engine.linalg import SingularProblemError, gram_products
from massedit.engine.patch import EditPatch
from massedit.engine.post_norm import reachable_change, site_residual
from massedit.engine.problem import BatchPlan, LayerProblem, SecondMoment
from massedit.engine.requests import EditRequest, as_requests, requests_digest
from massedit.engine.tokens import Encoded, encode_target
from massedit.engine.writing import EditError as EditError  # re-exported: massedit.EditError
from massedit.engine.writing import check_sites_on_device, write_update
from massedit.models.adapters import get_adapter, get_module, read_weight
from massedit.models.placement import input_device
from massedit.stats.cache import model_identity
from massedit.stats.moments import StatsSpec, get_moments
from massedit.targets.optimise import TargetResult, compute_targets
from massedit.targets.store import TargetStore
from massedit.version import library_versions

logger = logging.getLogger(__name__)


def shared_key_groups(rows: Sequence[Encoded], names: Sequence[str],
                      encoder_decoder: bool) -> list[tuple[str, ...]]:
    """Names of requests with the same key: the same tokens up to the subject's last (a
    decoder reads nothing after it), or the same whole prompt (an encoder reads all of it)."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for row, name in zip(rows, names, strict=True):
        ids = row.ids if encoder_decoder else row.ids[: row.subject_last + 1]
        groups.setdefault(tuple(ids), []).append(name)
    return [tuple(g) for g in groups.values() if len(g) > 1]


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
        target_store: TargetStore | str | Path | bool | None = None,
        key_chunk: int | None = None,
        **overrides: Any,
    ) -> None:
        self.model, self.tok = model, tok
        self.adapter = get_adapter(model)
        spec = get_method(method)
        self.method = method
        # A whole-editor method runs its own algorithm per batch (editing/whole.py).
        self.whole = None if spec.editor is None else WholeMethod(
            spec, model, objective=objective, distribution=distribution)
        if self.whole is None:
            self.objective_name = objective or spec.objective
            self.distribution_name = distribution or spec.distribution
            self.objective = get_objective(self.objective_name)
            self.distribution = get_distribution(self.distribution_name)
        else:
            self.objective_name = self.distribution_name = self.objective = None
            self.distribution = self.whole  # its layers() are the preset's
        if hparams is None:
            spread = self.distribution_name not in ("single", None)
            preset = method_preset(method, model, spread=spread)
            hparams, self.preset_source = preset.hparams, preset.source
        else:
            self.preset_source = "explicit"
        self.hparams = self._checked(hparams.replace(**overrides) if overrides else hparams)
        if isinstance(stats, str | Path):
            stats = StatsSpec(corpus=str(stats))
        self.stats_spec = stats or StatsSpec()
        self.progress = progress
        # For inspection and tests: every solved LayerProblem (with a copy of W) and its Delta.
        self.keep_problems = keep_problems
        self.solved: list[tuple[LayerProblem, Any]] = []
        # Targets depend on the request, prefixes, last edit layer, target settings and weights
        # only, so studies that vary λ, μ, objectives, earlier layers or the batch size share
        # them. Keys are per request; values are ``CachedTarget``s. ``target_store`` is the
        # second level on disk (True: in the massedit cache; a folder; a TargetStore).
        self.target_cache = target_cache if target_cache is not None else {}
        if target_store is True:
            target_store = TargetStore.default(self.stats_spec.cache_dir)
        elif isinstance(target_store, str | Path):
            target_store = TargetStore(target_store)
        self.target_store: TargetStore | None = target_store or None
        # Requests whose keys are read in one go; None: 4 × batch_rows (rows stay a multiple of
        # batch_rows, so the forward batches are those of reading all keys at once).
        self.key_chunk = key_chunk
        self._moments: dict = {}
        self._stats_record: dict = {}
        self._prefixes: list[str] | None = None
        self._model_key: str | None = None
        self._bar = None  # the targets' progress bar while edit() runs
        # Where the targets of the running edit() came from: computed, or reused (from memory or
        # the disk store) with the seconds they cost when computed; kept in patch metadata.
        self._target_tally = {"computed": 0, "reused": 0, "seconds_reused": 0.0}
        # Kₚ Kₚᵀ (d_in, d_in) fp64 per layer of the keys written so far (docs/design.md §5).
        self._prior_moments: dict[int, torch.Tensor] = {}

    def use_hparams(self, values: dict[str, Any]) -> None:
        """Continue with ``values`` (an ``hparams.to_dict()``, e.g. the settings a resumed run
        started with): every field is replaced, and what was derived from the old settings
        (statistics, prefixes) is dropped. Raises ``ValueError`` for fields this method's
        hyper-parameters do not have."""
        self.hparams = self._checked(self.hparams.replace(**values))
        self._moments, self._stats_record, self._prefixes = {}, {}, None

    def _checked(self, hparams: EditHparams) -> EditHparams:
        """``hparams`` if its edit layers exist in this model, else ``ValueError``."""
        depth = self.adapter.depth(self.model.config)
        if not hparams.layers or any(not 0 <= layer < depth for layer in hparams.layers):
            raise ValueError(f"edit layers {list(hparams.layers)} invalid for {depth} layers")
        return hparams

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
        if self.whole is not None and not self.whole.uses_statistics:
            return self._moments  # empty: nothing reads them
        missing = [layer for layer in self.layers if layer not in self._moments]
        if missing:
            spec = self._resolved_stats_spec()
            found, record = get_moments(self.model, self.tok, missing, spec,
                                        self.stats_tokens(spec.corpus), self.progress)
            # Solves run where the keys are, the input device (a cached moment is read onto
            # the CPU, a fresh one is on its site's device; docs/design.md §12).
            device = input_device(self.model)
            self._moments.update({layer: SecondMoment(m.total.to(device), m.count)
                                  for layer, m in found.items()})
            self._stats_record = record
        return self._moments

    def _resolved_stats_spec(self) -> StatsSpec:
        """The statistics spec with its corpus resolved (the default corpus when none given)."""
        if not self.stats_spec.corpus:
            from massedit.stats.moments import resolve_corpus

            corpus = resolve_corpus(self.stats_spec, self.model, self.tok)
            self.stats_spec = StatsSpec(**{**self.stats_spec.__dict__, "corpus": corpus})
        return self.stats_spec

    def prefixes(self) -> list[str]:
        """Context prefixes, drawn once per editor with the preset's seed and saved in patches."""
        if self._prefixes is None:
            hp = self.hparams
            if not hp.context_lengths:  # the plain prompt only: no text to read
                self._prefixes = [""]
            elif hp.context_source == "model":
                self._prefixes = model_prefixes(self.model, self.tok, hp.context_lengths, hp.seed)
            else:
                corpus = self._resolved_stats_spec().corpus
                texts = []
                for text in iter_texts(corpus, self.model, self.tok, hp.seed):
                    texts.append(text)
                    if sum(len(t) for t in texts) > 50_000:
                        break
                self._prefixes = corpus_prefixes(texts, hp.context_lengths, hp.seed)
        return self._prefixes

    # ---- state carried between sequential batches ------------------------------------------
    def sequential_state(self) -> dict[str, torch.Tensor]:
        """What later batches need of earlier ones, as CPU tensors: per layer, ``Kₚ Kₚᵀ``
        (d_in, d_in) fp64 of the keys written so far (objectives that declare
        ``uses_prior_keys`` see it as ``problem.prior_moment``). Its size does not grow with
        the facts written; run checkpoints save it so a resumed run continues exactly as an
        uninterrupted one."""
        return {f"prior_moment.{layer}": gram.detach().contiguous().cpu()
                for layer, gram in self._prior_moments.items()}

    def restore_sequential_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Continue after the batches that :meth:`sequential_state` described (checkpoints
        that kept the raw keys, ``prior_keys.<layer>`` (d_in, m), are read too)."""
        moments = {}
        for name, tensor in state.items():
            kind, _, layer = name.partition(".")
            if kind == "prior_moment":
                moments[int(layer)] = tensor
            elif kind == "prior_keys":
                moments[int(layer)] = gram_products(tensor)[0]
        self._prior_moments = moments

    def check_batches(self, requests: Iterable[EditRequest | Mapping[str, Any]],
                      batch_size: int | None = None) -> None:
        """Fail before any work (statistics, targets) when the requests cannot be written in
        batches of ``batch_size``: a request that does not tokenise (ValueError), or a batch the
        objective says it cannot solve (:class:`EditError`, e.g. EMMET with more keys than the
        site's input width; the objective's optional ``check_batch``)."""
        if self.whole is None:  # whole editors may write nothing (IKE): checked as they write
            check_sites_on_device(self.model, [self.adapter.site_name(i) for i in self.layers])
        reqs = as_requests(requests)
        rows = self._validate(reqs)
        check = getattr(self.objective, "check_batch", None)
        if check is None or not reqs:
            return
        batch_size = batch_size or len(reqs)
        names = [str(r.case_id) if r.case_id is not None else f"#{i}" for i, r in enumerate(reqs)]
        seq2seq = bool(self.model.config.is_encoder_decoder)
        same: list[tuple[str, ...]] = []
        for lo in range(0, len(reqs), batch_size):
            same += shared_key_groups(rows[lo : lo + batch_size], names[lo : lo + batch_size],
                                      seq2seq)
        d_in = min(read_weight(get_module(self.model, self.adapter.site_name(layer)),
                               self.adapter.layout).shape[1] for layer in self.layers)
        reason = check(BatchPlan(min(batch_size, len(reqs)), d_in, tuple(same), self.hparams))
        if reason:
            raise EditError(f"cannot edit: {reason}")

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
        batch_size = batch_size or len(reqs)
        self.check_batches(reqs, batch_size)
        patch = EditPatch(metadata=self._metadata(reqs))
        t0 = time.perf_counter()
        prior_moments = dict(self._prior_moments)
        self._target_tally = {"computed": 0, "reused": 0, "seconds_reused": 0.0}
        # One bar over every target of the call (sequential batches compute theirs in turn).
        self._bar = tqdm(total=len(reqs), desc="targets", unit="target", leave=False,
                         disable=not self.progress or self.whole is not None)
        try:
            for b, lo in enumerate(range(0, len(reqs), batch_size)):
                self._edit_batch(reqs[lo : lo + batch_size], patch)
                if on_batch_done is not None:
                    on_batch_done(b, patch)
        except BaseException:
            patch.revert(self.model)  # the model is left exactly as it was
            self._prior_moments = prior_moments  # and so is what later batches will protect
            raise
        finally:
            self._bar.close()
            self._bar = None
        patch.metadata["seconds"] = round(time.perf_counter() - t0, 3)
        patch.metadata["stats"] = self._stats_record
        patch.metadata["targets"] = {**self._target_tally, "seconds_reused": round(
            self._target_tally["seconds_reused"], 3)}
        return patch

    def _validate(self, reqs: Sequence[EditRequest]) -> list[Encoded]:
        """Tokenise every request before anything runs, so bad input fails before any edit;
        returns each plain prompt's tokens."""
        rows = []
        for i, req in enumerate(reqs):
            name = req.case_id if req.case_id is not None else i
            try:
                rows += encode_rows(self.tok, [req], [""])
                encode_target(self.tok, req.target_new)
            except ValueError as err:
                raise ValueError(f"request {name!r}: {err}") from err
        return rows

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
        if self.whole is not None:
            return self.whole.edit_batch(self, reqs, patch)
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
            problem = self._problem(reqs, prefixes, targets.z, j, layer, moments[layer])
            try:
                delta = self.objective.solve(problem).compact()
            except SingularProblemError as err:  # said before this layer writes anything
                raise EditError(f"layer {layer} ({site}) cannot be solved: {err}; the model "
                                "was restored") from err
            param = site_parameter(self.model, site)
            before = tensor_identity(param)
            if self.keep_problems:
                problem.weight = problem.weight.clone()  # W before the write below
                self.solved.append((problem, delta))
            # Guard, record the original, write, append the SiteDelta (docs/design.md §3).
            write_update(self.model, site, layer, adapter.layout, delta, patch,
                         hp.max_update_ratio, moment=moments[layer], ridge=hp.moment_ridge)
            record_write(param, before, delta)  # the weights' new identity, without hashing
            if getattr(self.objective, "uses_prior_keys", False):
                gram = problem.key_gram()  # (d_in, d_in): all later batches need of these keys
                prior = self._prior_moments.get(layer)
                self._prior_moments[layer] = gram if prior is None else prior.to(gram) + gram
            logger.info("layer %d: |ΔW| = %.4g (|W| = %.4g), residual %.4g", layer,
                        float(delta.matrix().norm()), float(problem.weight.float().norm()),
                        float(problem.residual.norm()))

    def _problem(self, reqs: list[EditRequest], prefixes: list[str], z: torch.Tensor, j: int,
                 layer: int, moment) -> LayerProblem:
        """Layer ``layer``'s problem on the current (partly edited) model. Keys and block-L
        outputs are read ``key_chunk`` requests at a time, so the per-row states (requests ×
        prefixes × d_in) never exist at once; keys go straight into K (docs/design.md §3)."""
        hp, adapter = self.hparams, self.adapter
        site, last_block = adapter.site_name(layer), adapter.block_name(self.layers[-1])
        weight = read_weight(get_module(self.model, site), adapter.layout)  # (d_out, d_in)
        n, chunk = len(reqs), self.key_chunk or 4 * hp.batch_rows
        keys = None
        h_now = torch.empty_like(z)  # (n, d_model)
        for lo in range(0, n, chunk):
            k, h = subject_states(
                self.model, self.tok, reqs[lo : lo + chunk], prefixes,
                [Read(site, inputs=True), Read(last_block, inputs=False, average=False)],
                stop_at=last_block, batch_rows=hp.batch_rows,
            )  # (c, d_in), (c, d_model)
            if keys is None:
                keys = k.new_empty(k.shape[1], n)  # (d_in, n)
            keys[:, lo : lo + len(k)] = k.T
            h_now[lo : lo + len(h)] = h
        residual = self.distribution.share(z - h_now, j, len(self.layers) - j)  # (n, d_model)
        # What the site must write for the stream to move so (a norm or scale after the MLP).
        residual = site_residual(self.model, self.tok, adapter, layer, reqs, residual,
                                 hp.batch_rows)  # (n, d_out), docs/design.md §5
        prior = self._prior_moments.get(layer)
        return LayerProblem(
            weight=weight.detach(), keys=keys, residual=residual.T.contiguous(), moment=moment,
            hparams=hp, layer=layer, prior_moment=None if prior is None else prior.to(keys.device),
        )

    def _targets(self, reqs, prefixes, last_block) -> TargetResult:
        """Targets per request: from the in-memory cache, else the disk store, where the same
        request was optimised before on the same weights (any batch: requests do not interact
        in the optimisation); the others one group at a time, each group stored as soon as it
        is done, so an interruption loses at most one group's work (docs/design.md §11)."""
        hp = self.hparams
        # Behind a norm the targets are optimised over the site's output (docs/design.md §5):
        # they differ in kind from stream targets, so the key says which they are.
        normed = self.adapter.mlp_out_norm_name(self.layers[-1]) is not None
        shared = (tuple(prefixes), last_block, hp.v_lr, hp.v_num_grad_steps, hp.kl_factor,
                  hp.v_weight_decay, hp.clamp_norm_factor, hp.early_stop_loss,
                  weights_identity(self.model), *(("site-space",) if normed else ()))
        keys = [(requests_digest([r]), *shared) for r in reqs]
        missing = [i for i, key in enumerate(keys) if key not in self.target_cache]
        stored = {i: self._store_key(keys[i]) for i in missing} if self.target_store else {}
        device = input_device(self.model)  # where the targets' rows live (§12)
        loaded = set()
        for i, name in stored.items():
            found = self.target_store.get(name, device)
            if found is not None:
                self.target_cache[keys[i]] = found
                loaded.add(i)
        missing = [i for i in missing if i not in loaded]
        absent = set(missing)
        reused = [i for i in range(len(keys)) if i not in absent]
        self._target_tally["reused"] += len(reused)
        self._target_tally["computed"] += len(missing)
        self._target_tally["seconds_reused"] += sum(self.target_cache[keys[i]].seconds
                                                    for i in reused)
        bar = self._bar
        if bar is not None:
            bar.update(len(reqs) - len(missing))
        # One call over every missing request, so that groups are formed from all of them (by
        # suffix length); each group is kept (memory and disk) as soon as it is done.
        clock = [time.perf_counter()]

        def keep(idx: list[int], part: TargetResult) -> None:
            now = time.perf_counter()
            share = (now - clock[0]) / len(idx)
            clock[0] = now
            for j, item in zip(idx, part.split(share), strict=True):
                i = missing[j]
                self.target_cache[keys[i]] = item
                if self.target_store is not None:
                    self.target_store.put(stored[i], item)
            if bar is not None:
                bar.update(len(idx))

        if missing:
            todo = [reqs[i] for i in missing]
            reach = reachable_change(self.model, self.tok, self.adapter, self.layers, todo,
                                     hp.batch_rows)  # None unless a norm follows the MLP
            compute_targets(self.model, self.tok, todo, prefixes, last_block, hp,
                            progress=False, on_group_done=keep, reach=reach)
        return TargetResult.stack([self.target_cache[key] for key in keys])

    def _store_key(self, key: tuple) -> str:
        """The disk key: the in-memory key plus the model (and tokenizer) it belongs to."""
        if self._model_key is None:
            self._model_key = (f"{model_identity(self.model)}|{type(self.tok).__name__}"
                               f"|{len(self.tok)}")
        return TargetStore.key([self._model_key, list(key)])
