"""Above the edit block, run only the positions δ can change (docs/design.md §11).

δ is added to block ``L``'s output at each row's subject token ``s``. Positions before ``s`` never
see it (attention is causal), so at every optimisation step their keys and values in the blocks
above ``L`` are the ones the first, unedited pass computed. A :class:`SuffixPlan` keeps those
keys and values as a prefix cache and feeds the model only each row's suffix ``s..end``:

    row r:   [ pad … pad | k/v of positions 0..s_r-1 ]  [ tokens s_r .. end | pad … ]
              prefix cache, left-padded to P               suffix, right-padded to S

The suffix tokens keep their real position ids, and the attention mask hides both paddings, so
the logits are those of the full rows. Whether that holds for a model (sliding windows, caches
of other shapes, older transformers) is not assumed: :func:`plan_suffix` is followed by a check
that the suffix pass reproduces the full pass's logits, and the caller falls back to full rows
when it does not.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from massedit.models.placement import input_device

Picks = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class SuffixPlan:
    cache: object  # transformers Cache: every layer's keys/values of the prefixes, (rows, h, P, d)
    batch: dict[str, torch.Tensor]  # input_ids (rows, S), attention_mask (rows, P+S), position_ids
    take: torch.Tensor  # (rows, S) position in the full row of each suffix slot (clamped)
    picks: Picks  # the caller's (rows, positions) picks in suffix coordinates
    prefix_len: int  # P
    full_len: int  # T, the full rows' padded length
    row_index: torch.Tensor | None = None  # (rows',) the group's rows this plan runs; None: all

    @property
    def suffix_len(self) -> int:
        return int(self.take.shape[1])

    def select(self, keep: torch.Tensor) -> tuple[SuffixPlan, list[torch.Tensor]]:
        """The plan for the rows where ``keep`` (rows,) is set (requests that stopped leave the
        batch), and for each pick list, which of its entries it still computes."""
        renumber = torch.cumsum(keep, 0) - 1  # (rows,) new index of each kept row
        picks, kept = [], []
        for rows, pos in self.picks:
            survives = keep[rows]
            picks.append((renumber[rows[survives]], pos[survives]))
            kept.append(survives)
        plan = SuffixPlan(
            cache=map_cache(self.cache, lambda kv: kv[keep.to(kv.device)]),
            batch={name: value[keep] for name, value in self.batch.items()},
            take=self.take[keep], picks=picks, prefix_len=self.prefix_len,
            full_len=self.full_len, row_index=keep.nonzero()[:, 0],
        )
        return plan, kept


def map_cache(cache, fn: Callable[[torch.Tensor], torch.Tensor]):
    """A copy of ``cache`` with ``fn`` applied to every layer's keys and values."""
    # Shallow copies: the tensors are replaced, never written into (they may still be part of
    # the first pass's autograd graph, which deepcopy refuses).
    new = copy.copy(cache)
    if hasattr(new, "layers"):  # transformers >= 4.56: one object per layer
        new.layers = [copy.copy(layer) for layer in cache.layers]
        for layer in new.layers:
            layer.keys, layer.values = fn(layer.keys), fn(layer.values)
            if hasattr(layer, "cumulative_length"):  # sliding-window layers count positions
                layer.cumulative_length = layer.keys.shape[-2]
    else:  # older DynamicCache: parallel lists
        new.key_cache = [fn(k) for k in cache.key_cache]
        new.value_cache = [fn(v) for v in cache.value_cache]
        if hasattr(new, "_seen_tokens") and new.key_cache:  # the length some versions track
            new._seen_tokens = new.key_cache[0].shape[-2]
    return new


def cache_of(output):
    """The key/value cache of a model output (``cache`` in transformers 5, else
    ``past_key_values``)."""
    found = getattr(output, "cache", None)
    return found if found is not None else output.past_key_values


