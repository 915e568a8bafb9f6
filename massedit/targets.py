"""Target hidden states ``z`` for a batch of requests, optimised together (DESIGN §5).

A free vector ``δ_i`` is added to block ``L``'s output at request i's subject token, in every
prefix of its prompt and in its KL prompt "{subject} is a". Each request's loss is

    mean_prefixes NLL(" " + target_new | prefix + prompt)
      + kl_factor · KL(P_δ ‖ P_0)  at the subject token of "{subject} is a"
      + weight_decay · ‖δ_i‖ / ‖h_i‖²

and the total is the plain *sum* over requests, so every δ_i sees exactly the gradient it would
see alone (Adam is element-wise): a batched run equals n separate runs. Requests stop on their own
(loss below ``early_stop_loss``) and, on the suffix path, their rows leave the batch. Logits are
computed only at the positions the loss reads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from massedit.config import EditHparams
from massedit.hooks import (
    edit_output,
    frozen_parameters,
    record_block_outputs,
    replay_blocks,
)
from massedit.requests import EditRequest
from massedit.target_suffix import (
    SuffixPlan,
    block_value,
    cache_of,
    plan_suffix,
    suffix_hidden,
)
from massedit.tokens import encode_target, encode_with_subject, pad_id_of, pad_right

logger = logging.getLogger(__name__)

KL_PROMPT = "{} is a"


@dataclass
class TargetResult:
    z: torch.Tensor  # (n, d_model) fp32: h + δ
    h: torch.Tensor  # (n, d_model) fp32: block-L output at the subject token, plain prompt
    nll: torch.Tensor  # (n,) final mean NLL of target_new
    steps: torch.Tensor  # (n,) gradient steps each request took

    def split(self, seconds_each: float = 0.0) -> list[CachedTarget]:
        """One cache entry per request (each request's δ is optimised independently of the
        others: separate parameters, losses, early stops and clamps under element-wise Adam)."""
        return [CachedTarget(self.z[i], self.h[i], self.nll[i], self.steps[i], seconds_each)
                for i in range(self.z.shape[0])]

    @staticmethod
    def stack(items: Sequence[CachedTarget]) -> TargetResult:
        return TargetResult(z=torch.stack([t.z for t in items]),
                            h=torch.stack([t.h for t in items]),
                            nll=torch.stack([t.nll for t in items]),
                            steps=torch.stack([t.steps for t in items]))


@dataclass
class CachedTarget:
    """One request's target as a target cache keeps it, with its share of the time the
    computation that produced it took (so studies can charge re-used targets fairly)."""

    z: torch.Tensor  # (d_model,)
    h: torch.Tensor  # (d_model,)
    nll: torch.Tensor  # ()
    steps: torch.Tensor  # ()
    seconds: float


@dataclass
class _Rows:
    """Token rows of a group of requests: T rewrite rows each, then one KL row each."""

    batch: dict[str, torch.Tensor]
    subj_pos: torch.Tensor  # (rows,)
    row_req: torch.Tensor  # (rows,) local request index
    tgt_row: torch.Tensor  # (n_tgt,) row of each target token
    tgt_pos: torch.Tensor  # (n_tgt,) position whose logits predict it
    tgt_id: torch.Tensor  # (n_tgt,)
    tgt_len: torch.Tensor  # (rewrite rows,) target length per rewrite row
    n_rewrite: int
    # Where the KL logits are read in each KL row; None: at the subject token (decoder-only).
    # Encoder-decoder rows read them at the decoder's first position instead.
    kl_pos: torch.Tensor | None = None


def _build_rows(tok, requests, prefixes, device) -> _Rows:
    seqs, subj, row_req, tgt_row, tgt_pos, tgt_id, tgt_len = [], [], [], [], [], [], []
    for i, req in enumerate(requests):
        target = encode_target(tok, req.target_new)
        for prefix in prefixes:
            enc = encode_with_subject(tok, prefix + req.text, req.subject_span(prefix))
            r = len(seqs)
            seqs.append(enc.ids + target[:-1])  # teacher forcing
            subj.append(enc.subject_last)
            row_req.append(i)
            for j, t in enumerate(target):
                tgt_row.append(r)
                tgt_pos.append(len(enc.ids) - 1 + j)
                tgt_id.append(t)
            tgt_len.append(len(target))
    n_rewrite = len(seqs)
    for i, req in enumerate(requests):
        kl_text = KL_PROMPT.format(req.subject)
        enc = encode_with_subject(tok, kl_text, (0, len(req.subject)))
        seqs.append(enc.ids)
        subj.append(enc.subject_last)
        row_req.append(i)

    def t(x):
        return torch.tensor(x, dtype=torch.long, device=device)

    return _Rows(
        pad_right(seqs, pad_id_of(tok), device), t(subj), t(row_req), t(tgt_row), t(tgt_pos),
        t(tgt_id), t(tgt_len), n_rewrite,
    )


def _head(model, hidden: torch.Tensor) -> torch.Tensor:
    """LM-head logits for selected hidden states (k, d) -> (k, vocab), fp32."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _selected_logits(model, batch: dict, picks) -> list[torch.Tensor]:
    """fp32 logits ``(k, vocab)`` at each ``(rows, positions)`` pick of the sequence the LM head
    reads. Encoder-decoder models run their own head (T5's tied-head scaling, BART/Marian's
    final_logits_bias); their decoder sequences are short, so full logits cost little."""
    if model.config.is_encoder_decoder:
        logits = model(**batch, use_cache=False).logits  # (rows, dec_len, vocab)
        return [logits[rows, pos].float() for rows, pos in picks]
    hidden = model.base_model(**batch, use_cache=False).last_hidden_state  # (rows, seq, d)
    return _picked_logits(model, hidden, picks)


