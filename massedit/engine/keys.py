"""Hidden states at each request's subject token, averaged over context prefixes.

Keys (docs/design.md §5) are the edit site's input at the subject's last token, averaged over the
plain
prompt and its context prefixes; the block output used for residuals is read on the plain prompt
only (the reference code's choice: the target ``z`` is defined there too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from massedit.engine.hooks import capture, run_until, stop_after
from massedit.engine.requests import EditRequest
from massedit.engine.tokens import Encoded, encode_with_subject, pad_id_of, pad_right
from massedit.models.placement import input_device


@dataclass(frozen=True)
class Read:
    """What to read: module ``name``'s input (``inputs=True``) or output, averaged over all
    prefixes (``average=True``) or taken on the plain prompt (prefix 0) only."""

    name: str
    inputs: bool
    average: bool = True


def encode_rows(
    tok, requests: Sequence[EditRequest], prefixes: Sequence[str], keep_eos: bool = False
) -> list[Encoded]:
    """One row per (request, prefix), request-major: row = i · len(prefixes) + t.
    ``keep_eos``: encoder-decoder sources keep their trailing ``</s>``."""
    rows = []
    for i, req in enumerate(requests):
        for prefix in prefixes:
            where = f"request {req.case_id if req.case_id is not None else i}"
            rows.append(encode_with_subject(
                tok, prefix + req.text, req.subject_span(prefix), where, keep_eos=keep_eos))
    return rows


@torch.no_grad()
def subject_states(
    model,
    tok,
    requests: Sequence[EditRequest],
    prefixes: Sequence[str],
    reads: Sequence[Read],
    stop_at: str,
    batch_rows: int = 64,
) -> list[torch.Tensor]:
    """For each read, a (n_requests, dim) fp32 tensor. The pass ends after module ``stop_at``."""
    rows = encode_rows(tok, requests, prefixes, keep_eos=model.config.is_encoder_decoder)
    n_t = len(prefixes)
    device = input_device(model)  # not the first parameter's: on meta when offloaded (§12)
    pad = pad_id_of(tok)
    gathered: list[list[torch.Tensor]] = [[] for _ in reads]
    names = list(dict.fromkeys(r.name for r in reads))
    for lo in range(0, len(rows), batch_rows):
        chunk = rows[lo : lo + batch_rows]
        batch = pad_right([r.ids for r in chunk], pad, device)
        pos = torch.tensor([r.subject_last for r in chunk])  # (b,)
        with (
            capture(
                model,
                [n for n in names if any(r.name == n and r.inputs for r in reads)],
                inputs=True,
            ) as seen_in,
            capture(
                model, [n for n in names if any(r.name == n and not r.inputs for r in reads)]
            ) as seen_out,
            stop_after(model, stop_at),
        ):
            run_until(model, batch)
        for j, read in enumerate(reads):
            full = (seen_in if read.inputs else seen_out)[read.name]  # (b, seq, dim)
            # Indexed on the state's own device (a split model's layer j is on device j), and
            # gathered on the input device, where the caller's other tensors are.
            at = pos.to(full.device)
            picked = full[torch.arange(len(chunk), device=full.device), at]  # (b, dim)
            gathered[j].append(picked.float().to(device))
    out = []
    for j, read in enumerate(reads):
        states = torch.cat(gathered[j]).view(len(requests), n_t, -1)  # (n, T, dim)
        out.append(states.mean(1) if read.average else states[:, 0])
    return out
