"""The model passes MEND needs: the fine-tuning gradient's factors at the edit sites, and the
losses of its training (docs/design.md §4, whole editors).

A batch of *rows* mixes rows with a target (prompt + target, teacher-forced; the edit loss
reads every target token at its own position, as FT does) and rows without one (locality
prompts, read by the KL term). One pass on the unedited weights gives both the gradient's
factors ``(x_t, δ_t)`` of the edit rows' loss and the unedited logits the KL compares with;
a second pass with ``W + ΔW`` gives the training loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.func import functional_call

from massedit.baselines.weights import row_target_nll
from massedit.engine.hooks import frozen_parameters, removed_after
from massedit.engine.tokens import encode_target, pad_id_of, pad_right
from massedit.models.adapters import get_module


@dataclass
class TokenRows:
    """Padded rows; target tokens are listed by (row, position predicting it, id)."""

    batch: dict[str, torch.Tensor]  # input_ids, attention_mask (rows, len)
    tgt_row: torch.Tensor  # (n_tgt,)
    tgt_pos: torch.Tensor  # (n_tgt,)
    tgt_id: torch.Tensor  # (n_tgt,)
    tgt_len: torch.Tensor  # (rows,) target tokens per row; 0: a row without target

    @property
    def n_rows(self) -> int:
        return int(self.tgt_len.shape[0])


def prompt_ids(tok, text: str) -> list[int]:
    """``text``'s ids with leading specials (BOS) and without trailing ones (an EOS would sit
    between the prompt and its target), as targets are optimised and scored."""
    enc = tok(text, return_special_tokens_mask=True)
    ids, specials = list(enc["input_ids"]), list(enc["special_tokens_mask"])
    while specials and specials[-1]:
        ids.pop()
        specials.pop()
    return ids


def token_rows(tok, texts: Sequence[str], targets: Sequence[str | None], device) -> TokenRows:
    """One row per text: ``text + target[:-1]`` when it has a target, else the text alone."""
    seqs, rows, pos, ids, lens = [], [], [], [], []
    for r, (text, target) in enumerate(zip(texts, targets, strict=True)):
        prompt = prompt_ids(tok, text)
        tgt = encode_target(tok, target) if target is not None else []
        seqs.append(prompt + tgt[:-1])
        for j, t in enumerate(tgt):
            rows.append(r)
            pos.append(len(prompt) - 1 + j)  # the logits here predict target token j
            ids.append(t)
        lens.append(len(tgt))

    def t(x):
        return torch.tensor(x, dtype=torch.long, device=device)

    return TokenRows(pad_right(seqs, pad_id_of(tok), device), t(rows), t(pos), t(ids), t(lens))


def target_nll(logits: torch.Tensor, rows: TokenRows, reduce: str = "mean") -> torch.Tensor:
    """Mean (or ``reduce="sum"``) over the rows with a target of each row's mean target-token
    NLL (a scalar); ``logits`` (rows, len, vocab)."""
    has = rows.tgt_len > 0
    per_row = row_target_nll(logits, rows.tgt_row, rows.tgt_pos, rows.tgt_id, rows.tgt_len)[has]
    return per_row.sum() if reduce == "sum" else per_row.mean()


def locality_kl(base_logits: torch.Tensor, logits: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens (``mask`` (rows, len) bool) of KL(p_unedited ‖ p_edited),
    MEND's locality term; logits (rows, len, vocab)."""
    base = base_logits[mask].float().log_softmax(-1)  # (n, vocab)
    edited = logits[mask].float().log_softmax(-1)
    return (base.exp() * (base - edited)).sum(-1).mean()


def edit_rows_mask(rows: TokenRows, edit_rows: int) -> TokenRows:
    """``rows`` whose target tokens are only those of the first ``edit_rows`` rows (the rows
    whose loss the fine-tuning gradient is taken of)."""
    keep = rows.tgt_row < edit_rows
    lens = rows.tgt_len.clone()
    lens[edit_rows:] = 0
    return TokenRows(rows.batch, rows.tgt_row[keep], rows.tgt_pos[keep], rows.tgt_id[keep], lens)


def gradient_factors(model, sites: Sequence[str], rows: TokenRows
                     ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """The factors of ``∂L/∂W = Σ_t δ_t x_tᵀ`` at each site for ``L`` = the *sum* over the rows
    with a target of their mean target-token NLL, on the model's current weights, and the
    pass's logits (detached). A sum, not a mean: each request of a batch contributes the
    gradient it has alone (the network is trained on single edits, the paper's ``edit_bs = 1``),
    as targets are summed (docs/design.md §5).

    Returns ``{site: (x (t, d_in), δ (t, d_out))}`` over the tokens where both are non-zero
    (padding, positions after the last target and rows without target give ``δ = 0``, as
    MEND's mask drops them) and logits (rows, len, vocab). Weights get no gradient: the sites'
    outputs are made to require one, so backward stops at the lowest site."""
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for site in sites:
        def hook(_mod, args, output, site=site):
            inputs[site] = args[0].detach()
            if not output.requires_grad:  # the lowest site: the graph starts here
                output = output.detach().requires_grad_()
            outputs[site] = output
            return output

        handles.append(get_module(model, site).register_forward_hook(hook))
    with frozen_parameters(model), removed_after(handles), torch.enable_grad():
        logits = model(**rows.batch, use_cache=False).logits  # (rows, len, vocab)
        loss = target_nll(logits, rows, reduce="sum")
        grads = torch.autograd.grad(loss, [outputs[s] for s in sites])
    factors = {}
    for site, grad in zip(sites, grads, strict=True):
        x = inputs[site].reshape(-1, inputs[site].shape[-1]).float()  # (rows·len, d_in)
        d = grad.reshape(-1, grad.shape[-1]).float()  # (rows·len, d_out)
        keep = (x != 0).any(-1) & (d != 0).any(-1)
        factors[site] = (x[keep], d[keep])
    return factors, logits.detach()


def edited_logits(model, rows: TokenRows, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits (rows, len, vocab) with ``weights`` (parameter name -> tensor in the parameter's
    own layout) in place of the model's; gradients flow into ``weights`` only."""
    with frozen_parameters(model):
        return functional_call(model, weights, args=(),
                               kwargs={**rows.batch, "use_cache": False}).logits