def _picked_logits(model, hidden: torch.Tensor, picks) -> list[torch.Tensor]:
    """Decoder-only: LM-head logits of ``hidden`` (rows, seq, d) at each pick."""
    return [_head(model, hidden[rows, pos]) for rows, pos in picks]


def _logits_and_cache(model, batch: dict, picks) -> tuple[list[torch.Tensor], object]:
    """Decoder-only :func:`_selected_logits` that also returns the pass's key/value cache."""
    out = model.base_model(**batch, use_cache=True)
    return _picked_logits(model, out.last_hidden_state, picks), cache_of(out)


def _checked_plan(model, layers_path: str, recorded: dict, rows: _Rows, picks, cache,
                  full_logits: list[torch.Tensor]) -> SuffixPlan | None:
    """A suffix plan for a group, if it reproduces the full pass's logits (at δ = 0) here."""
    upto = max(recorded)
    try:
        plan = plan_suffix(cache, rows.batch, rows.subj_pos, picks)
        if plan is None:
            return None
        value = block_value(plan, _first(recorded[upto]))
        with torch.no_grad(), replay_blocks(model, layers_path, recorded, value):
            logits = _picked_logits(model, suffix_hidden(model, plan), plan.picks)
    except Exception as err:  # noqa: BLE001 - any model the shortcut does not fit runs full rows
        logger.info("targets: every position runs (prefix cache not usable: %s)", err)
        return None
    tol = 1e-4 if next(model.parameters()).dtype == torch.float32 else 2e-2
    for full, fast in zip(full_logits, logits, strict=True):
        full = full.detach()
        gap = float((full - fast).abs().max()) / (1.0 + float(full.abs().max()))
        if gap > tol:
            logger.info("targets: every position runs (suffix pass differs by %.2g)", gap)
            return None
    logger.debug("targets: above the edit block, %d of %d positions per row run",
                 plan.suffix_len, plan.full_len)
    return plan


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _rows_builder(model):
    """How a group's token rows are built: prompt + target, or source -> decoder (seq2seq)."""
    if model.config.is_encoder_decoder:
        from massedit.seq2seq.subject_rows import build_seq2seq_rows

        return lambda tok, requests, prefixes, device: build_seq2seq_rows(
            model, tok, requests, prefixes, device)
    return _build_rows


