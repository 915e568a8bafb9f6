"""One pass over a corpus that sums ``k kᵀ`` at every requested site, sharded and resumable.

How the pass reads the corpus, so that P processes give the same sums as one:

- Each text is tokenised on its own (with the tokenizer's special tokens, as edit keys are) and
  cut into rows of at most ``max_length`` tokens; no row mixes two texts.
- Texts are numbered in corpus order; with P processes, process r reads texts r, r+P, r+2P...
  (the shard ``iter_texts`` gives it). The pass moves in lockstep steps of ``m`` texts per
  process; at each step the processes share their texts' lengths (one small all-gather), so every
  process knows which tokens fall inside the global budget: the first ``tokens`` tokens in corpus
  order, the last text cut where the budget ends.
- Per batch of rows: one forward pass that captures every site's input
  (:func:`~massedit.engine.hooks.capture`) and stops after the deepest site; then ``kᵀ k`` over
  the batch's real tokens is added into a ``(d_in, d_in)`` sum on the site's device (``addmm_``
  on the block upper triangle, since the matrix is symmetric: no per-token outer products are
  ever materialised).
- At the end the sums are added over processes (all-reduce).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from massedit.engine.hooks import capture, run_until, stop_after
from massedit.engine.precision import check_finite, half_dtype
from massedit.engine.problem import SecondMoment
from massedit.models.adapters import get_module
from massedit.models.placement import execution_device, input_device
from massedit.stats.cache import StatsSpec
from massedit.stats.checkpoint import Checkpointer, PassProgress
from massedit.stats.distributed import Dist

logger = logging.getLogger(__name__)
TEXTS_PER_BATCH = 4  # texts read per step = this × batch_size: rows are sorted by length within
# a step, so a few batches' worth of texts keep the padding small


@dataclass
class PassResult:
    moments: dict[str, SecondMoment]
    rank_tokens: list[int]  # tokens counted by each process
    resumed_at: int = 0  # tokens restored from a checkpoint (0: started afresh)


def model_max_length(model) -> int:
    """Longest sequence the model's position embeddings allow."""
    cfg = model.config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value:
            return int(value)
    return 1 << 30


def budget_cut(lengths: torch.Tensor, remaining: int) -> torch.Tensor:
    """Tokens taken from each text of a step, in corpus order, until ``remaining`` runs out.

    ``lengths`` is (world, m): process r's j-th text of the step is corpus text j·world + r (plus
    the step's offset), so corpus order is j-major. Missing texts (-1) take nothing."""
    world, m = lengths.shape
    order = lengths.clamp_min(0).T.reshape(-1)  # (m·world,) in corpus order
    before = order.cumsum(0) - order
    take = (remaining - before).clamp_min(0).minimum(order)
    return take.reshape(m, world).T  # (world, m)


def text_rows(ids: Sequence[int], max_length: int) -> list[list[int]]:
    """One text's token ids cut into rows of at most ``max_length``."""
    return [list(ids[i : i + max_length]) for i in range(0, len(ids), max_length)]


def _read_step(tok, texts: Iterator[str], m: int) -> list[list[int]]:
    chunk = list(itertools.islice(texts, m))
    if not chunk:
        return []
    return [list(ids) for ids in tok(chunk)["input_ids"]]


def _step_rows(tok, texts: Iterator[str], m: int, remaining: int, max_length: int,
               dist: Dist) -> tuple[list[list[int]], torch.Tensor | None]:
    """This process's rows for the next step, and every process's token count in it
    ((world,); None once every shard is exhausted)."""
    encoded = _read_step(tok, texts, m)
    lengths = torch.full((m,), -1, dtype=torch.long)
    lengths[: len(encoded)] = torch.tensor([len(ids) for ids in encoded], dtype=torch.long)
    every = dist.all_gather(lengths)  # (world, m)
    if bool((every < 0).all()):
        return [], None
    take = budget_cut(every, remaining)  # (world, m)
    rows = [row for ids, n in zip(encoded, take[dist.rank].tolist(), strict=False) if n
            for row in text_rows(ids[:n], max_length)]
    return rows, take.sum(1)


def _batches(rows: list[list[int]], batch_size: int) -> Iterator[list[list[int]]]:
    """Rows sorted by length, then cut into batches: little padding."""
    rows = sorted(rows, key=len, reverse=True)
    for i in range(0, len(rows), batch_size):
        yield rows[i : i + batch_size]