def _cache_kwarg(model) -> str:
    """The name the model's forward takes a cache under (``cache`` since transformers 5)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def plan_suffix(
    full_cache, batch: dict[str, torch.Tensor], subj_pos: torch.Tensor, picks: Picks
) -> SuffixPlan | None:
    """Plan suffix-only passes for right-padded ``batch`` whose unedited pass left ``full_cache``.

    Returns None when nothing would be saved (every subject is the first token).
    """
    mask = batch["attention_mask"]  # (rows, T)
    rows, full_len = mask.shape
    device = mask.device
    lengths = mask.sum(1)  # (rows,)
    prefix_len = int(subj_pos.max())
    suffix_len = int((lengths - subj_pos).max())
    if prefix_len == 0:
        return None
    # Suffix slot k of row r is position s_r + k; slots past the row's end are padding.
    k = torch.arange(suffix_len, device=device)
    positions = subj_pos[:, None] + k  # (rows, S)
    suffix_real = k[None, :] < (lengths - subj_pos)[:, None]  # (rows, S)
    take = positions.clamp(max=full_len - 1)
    # Prefix slot j of row r holds position j - (P - s_r); slots before position 0 are padding.
    j = torch.arange(prefix_len, device=device)
    source = j[None, :] - (prefix_len - subj_pos)[:, None]  # (rows, P)
    prefix_real = source >= 0

    def left_pad(kv: torch.Tensor) -> torch.Tensor:  # (rows, h, T, d) -> (rows, h, P, d)
        # Each layer's cache is on that layer's device (docs/design.md §12).
        index = source.clamp(min=0)[:, None, :, None].expand(-1, kv.shape[1], -1, kv.shape[3])
        real = prefix_real[:, None, :, None].to(kv.device, kv.dtype)
        return kv.detach().gather(2, index.to(kv.device)) * real

    suffix_batch = {
        "input_ids": batch["input_ids"].gather(1, take),
        "attention_mask": torch.cat([prefix_real, suffix_real], dim=1).to(mask.dtype),
        "position_ids": positions,
    }
    suffix_picks = [(r, p - subj_pos[r]) for r, p in picks]
    return SuffixPlan(map_cache(full_cache, left_pad), suffix_batch, take, suffix_picks,
                      prefix_len, full_len)


# Cache layers whose ``update`` rebinds ``keys``/``values`` to new tensors (``torch.cat``) and
# never writes into the old ones: a shallow copy of the cache is enough to keep the plan's
# tensors unchanged by a pass. Any other cache is deep-copied (its tensors too) every pass.
_REBINDING_LAYERS = ("DynamicLayer", "DynamicSlidingWindowLayer")


def _fresh_cache(cache):
    """A copy of ``cache`` a forward pass may append to without changing ``cache``."""
    layers = getattr(cache, "layers", None)
    if layers is not None and all(type(layer).__name__ in _REBINDING_LAYERS for layer in layers):
        return map_cache(cache, lambda kv: kv)
    if layers is None and type(cache).__name__ == "DynamicCache":  # older: lists rebuilt by cat
        return map_cache(cache, lambda kv: kv)
    return copy.deepcopy(cache)


# transformers' SDPA attention repeats grouped keys/values to every query head (``repeat_kv``)
# whenever a mask is given, except where this switch (read at each call) says otherwise.
_GQA_SWITCH = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextmanager
def _grouped_attention(model) -> Iterator[None]:
    """On CPU, let SDPA attend with the grouped keys/values themselves (``enable_gqa``; torch's
    CPU kernel takes it with a mask, bit for bit the repeated result) instead of copies repeated
    per query head, which a differentiated pass keeps for backward in every block above ``L``:
    with 3 of SmolLM2's 9 heads per key that was the largest part of a step's memory. GPUs keep
    transformers' choice (their masked kernels may not take grouped heads). A value the user set
    is left alone; the first step's check against the full pass covers the result."""
    if input_device(model).type != "cpu" or _GQA_SWITCH in os.environ:
        yield
        return
    os.environ[_GQA_SWITCH] = "1"
    try:
        yield
    finally:
        os.environ.pop(_GQA_SWITCH, None)


def suffix_hidden(model, plan: SuffixPlan) -> torch.Tensor:
    """Last hidden states of the suffix slots, (rows, S, d). The pass appends to a copy of the
    plan's cache."""
    base = model.base_model
    cache = {_cache_kwarg(base): _fresh_cache(plan.cache)}
    with _grouped_attention(model):
        out = base(**plan.batch, **cache, use_cache=True)
    return out.last_hidden_state


def block_value(plan: SuffixPlan, full_output: torch.Tensor) -> torch.Tensor:
    """Block ``L``'s recorded full-row output (rows, T, d) at the suffix slots: (rows, S, d);
    the subject token is slot 0 of every row."""
    if plan.row_index is not None:
        full_output = full_output[plan.row_index.to(full_output.device)]
    index = plan.take[:, :, None].expand(-1, -1, full_output.shape[-1])
    return full_output.gather(1, index.to(full_output.device))