def _at_first_slot(value: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``delta`` (rows, d) placed at slot 0 of every row of a zero tensor shaped like ``value``."""
    upd = torch.zeros_like(value)  # (rows, S, d)
    upd[:, 0] = delta.to(value.dtype)
    return upd


def _spread(values: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
    """``values`` for the set entries of ``kept`` (n,), zeros elsewhere; differentiable."""
    if kept is None:
        return values
    return values.new_zeros(kept.shape[0]).index_put((kept.nonzero()[:, 0],), values)


def _groups(n_requests: int, rows_per_request: int, batch_rows: int) -> list[list[int]]:
    per = max(1, batch_rows // rows_per_request)
    return [list(range(lo, min(n_requests, lo + per))) for lo in range(0, n_requests, per)]


def compute_targets(
    model,
    tok,
    requests: Sequence[EditRequest],
    prefixes: Sequence[str],
    block_name: str,
    hp: EditHparams,
    progress: bool = True,
    replay: bool = True,
    suffix: bool = True,
) -> TargetResult:
    """Optimise all requests' ``δ`` together; ``block_name`` is the last edit layer's block.

    With ``replay`` the blocks up to ``block_name`` run once; later steps reuse their output
    (they cannot depend on δ), which saves that share of every forward pass. With ``suffix``
    too (decoder-only models), the blocks above run only from each row's subject token on,
    reading the earlier positions' keys and values from the first pass (:mod:`target_suffix`).
    The model's parameters do not require gradients meanwhile (only δ is differentiated).
    """
    with frozen_parameters(model):
        return _optimise(model, tok, requests, prefixes, block_name, hp, progress, replay, suffix)


def _optimise(model, tok, requests, prefixes, block_name, hp, progress, replay, suffix):
    layers_path, _, layer = block_name.rpartition(".")
    device = next(model.parameters()).device
    n = len(requests)
    d_model = model.get_output_embeddings().weight.shape[1]
    delta = torch.zeros(n, d_model, device=device, requires_grad=True)  # (n, d_model)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    groups = _groups(n, len(prefixes) + 1, hp.batch_rows)
    build = _rows_builder(model)
    rows = [build(tok, [requests[i] for i in g], prefixes, device) for g in groups]
    h = torch.zeros(n, d_model, device=device)  # block output at plain prompt, δ = 0
    kl_ref: list[torch.Tensor | None] = [None] * len(groups)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    steps = torch.zeros(n, dtype=torch.long)
    last_nll = torch.full((n,), float("nan"))
    frozen = torch.zeros_like(delta)
    recorded: list[dict] = [{} for _ in groups]  # per group: block outputs 0..L at δ = 0
    plans: list[SuffixPlan | None] = [None] * len(groups)
    use_suffix = replay and suffix and not model.config.is_encoder_decoder
    bar = tqdm(range(hp.v_num_grad_steps), desc="targets", disable=not progress, leave=False)
    for it in bar:
        opt.zero_grad(set_to_none=False)
        for g, (idx, r) in enumerate(zip(groups, rows, strict=True)):
            idx_t = torch.tensor(idx, device=device)
            if bool(done[idx_t].all()):
                continue
            d_local = delta[idx_t]  # (g, d)
            captured = {}

            def add_delta(out, r=r, d_local=d_local, captured=captured):
                ar = torch.arange(out.shape[0], device=out.device)
                if "h" not in captured:
                    captured["h"] = out[ar, r.subj_pos].detach().float()  # (rows, d)
                upd = torch.zeros_like(out)
                upd[ar, r.subj_pos] = d_local[r.row_req].to(out.dtype)
                return out + upd

            kl_rows = torch.arange(r.n_rewrite, r.n_rewrite + len(idx), device=device)
            kl_pos = r.kl_pos if r.kl_pos is not None else r.subj_pos[kl_rows]
            picks = [(r.tgt_row, r.tgt_pos), (kl_rows, kl_pos)]
            tgt_kept = kl_kept = None  # which picks were computed; None: all of them
            if plans[g] is not None:
                keep = (~done[idx_t])[r.row_req]  # (rows,) rows of requests still optimising
                plan = plans[g]
                if not bool(keep.all()):
                    plan, (tgt_kept, kl_kept) = plan.select(keep)
                row_req = r.row_req if plan.row_index is None else r.row_req[plan.row_index]
                value = block_value(plan, _first(recorded[g][int(layer)]))  # (rows', S, d)
                value = value + _at_first_slot(value, d_local[row_req])
                with replay_blocks(model, layers_path, recorded[g], value):
                    hidden = suffix_hidden(model, plan)  # (rows', S, d)
                tgt_logits, kl_logits = _picked_logits(model, hidden, plan.picks)
            elif replay and recorded[g]:
                cached = _first(recorded[g][int(layer)])  # (rows, seq, d)
                with replay_blocks(model, layers_path, recorded[g], add_delta(cached)):
                    tgt_logits, kl_logits = _selected_logits(model, r.batch, picks)
            elif use_suffix:
                with record_block_outputs(model, layers_path, int(layer)) as rec, \
                        edit_output(model, block_name, add_delta):
                    (tgt_logits, kl_logits), cache = _logits_and_cache(model, r.batch, picks)
                recorded[g] = dict(rec)
                plans[g] = _checked_plan(model, layers_path, recorded[g], r, picks, cache,
                                         [tgt_logits, kl_logits])
                del cache
            elif replay:
                with record_block_outputs(model, layers_path, int(layer)) as rec, \
                        edit_output(model, block_name, add_delta):
                    tgt_logits, kl_logits = _selected_logits(model, r.batch, picks)
                recorded[g] = dict(rec)
            else:
                with edit_output(model, block_name, add_delta):
                    tgt_logits, kl_logits = _selected_logits(model, r.batch, picks)
            if it == 0:
                plain = torch.arange(0, r.n_rewrite, len(prefixes), device=device)
                h[idx_t] = captured["h"][plain]
            # NLL of target tokens, per rewrite row then averaged over prefixes.
            # Rows of stopped requests may have left the batch: their entries count as 0.
            logp = tgt_logits.log_softmax(-1)  # (n_tgt', vocab)
            tgt_id = r.tgt_id if tgt_kept is None else r.tgt_id[tgt_kept]
            tok_lp = _spread(logp.gather(1, tgt_id[:, None])[:, 0], tgt_kept)  # (n_tgt,)
            row_nll = torch.zeros(r.n_rewrite, device=device).index_add(0, r.tgt_row, -tok_lp)
            nll = (row_nll / r.tgt_len).view(len(idx), len(prefixes)).mean(1)  # (g,)
            # KL at the subject token of the KL prompt, against the unedited distribution.
            kl_lp = kl_logits.log_softmax(-1)  # (g', vocab)
            if kl_ref[g] is None:
                kl_ref[g] = kl_lp.detach()
            ref = kl_ref[g] if kl_kept is None else kl_ref[g][kl_kept]
            kl = _spread((kl_lp.exp() * (kl_lp - ref)).sum(-1), kl_kept)  # (g,) KL(P_δ ‖ P_0)
            wd = hp.v_weight_decay * d_local.norm(dim=-1) / h[idx_t].norm(dim=-1) ** 2
            loss = nll + hp.kl_factor * kl + wd  # (g,)
            active = ~done[idx_t]
            last_nll[idx] = torch.where(active, nll.detach(), last_nll[idx].to(device)).cpu()
            finished = active & (loss.detach() < hp.early_stop_loss)
            if bool(finished.any()):
                newly = idx_t[finished]
                done[newly] = True
                frozen[newly] = delta.detach()[newly]
            active = active & ~finished
            if it < hp.v_num_grad_steps - 1 and bool(active.any()):
                loss[active].sum().backward()
                steps[idx_t[active].cpu()] += 1
        if bool(done.all()) or it == hp.v_num_grad_steps - 1:
            break
        opt.step()
        with torch.no_grad():
            # Requests that stopped keep the δ they stopped with (Adam momentum would move them).
            delta[done] = frozen[done]
            max_norm = hp.clamp_norm_factor * h.norm(dim=-1, keepdim=True)  # (n, 1)
            scale = (max_norm / delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
            delta.mul_(scale)
        bar.set_postfix(active=int((~done).sum()), nll=f"{float(last_nll.nanmean()):.3f}")
    delta = delta.detach()
    if not torch.isfinite(delta).all():
        raise FloatingPointError("target optimisation produced non-finite values")
    return TargetResult(z=h + delta, h=h.clone(), nll=last_nll, steps=steps)