def row_batches(tok, texts: Iterable[str], tokens: int, max_length: int,
                batch_size: int) -> Iterator[list[list[int]]]:
    """The batches of rows a one-process pass runs (for benchmarks against a plain forward)."""
    it, done = iter(texts), 0
    while done < tokens:
        rows, counts = _step_rows(tok, it, TEXTS_PER_BATCH * batch_size, tokens - done,
                                  max_length, Dist())
        if counts is None:
            return
        done += int(counts.sum())
        yield from _batches(rows, batch_size)


def _site_width(module) -> int:
    if hasattr(module, "in_features"):  # nn.Linear
        return int(module.in_features)
    if hasattr(module, "nx"):  # GPT-2's Conv1D
        return int(module.nx)
    return int(module.weight.shape[-1])


def row_blocks(d: int, block: int = 128) -> list[tuple[int, int]]:
    """Row blocks of a ``(d, d)`` sum: at least ``block`` rows each, at most 8 blocks."""
    n = max(1, min(8, d // block))
    edges = [round(i * d / n) for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def add_gram_upper_(total: torch.Tensor, k: torch.Tensor, blocks: list[tuple[int, int]]) -> None:
    """``total += kᵀ k`` on the block upper triangle only (row block i, columns from i on).

    ``kᵀ k`` is symmetric: the blocks below the diagonal repeat the ones above, so skipping them
    saves up to half the work (8 blocks: 0.62× the time of one full ``addmm_`` at
    d_in = 1536, measured on one CPU thread); :func:`symmetrised`
    fills them in once at the end. k: (tokens, d_in); total: (d_in, d_in)."""
    for r0, r1 in blocks:
        total[r0:r1, r0:].addmm_(k[:, r0:r1].T, k[:, r0:])


def symmetrised(upper: torch.Tensor, blocks: list[tuple[int, int]]) -> torch.Tensor:
    """The full symmetric matrix from its block upper triangle (diagonal blocks are full)."""
    strict = upper.clone()
    for r0, r1 in blocks:
        strict[r0:r1, r0:r1] = 0
        strict[r0:r1, :r0] = 0
    return upper + strict.T


def accumulate_gram_(total: torch.Tensor, blocks: list[tuple[int, int]], x: torch.Tensor,
                     mask: torch.Tensor) -> None:
    """``total += kᵀ k`` over the real tokens of a site's input ``x`` (..., d_in), ``mask``
    marking them in ``x``'s flattened leading dimensions; cast to the sum's device and dtype.
    Corpus passes and parallel-text passes (pair edits) both sum this way."""
    k = x.reshape(-1, x.shape[-1])[mask.to(x.device)]  # (tokens, d_in)
    add_gram_upper_(total, k.to(device=total.device, dtype=total.dtype), blocks)


class _SiteSums:
    """``kᵀ k`` at every site, read with the engine's :func:`~massedit.engine.hooks.capture`;
    each forward pass stops after the deepest site, so nothing above it runs.

    ``sums`` hold the block upper triangle only (see :func:`add_gram_upper_`); checkpoints store
    them as they are and :meth:`full` gives the symmetric matrices. Hooks exist only during
    :meth:`run`, so other passes (e.g. the model writing its own corpus, ``"self"``) are not
    counted."""

    def __init__(self, model, sites: Sequence[str], dtype: torch.dtype) -> None:
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        unknown = [s for s in sites if s not in order]
        if unknown:
            raise ValueError(f"no module named {unknown} in this model")
        self.sites = list(sites)
        self.deepest = max(sites, key=lambda s: order[s])
        self.sums: dict[str, torch.Tensor] = {}
        self.blocks: dict[str, list[tuple[int, int]]] = {}
        for site in sites:
            module = get_module(model, site)
            d_in, device = _site_width(module), execution_device(module)  # §12: split models
            self.sums[site] = torch.zeros(d_in, d_in, dtype=dtype, device=device)
            self.blocks[site] = row_blocks(d_in)

    def restore(self, saved: dict[str, torch.Tensor]) -> None:
        for site, total in saved.items():
            self.sums[site].copy_(total)

    def run(self, model, batch: list[list[int]], pad_id: int, device) -> None:
        from massedit.engine.tokens import pad_right

        enc = pad_right(batch, pad_id, device)
        if model.config.is_encoder_decoder:  # decoder sites see the same text, teacher-forced
            enc["decoder_input_ids"] = enc["input_ids"]
            enc["decoder_attention_mask"] = enc["attention_mask"]
        mask = enc["attention_mask"].reshape(-1).bool()  # (batch·seq,)
        # capture is entered first, so its hook on the deepest site records before the stop.
        with capture(model, self.sites, inputs=True) as seen, stop_after(model, self.deepest):
            run_until(model, enc)
        for site in self.sites:
            accumulate_gram_(self.sums[site], self.blocks[site], seen[site], mask)

    def full(self, site: str) -> torch.Tensor:
        return symmetrised(self.sums[site], self.blocks[site])

    def check_finite(self, half: torch.dtype | None) -> None:
        """In a half-precision model, inf/NaN sums are an overflow of its forward passes
        (docs/design.md §1): raise, naming it, rather than store them."""
        for site, total in self.sums.items():
            check_finite(half, total, "the statistics pass", f"the key sums kᵀk at {site} "
                         "(forward passes up to it)")


@torch.no_grad()
def collect_moments(
    model, tok, sites: Sequence[str], texts: Iterable[str], tokens: int, spec: StatsSpec, *,
    dist: Dist | None = None, checkpointer: Checkpointer | None = None, progress: bool = True,
) -> PassResult:
    """Sums of ``k kᵀ`` at every site over the first ``tokens`` tokens of the corpus.

    ``texts`` is this process's shard. With a ``checkpointer`` the pass resumes from its last
    checkpoint and writes new ones as it goes (every process must pass one alike)."""
    from massedit.engine.tokens import pad_id_of

    dist = dist or Dist()
    device = input_device(model)
    max_length = min(spec.max_length, model_max_length(model))
    m = TEXTS_PER_BATCH * spec.batch_size
    state = PassProgress(rank_tokens=[0] * dist.world)
    acc = _SiteSums(model, sites, getattr(torch, spec.dtype))
    half = half_dtype(model)  # fp16/bf16 overflow is named before a checkpoint or file is written
    it = iter(texts)
    restored = checkpointer.load(dist) if checkpointer is not None else None
    if restored is not None:
        state, saved = restored
        acc.restore(saved)
        for _ in itertools.islice(it, state.texts_done):  # this shard's texts already counted
            pass
        if dist.is_main:
            logger.info("resuming from checkpoint at %d of %d tokens", state.tokens_done, tokens)
    resumed_at = state.tokens_done
    bar = tqdm(total=tokens, initial=state.tokens_done, desc="statistics", unit="tok",
               disable=not (progress and dist.is_main), leave=False)
    try:
        while state.tokens_done < tokens:
            rows, counts = _step_rows(tok, it, m, tokens - state.tokens_done, max_length, dist)
            if counts is None:
                break
            for batch in _batches(rows, spec.batch_size):
                acc.run(model, batch, pad_id_of(tok), device)
            before = state.tokens_done
            state.texts_done += m
            state.tokens_done += int(counts.sum())
            state.rank_tokens = [a + int(b) for a, b in zip(state.rank_tokens, counts.tolist(),
                                                            strict=True)]
            bar.update(state.tokens_done - before)
            if (checkpointer is not None and state.tokens_done < tokens
                    and checkpointer.due(before, state.tokens_done)):
                if dist.world == 1:  # one rank raising before the others' collective would hang
                    acc.check_finite(half)
                checkpointer.save(state, acc.sums, dist)
    finally:
        bar.close()
    for total in acc.sums.values():
        dist.all_reduce_(total)
    acc.check_finite(half)  # reduced sums: every rank raises alike
    if state.tokens_done == 0:
        raise ValueError("the statistics corpus gave no tokens")
    if state.tokens_done < tokens and dist.is_main:
        logger.warning("the corpus ran out: %d of the %d tokens asked for were collected "
                       "(recorded as such)", state.tokens_done, tokens)
    moments = {s: SecondMoment(acc.full(s), state.tokens_done) for s in sites}
    return PassResult(moments, state.rank_tokens, resumed_at)


def accumulate_moments(
    model, tok, sites: Sequence[str], texts: Iterable[str], tokens: int, spec: StatsSpec,
    progress: bool = True,
) -> dict[str, SecondMoment]:
    """One process, no checkpoints: the moments of ``sites`` over ``tokens`` tokens of ``texts``."""
    return collect_moments(model, tok, sites, texts, tokens, spec, progress=progress).moments
