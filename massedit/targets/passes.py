"""One group's forward passes during target optimisation: logits at the positions the loss reads,
with δ added to block ``L``'s output at each row's subject token (docs/design.md §5, §11).

The first pass runs the whole model and records block ``L``'s output (the blocks up to ``L``
cannot depend on δ); later passes replay it. On decoder-only models every pass that is
differentiated runs the blocks above ``L`` on each row's suffix only
(:mod:`massedit.targets.suffix`), and rows of requests that have stopped leave the batch. There
the first pass is a plain forward pass (δ is zero then, so nothing of it needs a gradient): it
records the blocks, the prefixes' keys/values and the reference logits, and the first
differentiated pass is a suffix pass that must reproduce those logits, else every pass runs full
rows. Memory is then that of one group's suffix rows, never of its full rows with their
activations kept for backward (docs/design.md §11).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from massedit.engine.hooks import edit_output, first_output, record_block_outputs, replay_blocks
from massedit.targets.suffix import (
    SuffixPlan,
    block_value,
    cache_of,
    plan_suffix,
    suffix_hidden,
)

logger = logging.getLogger(__name__)


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """LM-head logits for selected hidden states (k, d) -> (k, vocab), fp32, as the model's own
    forward makes them: Granite divides by ``logits_scaling``, Gemma 2 soft-caps."""
    logits = model.get_output_embeddings()(hidden).float()
    scaling = getattr(model.config, "logits_scaling", None)
    if scaling:
        logits = logits / scaling
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _picked_logits(model, hidden: torch.Tensor, picks) -> list[torch.Tensor]:
    """Decoder-only: LM-head logits of ``hidden`` (rows, seq, d) at each pick, on the picks'
    device (the head may sit on another device than the rows, docs/design.md §12)."""
    at = hidden.device
    return [head_logits(model, hidden[rows.to(at), pos.to(at)]).to(rows.device)
            for rows, pos in picks]


def _selected_logits(model, batch: dict, picks) -> list[torch.Tensor]:
    """fp32 logits ``(k, vocab)`` at each ``(rows, positions)`` pick of the sequence the LM head
    reads. Encoder-decoder models run their own head (T5's tied-head scaling, BART/Marian's
    final_logits_bias); their decoder sequences are short, so full logits cost little."""
    if model.config.is_encoder_decoder:
        logits = model(**batch, use_cache=False).logits  # (rows, dec_len, vocab)
        return [logits[rows.to(logits.device), pos.to(logits.device)].float().to(rows.device)
                for rows, pos in picks]
    hidden = model.base_model(**batch, use_cache=False).last_hidden_state  # (rows, seq, d)
    return _picked_logits(model, hidden, picks)


def _logits_and_cache(model, batch: dict, picks) -> tuple[list[torch.Tensor], object]:
    """Decoder-only :func:`_selected_logits` that also returns the pass's key/value cache."""
    out = model.base_model(**batch, use_cache=True)
    return _picked_logits(model, out.last_hidden_state, picks), cache_of(out)


