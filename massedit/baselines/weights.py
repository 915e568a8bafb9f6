"""Pieces the trained baselines (FT/FT-L, MEND) share: the weight a patch would write, and the
per-row target NLL their losses read (docs/design.md §4, whole editors)."""

from __future__ import annotations

import torch


def weight_with_delta(weight: torch.Tensor, delta: torch.Tensor, layout: str) -> torch.Tensor:
    """``cast(fp32(W) + ΔW)`` (exactly what writing the patch produces), in the parameter's own
    layout; ``delta`` is fp32 in the Linear layout ``(d_out, d_in)``."""
    w = (weight.to(torch.float32) + delta).to(weight.dtype)  # (d_out, d_in)
    return w.T if layout == "conv1d" else w


def row_target_nll(logits: torch.Tensor, tgt_row: torch.Tensor, tgt_pos: torch.Tensor,
                   tgt_id: torch.Tensor, tgt_len: torch.Tensor) -> torch.Tensor:
    """Each row's mean NLL of its target tokens ``(rows,)`` (0 for a row without any);
    ``logits`` (rows, len, vocab), target token k of row ``tgt_row[k]`` predicted at
    ``tgt_pos[k]``."""
    logp = logits[tgt_row, tgt_pos].float().log_softmax(-1)  # (n_tgt, vocab)
    tok_nll = -logp.gather(1, tgt_id[:, None])[:, 0]  # (n_tgt,)
    rows = tgt_len.shape[0]
    row_nll = torch.zeros(rows, device=tok_nll.device).index_add(0, tgt_row, tok_nll)
    return row_nll / tgt_len.clamp_min(1)
