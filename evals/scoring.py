"""Teacher-forced scoring of targets after prompts, many prompts per forward pass.

Tokenisation follows ROME's code (``test_batch_prediction``): the prompt is tokenised on its own,
with the tokenizer's special tokens (a Llama-style BOS), and the target as ``tok(" " + target)``
without special tokens; the two id lists are concatenated. So a BOS appears once, at the start,
and a target's ids do not depend on the prompt. The price: where the tokenizer would merge across
the prompt/target boundary the model sees a split it would not produce itself. ROME and MEMIT
accept this; an editor that builds its targets with :func:`target_token_ids` optimises exactly the
ids scored here.

The batch is built from these ids directly (not by re-tokenising joined strings), padded with an
attention mask and position ids from the cumulative mask, so a padded row's logits equal those of
the row run alone, on either padding side. Left padding is the default because it puts every
target at the end of its row: with ``logits_to_keep`` only the last ``max target length + 1``
positions are projected onto the vocabulary. Models whose forward takes no ``position_ids`` are
right-padded, where positions need no correction.

>>> nll = target_nll(model, tok, ["The Eiffel Tower is in"], ["Rome"])  # doctest: +SKIP
>>> prob = torch.exp(-nll)  # P(" Rome"), docs/design.md §9  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from massedit.engine.forward import forward_kwargs, model_device
from massedit.engine.tokens import encode_target, pad_batch, pad_id_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetScore:
    """Teacher-forced result for one (prompt, target) pair; all tensors are on the CPU."""

    target_ids: torch.Tensor  # (t,) ids of " " + target
    token_nll: torch.Tensor  # (t,) float32 -log p(target token | prompt, earlier target tokens)
    argmax: torch.Tensor  # (t,) the model's top token at each target position

    @property
    def nll(self) -> float:
        """Mean per-token NLL (docs/design.md §9: probability = exp(-nll))."""
        return float(self.token_nll.mean())

    @property
    def hits(self) -> torch.Tensor:
        """(t,) bool: argmax equals the target token (EasyEdit's token accuracy)."""
        return self.argmax == self.target_ids


def prompt_token_ids(tok, prompt: str) -> list[int]:
    """Ids of ``prompt`` with the tokenizer's leading special tokens (a BOS), none trailing.

    A tokenizer that appends an EOS would otherwise put it between prompt and target.
    """
    with_special = tok(prompt)["input_ids"]
    plain = tok(prompt, add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return list(with_special[: start + len(plain)])
    return list(plain)  # a post-processor that rewrites tokens: fall back to the plain ids


def target_token_ids(tok, target: str) -> list[int]:
    """Ids of ``" " + target``: the engine's own tokenisation, so scores and edits agree."""
    return encode_target(tok, target)


def encode_prompt_target(tok, prompt: str, target: str) -> tuple[list[int], int]:
    """Concatenated ids of prompt and target, and the number of prompt ids."""
    p_ids = prompt_token_ids(tok, prompt)
    return p_ids + target_token_ids(tok, target), len(p_ids)


@contextmanager
def inference_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (dropout off) and no autograd, restoring the model's training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _pad_id(tok) -> int:
    return pad_id_of(tok)


def _score_batch(
    model: torch.nn.Module, batch: Sequence[tuple[list[int], int]], pad_id: int, side: str
) -> list[TargetScore]:
    takes_positions, keep_name = forward_kwargs(model)
    device = model_device(model)
    input_ids, mask, offsets = pad_batch([ids for ids, _ in batch], pad_id, side, device)
    n_targets = [len(ids) - n_prompt for ids, n_prompt in batch]
    width = max(n_targets)

    # Logits at position p predict token p + 1: target token j of row r sits at
    # offset + n_prompt + j and is predicted from the position before it.
    pred_pos = torch.zeros((len(batch), width), dtype=torch.long)  # (batch, t_max)
    tgt = torch.zeros((len(batch), width), dtype=torch.long)  # (batch, t_max)
    for r, ((ids, n_prompt), off) in enumerate(zip(batch, offsets, strict=True)):
        t = n_targets[r]
        pred_pos[r, :t] = off + n_prompt - 1 + torch.arange(t)
        pred_pos[r, t:] = off + n_prompt - 1  # filler, ignored below
        tgt[r, :t] = torch.tensor(ids[n_prompt:], dtype=torch.long)

    kwargs: dict = {"input_ids": input_ids, "attention_mask": mask}
    if takes_positions:
        # Left padding shifts real tokens right; positions must still start at 0 for each row.
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)  # (batch, seq)
    first = int(pred_pos.min())
    if keep_name is not None:
        # An int keeps the last k positions; supported under both names in every version.
        kwargs[keep_name] = input_ids.shape[1] - first
        pred_pos = pred_pos - first
    logits = model(**kwargs).logits  # (batch, kept, vocab)
    picked = torch.take_along_dim(logits, pred_pos.to(logits.device)[..., None], dim=1)
    # (batch, t_max, vocab); log-softmax in fp32 so bf16/fp16 models score like fp32 ones
    logp = picked.float().log_softmax(-1)
    token_nll = -logp.gather(-1, tgt.to(logp.device)[..., None]).squeeze(-1).cpu()  # (batch, t_max)
    argmax = picked.argmax(-1).cpu()  # (batch, t_max)
    return [
        TargetScore(tgt[r, :t].clone(), token_nll[r, :t].clone(), argmax[r, :t].clone())
        for r, t in enumerate(n_targets)
    ]


def score_targets(
    model: torch.nn.Module,
    tok,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    batch_size: int = 32,
    padding_side: str | None = None,
) -> list[TargetScore]:
    """Teacher-forced per-token NLL and argmax of ``" " + target`` after each prompt.

    Pairs are sorted by length before batching (less padding) and returned in input order.
    ``padding_side`` (``"left"``/``"right"``) changes memory use, not results beyond float noise;
    the default is left when the model takes ``position_ids``, else right.
    """
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError("score_targets scores decoder-only models; this one is encoder-decoder")
    encoded = []
    for i, (prompt, target) in enumerate(zip(prompts, targets, strict=True)):
        try:
            ids, n_prompt = encode_prompt_target(tok, prompt, target)
        except ValueError as err:  # a target that tokenises to nothing
            raise ValueError(f"pair {i}: target {target!r} has no tokens") from err
        if n_prompt == 0:
            raise ValueError(f"pair {i}: prompt {prompt!r} has no tokens to condition on")
        encoded.append((ids, n_prompt))
    if not encoded:
        return []
    side = padding_side or ("left" if forward_kwargs(model)[0] else "right")
    pad_id = _pad_id(tok)
    logger.debug("scoring %d pairs, %s-padded, batch size %d", len(encoded), side, batch_size)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    results: list[TargetScore | None] = [None] * len(encoded)
    with inference_mode(model):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            scores = _score_batch(model, [encoded[i] for i in chunk], pad_id, side)
            for i, score in zip(chunk, scores, strict=True):
                results[i] = score
    return results  # type: ignore[return-value]


def target_nll(
    model: torch.nn.Module,
    tok,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    batch_size: int = 32,
    padding_side: str | None = None,
) -> torch.Tensor:
    """(n,) mean per-token NLL of ``" " + target`` after each prompt; probability = exp(-nll)."""
    scores = score_targets(
        model, tok, prompts, targets, batch_size=batch_size, padding_side=padding_side
    )
    return torch.tensor([s.nll for s in scores], dtype=torch.float32)


def target_prob(
    model: torch.nn.Module,
    tok,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    batch_size: int = 32,
    padding_side: str | None = None,
) -> torch.Tensor:
    """(n,) probability of each target as docs/design.md §9 defines it: exp(-mean per-token NLL)."""
    nll = target_nll(model, tok, prompts, targets, batch_size=batch_size, padding_side=padding_side)
    return torch.exp(-nll)


def target_token_hits(
    model: torch.nn.Module,
    tok,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    batch_size: int = 32,
    padding_side: str | None = None,
) -> list[torch.Tensor]:
    """Per pair, (t,) bool: teacher-forced argmax equals each target token.

    ``hits.float().mean()`` is EasyEdit's token accuracy for one prompt.
    """
    scores = score_targets(
        model, tok, prompts, targets, batch_size=batch_size, padding_side=padding_side
    )
    return [s.hits for s in scores]


def target_argmax(
    model: torch.nn.Module,
    tok,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    batch_size: int = 32,
    padding_side: str | None = None,
) -> list[torch.Tensor]:
    """Per pair, (t,) the model's top token at each teacher-forced target position."""
    scores = score_targets(
        model, tok, prompts, targets, batch_size=batch_size, padding_side=padding_side
    )
    return [s.argmax for s in scores]


def generate_batched(
    model: torch.nn.Module,
    tok,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    include_prompt: bool = False,
    **generate_kwargs,
) -> list[str]:
    """``model.generate`` over left-padded batches built from :func:`prompt_token_ids`.

    Left padding keeps every row's last real token at the end, where generation continues.
    """
    pad_id = _pad_id(tok)
    device = model_device(model)
    texts: list[str] = []
    with inference_mode(model):
        for start in range(0, len(prompts), batch_size):
            chunk = [prompt_token_ids(tok, p) for p in prompts[start : start + batch_size]]
            input_ids, mask, _ = pad_batch(chunk, pad_id, "left", device)
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                **generate_kwargs,
            )  # (batch, seq + new)
            new = out[:, input_ids.shape[1] :]  # (batch, <= new)
            for row, ids in zip(new.tolist(), chunk, strict=True):
                # Decode prompt and continuation together so the joining space is the decoder's.
                shown = ids + row if include_prompt else row
                texts.append(tok.decode(shown, skip_special_tokens=True))
    return texts


def greedy_continuation(
    model: torch.nn.Module,
    tok,
    prompts: Sequence[str],
    max_new_tokens: int = 10,
    *,
    batch_size: int = 32,
) -> list[str]:
    """Greedy continuation of each prompt (the new text only, special tokens removed)."""
    return generate_batched(
        model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=False
    )