def _at_first_slot(value: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``delta`` (rows, d) placed at slot 0 of every row of a zero tensor shaped like ``value``."""
    upd = torch.zeros_like(value)  # (rows, S, d)
    upd[:, 0] = delta.to(value.device, value.dtype)
    return upd


@dataclass
class PassOutput:
    tgt_logits: torch.Tensor  # (n_tgt', vocab) fp32
    kl_logits: torch.Tensor  # (g', vocab) fp32
    # Which target tokens / KL rows were computed (rows of stopped requests left); None: all.
    tgt_kept: torch.Tensor | None = None
    kl_kept: torch.Tensor | None = None
    h: torch.Tensor | None = None  # (rows, d) block-L output at the subject tokens, first pass


@dataclass
class GroupPass:
    """Forward passes over one group's rows (a ``targets._Rows``) with its requests' δ."""

    model: object
    rows: object
    n_requests: int
    block_name: str
    replay: bool = True
    suffix: bool = True
    recorded: dict = field(default_factory=dict)  # block outputs 0..L at δ = 0 (first pass)
    plan: SuffixPlan | None = None
    # The plan for the rows still running, with its kept picks; rebuilt only when a request stops.
    _running: tuple | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.layers_path, _, layer = self.block_name.rpartition(".")
        self.layer = int(layer)
        self.suffix = self.suffix and self.replay and not self.model.config.is_encoder_decoder
        r = self.rows
        kl_rows = torch.arange(r.n_rewrite, r.n_rewrite + self.n_requests, device=r.subj_pos.device)
        kl_pos = r.kl_pos if r.kl_pos is not None else r.subj_pos[kl_rows]
        self.picks = [(r.tgt_row, r.tgt_pos), (kl_rows, kl_pos)]

    def __call__(self, delta: torch.Tensor, done: torch.Tensor) -> PassOutput:
        """Logits with ``delta`` (g, d) added; ``done`` (g,) marks requests that stopped. The
        first call must be at δ = 0 (the recorded states and the suffix check assume it)."""
        if self.plan is not None:
            return self._suffix_pass(delta, done)
        if self.replay and not self.recorded and self.suffix:
            return self._first_suffix_pass(delta, done)
        model, r = self.model, self.rows
        captured: dict[str, torch.Tensor] = {}

        def add_delta(out):
            # Block L's output is on block L's device; δ and the rows on the input device.
            ar = torch.arange(out.shape[0], device=out.device)
            subj = r.subj_pos.to(out.device)
            if "h" not in captured:
                captured["h"] = out[ar, subj].detach().float().to(delta.device)  # (rows, d)
            upd = torch.zeros_like(out)
            upd[ar, subj] = delta[r.row_req].to(out.device, out.dtype)
            return out + upd

        if self.replay and self.recorded:
            cached = first_output(self.recorded[self.layer])  # (rows, seq, d)
            with replay_blocks(model, self.layers_path, self.recorded, add_delta(cached)):
                logits = _selected_logits(model, r.batch, self.picks)
        elif self.replay:
            with record_block_outputs(model, self.layers_path, self.layer) as rec, \
                    edit_output(model, self.block_name, add_delta):
                logits = _selected_logits(model, r.batch, self.picks)
            self.recorded = dict(rec)
        else:
            with edit_output(model, self.block_name, add_delta):
                logits = _selected_logits(model, r.batch, self.picks)
        return PassOutput(*logits, h=captured.get("h"))

    def _first_suffix_pass(self, delta: torch.Tensor, done: torch.Tensor) -> PassOutput:
        """Decoder-only, first call: an undifferentiated full pass (records blocks 0..L, the
        prefixes' keys/values and the reference logits), then the suffix pass with ``delta``,
        kept only if it reproduces the reference; otherwise replayed full rows from now on."""
        model, r = self.model, self.rows
        with torch.no_grad(), record_block_outputs(model, self.layers_path, self.layer) as rec:
            reference, cache = _logits_and_cache(model, r.batch, self.picks)
        self.recorded = dict(rec)
        block_out = first_output(self.recorded[self.layer])  # (rows, T, d)
        h = block_out[torch.arange(block_out.shape[0], device=block_out.device),
                      r.subj_pos.to(block_out.device)].float().to(delta.device)  # (rows, d) δ = 0
        self.plan = self._suffix_plan(cache)
        del cache  # the plan keeps the prefixes' part; the full rows' cache goes now
        if self.plan is not None:
            out = self._suffix_pass(delta, done)
            if self._reproduces(reference, [out.tgt_logits, out.kl_logits]):
                out.h = h
                return out
            self.plan, self._running = None, None
        out = self(delta, done)  # replayed full rows
        out.h = h
        return out

    def _suffix_pass(self, delta: torch.Tensor, done: torch.Tensor) -> PassOutput:
        r = self.rows
        keep = (~done)[r.row_req]  # (rows,) rows of requests still optimising
        if self._running is None or not torch.equal(self._running[0], keep):
            selected = (self.plan, (None, None)) if bool(keep.all()) else self.plan.select(keep)
            self._running = (keep, *selected)
        _, plan, (tgt_kept, kl_kept) = self._running
        row_req = r.row_req if plan.row_index is None else r.row_req[plan.row_index]
        value = block_value(plan, first_output(self.recorded[self.layer]))  # (rows', S, d)
        value = value + _at_first_slot(value, delta[row_req])
        with replay_blocks(self.model, self.layers_path, self.recorded, value):
            hidden = suffix_hidden(self.model, plan)  # (rows', S, d)
        tgt_logits, kl_logits = _picked_logits(self.model, hidden, plan.picks)
        return PassOutput(tgt_logits, kl_logits, tgt_kept, kl_kept)

    def _suffix_plan(self, cache) -> SuffixPlan | None:
        """A suffix plan for this group's rows, or None where the shortcut does not apply."""
        try:
            return plan_suffix(cache, self.rows.batch, self.rows.subj_pos, self.picks)
        except Exception as err:  # noqa: BLE001 - a model the shortcut does not fit runs full rows
            logger.info("targets: every position runs (prefix cache not usable: %s)", err)
            return None

    def _reproduces(self, full_logits: list[torch.Tensor], logits: list[torch.Tensor]) -> bool:
        """Whether the suffix pass's logits equal the full pass's (δ = 0) to rounding."""
        tol = 1e-4 if next(self.model.parameters()).dtype == torch.float32 else 2e-2
        for full, fast in zip(full_logits, logits, strict=True):
            gap = float((full - fast.detach()).abs().max()) / (1.0 + float(full.abs().max()))
            if gap > tol:
                logger.info("targets: every position runs (suffix pass differs by %.2g)", gap)
                return False
        logger.debug("targets: above the edit block, %d of %d positions per row run",
                     self.plan.suffix_len, self.plan.full_len)
        return True
