"""Batched corrupted runs: many restorations x noise samples in the batch dimension of one pass.

A *restoration* is a set of ``(module name, token)`` states copied from the clean run into the
corrupted run. A chunk of ``m`` restorations runs as ``m * samples`` rows, restoration-major
(row ``j * samples + s`` is restoration ``j`` under noise sample ``s``); every row gets the same
subject noise as its sample in every other restoration, so restorations differ only in what they
restore. Hooks patch each site's output at the rows and tokens of the restorations that name it.

Blocks below a chunk's lowest restored layer compute exactly what the plain corrupted run computes,
so that run is recorded once and replayed (:func:`~massedit.engine.hooks.replay_blocks`): a
restoration at
layer ``l`` costs the blocks from ``l`` up, not the whole model.

A chunk that does not fit in memory is retried at half the size, down to one restoration.

The noise goes into the first call of the embedding module in each forward pass: the only call
in a decoder-only model, the encoder's in an encoder-decoder model whose stacks share one
embedding (the encoder runs first), so the decoder's own inputs stay clean.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from massedit.engine.forward import forward_kwargs, model_device
from massedit.engine.hooks import edit_output, first_output, record_block_outputs, replay_blocks
from massedit.targets.passes import head_logits
from massedit.targets.suffix import (
    block_value,
    cache_of,
    map_cache,
    plan_suffix,
    suffix_hidden,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Restoration:
    """States restored from the clean run: ``(module name, token position)`` pairs."""

    patches: tuple[tuple[str, int], ...]
    first_layer: int  # the lowest layer a patch touches; blocks below it are left corrupted


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA/MPS/CPU allocation failures, which a smaller batch may avoid."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(err, oom_type):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


class CorruptedRunner:
    """Runs a model on one tokenised fact with its subject embeddings noised.

    ``clean`` maps each site name that restorations may name to its clean output ``(T, d)``;
    ``noise`` is ``(samples, n_subject_tokens, d)``.
    """

    def __init__(
        self,
        model,
        inputs: dict[str, torch.Tensor],  # a batch of one, e.g. input_ids (1, T)
        answer_ids: Sequence[int],
        subject_range: tuple[int, int],
        clean: dict[str, torch.Tensor],
        noise: torch.Tensor,
        *,
        embed_name: str,
        layers_path: str,
        reuse_prefix: bool = True,
        keep_logits: bool = True,
        suffix: bool = True,
    ) -> None:
        self.model = model
        self.device = model_device(model)
        self.inputs = {k: v.to(self.device) for k, v in inputs.items()}
        self.n_answer = len(answer_ids)
        self.answer_ids = torch.tensor(list(answer_ids), dtype=torch.long)  # (t,)
        self.keep_logits = keep_logits
        self.subject_range = subject_range
        self.clean = clean
        self.noise = noise
        self.samples = noise.shape[0]
        self.embed_name = embed_name
        self.layers_path = layers_path
        self.reuse_prefix = reuse_prefix
        self._prefix: dict | None = None  # corrupted block outputs, recorded on first use
        # Positions before a restoration's first token are the corrupted run's at every layer:
        # with ``suffix``, passes run from that token on, reading the earlier positions' keys
        # and values from the corrupted run (checked once against full rows).
        self.suffix = suffix and reuse_prefix
        self._cache = None  # the corrupted run's key/value cache (samples rows)
        self._suffix_checked = False
        self.forward_passes = 0

    # ---- one forward pass ------------------------------------------------------------------
    def _add_noise(self, m: int):
        lo, hi = self.subject_range

        calls = [0]  # a fresh hook per forward pass: only its first call is noised

        def fn(emb: torch.Tensor) -> torch.Tensor:  # (m * samples, T, d)
            calls[0] += 1
            if calls[0] > 1:
                return emb
            noise = self.noise.to(dtype=emb.dtype, device=emb.device).repeat(m, 1, 1)
            emb = emb.clone()
            emb[:, lo:hi] += noise  # (m * samples, n_subject, d)
            return emb

        return fn

    @staticmethod
    def _restore(rows: torch.Tensor, toks: torch.Tensor, clean: torch.Tensor,
                 slots: torch.Tensor | None = None):
        """Write the clean states of tokens ``toks`` at ``slots`` (default: the same positions)."""
        slots = toks if slots is None else slots

        def fn(out: torch.Tensor) -> torch.Tensor:  # (rows, T or S, d)
            out = out.clone()
            out[rows.to(out.device), slots.to(out.device)] = clean[toks].to(out.dtype)
            return out

        return fn

    @staticmethod
    def _per_site(chunk: Sequence[Restoration], s: int) -> dict[str, tuple[torch.Tensor, ...]]:
        """Each restored site's (rows, tokens) in a chunk of ``len(chunk) * s`` rows."""
        per_site: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for j, restoration in enumerate(chunk):
            for name, token in restoration.patches:
                per_site[name].append((j, token))
        return {
            name: (torch.tensor([j * s + k for j, _ in pairs for k in range(s)]),
                   torch.tensor([t for _, t in pairs for _ in range(s)]))
            for name, pairs in per_site.items()
        }

    def _forward(self, chunk: Sequence[Restoration], start: int) -> torch.Tensor:
        """(len(chunk),) answer probability per restoration, averaged over noise samples."""
        m, s = len(chunk), self.samples
        if start > 0 and self.suffix:
            if not self._suffix_checked:
                return self._check_suffix(chunk, start)
            probs = self._suffix_forward(chunk, start)
            if probs is not None:
                return probs
        with ExitStack() as stack:
            stack.enter_context(edit_output(self.model, self.embed_name, self._add_noise(m)))
            if start > 0:
                prefix = self._corrupted_prefix()
                recorded = {i: prefix[i] for i in range(start)}
                value = first_output(prefix[start - 1]).repeat(m, 1, 1)  # (m * samples, T, d)
                stack.enter_context(replay_blocks(self.model, self.layers_path, recorded, value))
            for name, (rows, toks) in self._per_site(chunk, s).items():
                stack.enter_context(
                    edit_output(self.model, name, self._restore(rows, toks, self.clean[name]))
                )
            probs = self._answer_prob(m * s)  # (m * samples,)
        return probs.view(m, s).mean(1)

    def _check_suffix(self, chunk: Sequence[Restoration], start: int) -> torch.Tensor:
        """Run a chunk both ways, once: suffix passes stay on only if they match full rows."""
        try:
            fast = self._suffix_forward(chunk, start)
        except Exception as err:  # noqa: BLE001 - a model the shortcut does not fit
            logger.info("trace: every position runs (prefix cache not usable: %s)", err)
            self.suffix = False
            return self._forward(chunk, start)
        self.suffix = False  # the reference: full rows
        full = self._forward(chunk, start)
        if fast is None:  # nothing to skip in this chunk; check on the next one
            self.suffix = True
            return full
        self._suffix_checked = True
        gap = float((fast - full).abs().max())
        tol = 1e-5 if next(self.model.parameters()).dtype == torch.float32 else 1e-2
        self.suffix = gap <= tol
        if self.suffix:
            logger.debug("trace: passes run from each restoration's first token on")
        else:
            logger.info("trace: every position runs (suffix pass differs by %.2g)", gap)
        return full

    def _suffix_forward(self, chunk: Sequence[Restoration], start: int) -> torch.Tensor | None:
        """:meth:`_forward` on each row's positions from its first restored token on (the
        answer positions at least); None when no position can be skipped."""
        m, s = len(chunk), self.samples
        prefix = self._corrupted_prefix()
        ids = self.inputs["input_ids"]  # (1, T)
        n_tokens, t = ids.shape[1], self.n_answer
        first = [min(min(tok for _, tok in r.patches), n_tokens - t) for r in chunk]
        split = torch.tensor(first, device=self.device).repeat_interleave(s)  # (m * s,)
        rows = torch.arange(m * s, device=self.device)
        answer_rows = rows.repeat_interleave(t)  # (m * s * t,)
        answer_pos = (n_tokens - t + torch.arange(t, device=self.device)).repeat(m * s)
        batch = {"input_ids": ids.expand(m * s, -1),
                 "attention_mask": torch.ones(m * s, n_tokens, dtype=torch.long,
                                              device=self.device)}
        cache = map_cache(self._cache, lambda kv: kv.repeat(m, 1, 1, 1))  # (m * s, h, T, d)
        plan = plan_suffix(cache, batch, split, [(answer_rows, answer_pos)])
        if plan is None:
            return None
        recorded = {i: prefix[i] for i in range(start)}
        value = block_value(plan, first_output(prefix[start - 1]).repeat(m, 1, 1))  # (m * s, S, d)
        with ExitStack() as stack:
            stack.enter_context(replay_blocks(self.model, self.layers_path, recorded, value))
            for name, (site_rows, toks) in self._per_site(chunk, s).items():
                slots = toks - split.cpu()[site_rows]
                stack.enter_context(edit_output(
                    self.model, name, self._restore(site_rows, toks, self.clean[name], slots)))
            self.forward_passes += 1
            hidden = suffix_hidden(self.model, plan)  # (m * s, S, d)
        picked_rows, picked_pos = plan.picks[0]
        logits = head_logits(self.model, hidden[picked_rows, picked_pos])  # (m * s * t, vocab)
        return self._mean_answer_prob(logits.view(m * s, t, -1)).view(m, s).mean(1)

    def _answer_prob(self, rows: int, keep_cache: bool = False) -> torch.Tensor:
        """(rows,) exp(mean log p(answer tokens)) for each row of the (hooked) model; with
        ``keep_cache`` the pass's key/value cache is kept for suffix passes."""
        kwargs: dict = {k: v.expand(rows, -1) for k, v in self.inputs.items()}
        kwargs["use_cache"] = keep_cache
        keep_name = forward_kwargs(self.model)[1] if self.keep_logits else None
        if keep_name is not None:
            kwargs[keep_name] = self.n_answer  # only the answer positions reach the vocabulary
        self.forward_passes += 1
        out = self.model(**kwargs)
        if keep_cache:
            self._cache = cache_of(out)
        return self._mean_answer_prob(out.logits[:, -self.n_answer :])  # (rows,)

    def _mean_answer_prob(self, logits: torch.Tensor) -> torch.Tensor:
        """(rows, t, vocab) logits at the answer positions -> (rows,) exp(mean log p(answer))."""
        logp = logits.float().log_softmax(-1)
        target = self.answer_ids.to(logp.device).expand(logp.shape[0], -1)[..., None]
        return logp.gather(-1, target).squeeze(-1).mean(-1).exp().cpu()  # (rows,)

    def _corrupted_prefix(self) -> dict:
        """Every block's output in the unrestored corrupted run (``samples`` rows, kept)."""
        if self._prefix is None:
            self.corrupted_probability()
        return self._prefix  # type: ignore[return-value]

    def corrupted_probability(self) -> float:
        """P(answer) with the subject noised and nothing restored (also records the prefix)."""
        depth = len(self.model.get_submodule(self.layers_path))
        with ExitStack() as stack:
            stack.enter_context(edit_output(self.model, self.embed_name, self._add_noise(1)))
            seen = stack.enter_context(
                record_block_outputs(self.model, self.layers_path, depth - 1)
            )
            probs = self._answer_prob(self.samples, keep_cache=self.suffix)
        self._prefix = dict(seen)
        return float(probs.mean())

    # ---- many restorations -----------------------------------------------------------------
    @torch.no_grad()
    def probabilities(self, restorations: Sequence[Restoration], batch_size: int) -> torch.Tensor:
        """(n,) P(answer) after each restoration; ``batch_size`` restorations per forward pass."""
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        # Restorations that start at the same layer share a replayed prefix.
        order = sorted(range(len(restorations)), key=lambda i: restorations[i].first_layer)
        out = torch.empty(len(restorations))
        pos, size = 0, batch_size
        while pos < len(order):
            idx = order[pos : pos + size]
            chunk = [restorations[i] for i in idx]
            start = min(r.first_layer for r in chunk) if self.reuse_prefix else 0
            try:
                out[idx] = self._forward(chunk, start)
            except (RuntimeError, MemoryError) as err:
                if size == 1 or not (isinstance(err, MemoryError) or is_out_of_memory(err)):
                    raise
                size = max(1, size // 2)
                logger.warning(
                    "out of memory with %d restorations x %d samples per pass; retrying with %d",
                    len(chunk), self.samples, size,
                )
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            pos += len(idx)
        return out
