"""Target hidden states ``z`` for a batch of requests, optimised together (docs/design.md §5).

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from massedit.engine.hooks import frozen_parameters
from massedit.engine.hparams import EditHparams
from massedit.engine.post_norm import ReachableChange
from massedit.engine.precision import check_finite, half_dtype
from massedit.engine.requests import EditRequest
from massedit.engine.tokens import encode_target, encode_with_subject
from massedit.models.placement import input_device
from massedit.targets.passes import GroupPass
from massedit.targets.rows import build_rows

logger = logging.getLogger(__name__)


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


def _spread(values: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
    """``values`` for the set entries of ``kept`` (n,), zeros elsewhere; differentiable."""
    if kept is None:
        return values
    return values.new_zeros(kept.shape[0]).index_put((kept.nonzero()[:, 0],), values)


def _run_length(tok, request: EditRequest) -> tuple[int, int]:
    """How many positions a request's rows run above the edit block (from the subject's last
    token to the last target token fed), then its whole length: the plain prompt's, which every
    prefix only lengthens before the subject."""
    enc = encode_with_subject(tok, request.text, request.subject_span(""))
    fed = len(encode_target(tok, request.target_new)) - 1  # teacher-forced target tokens
    return len(enc.ids) - enc.subject_last + fed, len(enc.ids) + fed


def target_groups(tok, requests: Sequence[EditRequest], n_prefixes: int,
                  batch_rows: int) -> list[list[int]]:
    """Indices of ``requests`` per group of at most ``batch_rows`` rows (``n_prefixes`` + 1
    per request), requests of similar lengths together: every row of a group is padded to its
    longest, so mixing a long suffix with short ones makes all of them cost as much. Requests
    are independent (module docstring), so the grouping changes no target."""
    per = max(1, batch_rows // (n_prefixes + 1))
    order = sorted(range(len(requests)), key=lambda i: _run_length(tok, requests[i]))
    return [order[lo : lo + per] for lo in range(0, len(order), per)]


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
    on_group_done: Callable[[list[int], TargetResult], None] | None = None,
    reach: ReachableChange | None = None,
) -> TargetResult:
    """Optimise all requests' ``δ``; ``block_name`` is the last edit layer's block.

    Requests are optimised in groups of at most ``hp.target_rows`` (else ``hp.batch_rows``) rows
    (:func:`target_groups`: similar lengths together), one group after the other, so memory stays
    that of one group however many requests there are (each request's δ is independent of the
    others', so the grouping and order change nothing). With ``replay`` the blocks up to
    ``block_name`` run once per group; later steps reuse their output (they cannot depend on δ).
    With ``suffix`` too (decoder-only models), the blocks above run only from each row's subject
    token on (:mod:`massedit.targets.suffix`). The model's parameters do not require gradients
    meanwhile (only δ is differentiated). ``on_group_done(indices, result)`` is called after each
    group with the indices (into ``requests``) it held and their targets, in that order: a caller
    can keep them at once (an interruption then loses one group's work) and still pass every
    request in one call, so that groups are formed from all of them. With ``reach`` (a norm
    after block L's MLP) the free vector is the change of the site's output and the stream
    receives ``reach(δ)``: only changes the MLP can make are tried (docs/design.md §5).
    """
    groups = target_groups(tok, requests, len(prefixes), hp.target_rows or hp.batch_rows)
    device = input_device(model)  # where δ and the rows live (§12)
    bar = tqdm(total=len(groups) * hp.v_num_grad_steps, desc="targets", disable=not progress,
               leave=False)
    parts = []
    with frozen_parameters(model), bar:
        for idx in groups:
            rows = build_rows(model, tok, [requests[i] for i in idx], prefixes, device)
            group = GroupPass(model, rows, len(idx), block_name, replay=replay, suffix=suffix)
            parts.append(_optimise_group(group, len(prefixes), hp, bar,
                                         None if reach is None else reach.select(idx)))
            if on_group_done is not None:
                on_group_done(list(idx), parts[-1])
    # Back to the requests' order: position k of the concatenation is request order[k].
    order = torch.tensor([i for idx in groups for i in idx])
    back = torch.empty_like(order)
    back[order] = torch.arange(len(order))

    def joined(name: str) -> torch.Tensor:
        values = torch.cat([getattr(p, name) for p in parts])
        return values[back.to(values.device)]

    return TargetResult(z=joined("z"), h=joined("h"), nll=joined("nll"), steps=joined("steps"))


def _optimise_group(group: GroupPass, n_prefixes: int, hp: EditHparams, bar,
                    reach: ReachableChange | None = None) -> TargetResult:
    """Adam on one group's δ until every request stops or the steps run out. With ``reach``, δ
    is the change of the site's output; the stream moves by ``reach(δ)``, the weight decay
    weighs that move and the clamp bounds δ by the site's output, as it bounds a stream δ by
    the stream (``h``)."""
    r, n = group.rows, group.n_requests
    model = group.model
    device = input_device(model)  # where δ and the rows live (§12)
    d_model = model.get_output_embeddings().weight.shape[1]
    width = d_model if reach is None else reach.width  # with reach: k sites' outputs
    delta = torch.zeros(n, width, device=device, requires_grad=True)  # (n, width)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    kl_ref = None
    done = torch.zeros(n, dtype=torch.bool, device=device)
    steps = torch.zeros(n, dtype=torch.long)
    last_nll = torch.full((n,), float("nan"))
    frozen = torch.zeros_like(delta)
    half = half_dtype(model)  # float16/bfloat16 runs name an overflow as such (None: fp32)
    for it in range(hp.v_num_grad_steps):
        opt.zero_grad(set_to_none=False)
        with torch.set_grad_enabled(it < hp.v_num_grad_steps - 1):  # the last pass only scores
            moved = delta if reach is None else reach(delta)  # (n, d_model) stream change
            out = group(moved, done)
        if it == 0:  # block output at the plain prompts' subject tokens, δ = 0: (n, d_model)
            h = out.h[torch.arange(0, r.n_rewrite, n_prefixes, device=device)]
        # NLL of target tokens, per rewrite row then averaged over prefixes.
        # Rows of stopped requests may have left the batch: their entries count as 0.
        logp = out.tgt_logits.log_softmax(-1)  # (n_tgt', vocab)
        tgt_id = r.tgt_id if out.tgt_kept is None else r.tgt_id[out.tgt_kept]
        tok_lp = _spread(logp.gather(1, tgt_id[:, None])[:, 0], out.tgt_kept)  # (n_tgt,)
        row_nll = torch.zeros(r.n_rewrite, device=device).index_add(0, r.tgt_row, -tok_lp)
        nll = (row_nll / r.tgt_len).view(n, n_prefixes).mean(1)  # (n,)
        # KL at the subject token of the KL prompt, against the unedited distribution.
        kl_lp = out.kl_logits.log_softmax(-1)  # (n', vocab)
        if kl_ref is None:
            kl_ref = kl_lp.detach()
        ref = kl_ref if out.kl_kept is None else kl_ref[out.kl_kept]
        kl = _spread((kl_lp.exp() * (kl_lp - ref)).sum(-1), out.kl_kept)  # (n,) KL(P_δ ‖ P_0)
        wd = hp.v_weight_decay * moved.norm(dim=-1) / h.norm(dim=-1) ** 2
        loss = nll + hp.kl_factor * kl + wd  # (n,)
        if half is not None:
            check_finite(half, loss, "the target optimisation", f"the loss at step {it} "
                         f"(forward passes through {group.block_name} and the blocks above it)")
        if logger.isEnabledFor(logging.DEBUG):  # the loss's parts, per request, at this δ
            logger.debug("targets: step %d nll %s kl %s wd %s done %s", it, nll.tolist(),
                         kl.tolist(), wd.tolist(), done.tolist())
        active = ~done
        last_nll = torch.where(active, nll.detach(), last_nll.to(device)).cpu()
        finished = active & (loss.detach() < hp.early_stop_loss)
        if bool(finished.any()):
            done[finished] = True
            frozen[finished] = delta.detach()[finished]
        active = active & ~finished
        if it < hp.v_num_grad_steps - 1 and bool(active.any()):
            loss[active].sum().backward()
            steps[active.cpu()] += 1
        bar.update(1)
        if bool(done.all()) or it == hp.v_num_grad_steps - 1:
            bar.update(hp.v_num_grad_steps - 1 - it)
            break
        opt.step()
        with torch.no_grad():
            # Requests that stopped keep the δ they stopped with (Adam momentum would move them).
            delta[done] = frozen[done]
            bound = h if reach is None else reach.norm_in.flatten(1).to(h)  # δ's yardstick
            max_norm = hp.clamp_norm_factor * bound.norm(dim=-1, keepdim=True)  # (n, 1)
            scale = (max_norm / delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
            delta.mul_(scale)
        bar.set_postfix(active=int((~done).sum()), nll=f"{float(last_nll.nanmean()):.3f}")
    delta = delta.detach()
    check_finite(half, delta, "the target optimisation", "the optimised δ (forward passes "
                 f"through {group.block_name} and the blocks above it)")
    if not torch.isfinite(delta).all():
        raise FloatingPointError("target optimisation produced non-finite values")
    if reach is not None:
        with torch.no_grad():
            delta = reach(delta)  # (n, d_model): the stream change the site's δ makes
    return TargetResult(z=h + delta, h=h.clone(), nll=last_nll, steps=steps)
