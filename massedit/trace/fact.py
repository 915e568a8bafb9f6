"""``trace_fact``: ROME's causal trace of one fact (Meng et al. 2022, §2.1; docs/design.md §8).

1. Clean run: record every block, MLP and attention output, and P(answer).
2. Corrupted run: add Gaussian noise to the subject's token embeddings; P(answer) drops.
3. For each token position and layer, rerun corrupted but restore one state (kind ``hidden``:
   the block output; ``mlp``/``attn``: that module's output at a window of layers centred on the
   layer, as ROME) to its clean value, and record how much of P(answer) comes back.

Encoder-decoder models (T5, BART, Marian) are traced in the encoder: its states are noised and
restored, and the answer is read in the decoder with teacher forcing.

>>> trace = trace_fact(model, tok, "The Eiffel Tower is in", "Eiffel Tower")   # doctest: +SKIP
>>> trace.kinds["hidden"].scores.shape       # (tokens, layers)             # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from massedit.engine.forward import model_device
from massedit.engine.hooks import capture
from massedit.evals.scoring import inference_mode
from massedit.models.adapters import ModelAdapter, get_adapter, get_module
from massedit.trace.inputs import (
    TraceInput,
    answer_input,
    decode_tokens,
    target_input,
    tokenise_fact,
)
from massedit.trace.noise import draw_noise, noise_scale
from massedit.trace.restore import CorruptedRunner, Restoration
from massedit.trace.result import KINDS, FactTrace, KindTrace

logger = logging.getLogger(__name__)


def site_name(adapter: ModelAdapter, kind: str, layer: int) -> str:
    """The module whose output a restoration of ``kind`` at ``layer`` copies."""
    if kind == "hidden":
        return adapter.block_name(layer)
    if kind == "mlp":
        return adapter.mlp_name(layer)
    if kind == "attn":
        return adapter.attn_name(layer)
    raise ValueError(f"unknown trace kind {kind!r}; choose from {', '.join(KINDS)}")


def window_layers(layer: int, window: int, depth: int) -> range:
    """ROME's window: ``window`` layers centred on ``layer``, clipped to the model."""
    return range(max(0, layer - window // 2), min(depth, layer - (-window // 2)))


@dataclass(frozen=True)
class TracedStack:
    """The stack whose states are traced: the model itself, or an encoder-decoder's encoder."""

    adapter: ModelAdapter  # block/MLP/attention names of that stack
    embed: str  # the embedding module whose output is noised
    decoder_start: int | None  # encoder-decoder models: the decoder's first input


def traced_stack(model) -> TracedStack:
    adapter = get_adapter(model)
    if not (adapter.encoder_decoder or getattr(model.config, "is_encoder_decoder", False)):
        return TracedStack(adapter, adapter.embed, None)
    from massedit.models.seq2seq import decoder_start

    encoder = adapter.stack("encoder") if hasattr(adapter, "stack") else adapter
    # The encoder's own embedding call ("encoder.embed_tokens", "model.encoder.embed_tokens"),
    # which may be the shared module: the noise hook touches only its first call per pass.
    embed = f"{encoder.layers.rsplit('.', 1)[0]}.embed_tokens"
    try:
        get_module(model, embed)
    except ValueError:
        embed = encoder.embed
    return TracedStack(encoder, embed, decoder_start(model))


@torch.no_grad()
def _greedy_input(model, tok, prompt: str, subject: str, start: int | None) -> TraceInput:
    text, ids, subject_range = tokenise_fact(tok, prompt, subject, keep_eos=start is not None)
    # With a one-token answer, the model inputs are exactly "predict what follows the prompt".
    probe = answer_input(tok, text, subject, ids, subject_range, [0], "", start)
    logits = model(**probe.model_inputs(model_device(model)), use_cache=False).logits
    top = int(logits[0, -1].argmax())
    return answer_input(tok, text, subject, ids, subject_range, [top],
                        tok.decode([top]).strip(), start)


def _clean_run(model, inp: TraceInput, names: Sequence[str]):
    """Clean outputs ``{name: (T, d)}``, P(answer), and the greedy ids at the answer positions."""
    t = len(inp.answer_ids)
    with capture(model, names) as seen:
        out = model(**inp.model_inputs(model_device(model)), use_cache=False)
        logits = out.logits[0, -t:]  # (t, vocab)
    logp = logits.float().log_softmax(-1)
    answer = torch.tensor(inp.answer_ids, device=logp.device)
    prob = float(logp.gather(-1, answer[:, None]).mean().exp())
    return {n: v[0] for n, v in seen.items()}, prob, logits.argmax(-1).tolist()


def build_restorations(
    adapter: ModelAdapter, kind: str, positions: Sequence[int], depth: int, window: int
) -> list[Restoration]:
    """One restoration per (position, layer), position-major (rows of the score table)."""
    out = []
    for pos in positions:
        for layer in range(depth):
            layers = [layer] if kind == "hidden" else list(window_layers(layer, window, depth))
            patches = tuple((site_name(adapter, kind, lay), pos) for lay in layers)
            out.append(Restoration(patches, first_layer=layers[0]))
    return out


def trace_fact(
    model,
    tok,
    prompt: str,
    subject: str,
    *,
    target: str | Sequence[int] | None = None,
    kinds: Sequence[str] = KINDS,
    window: int = 10,
    noise: str | float = "3sd",
    noise_subjects: Sequence[str] | None = None,
    samples: int = 10,
    seed: int = 0,
    batch_size: int = 32,
    positions: Sequence[int] | str | None = None,
    reuse_prefix: bool = True,
    suffix: bool = True,
) -> FactTrace:
    """Trace one fact; ``prompt`` contains ``subject`` (written out, or as ``{}``).

    ``target``: the answer whose probability is measured, as text or token ids (default: the
    clean model's greedy next token; a warning is logged when the model does not predict a given
    target). ``noise``:
    ``"3sd"`` (3 x the std of the subject-token embeddings of ``noise_subjects``, default this
    subject) or an absolute scale. ``batch_size``: restorations per forward pass, each with
    ``samples`` noise samples (halved automatically when memory runs out). ``positions``: token
    positions to restore (default all; ``"subject_last"`` for the subject's last token only).
    ``reuse_prefix=False`` recomputes the unrestored lower blocks in every pass, and
    ``suffix=False`` the positions before each restoration's first token (both for timing).
    """
    stack = traced_stack(model)
    adapter, seq2seq = stack.adapter, stack.decoder_start is not None
    kinds = tuple(dict.fromkeys(kinds))
    for kind in kinds:
        site_name(adapter, kind, 0)  # unknown kinds fail before any work
    if samples < 1 or window < 1:
        raise ValueError(f"trace: samples ({samples}) and window ({window}) must be >= 1")
    depth = adapter.depth(model.config)
    with inference_mode(model):
        if target is None:
            inp = _greedy_input(model, tok, prompt, subject, stack.decoder_start)
        else:
            inp = target_input(tok, prompt, subject, target, stack.decoder_start)
        names = [site_name(adapter, k, lay) for k in kinds for lay in range(depth)]
        clean, clean_prob, greedy = _clean_run(model, inp, names)
        predicted = list(greedy) == list(inp.answer_ids)
        shown = tok.decode(greedy).strip()
        if not predicted:
            logger.warning(
                "the model does not predict %r after %r (it predicts %r); effects are measured "
                "for the given target", inp.answer, inp.prompt, shown,
            )
        lo, hi = inp.subject_range
        scale = noise_scale(model, tok, noise, noise_subjects or [subject], stack.embed)
        noise_t = draw_noise(samples, hi - lo, adapter.width(model.config), scale, seed)
        runner = CorruptedRunner(
            model, inp.model_inputs(), inp.answer_ids, inp.subject_range, clean, noise_t,
            embed_name=stack.embed, layers_path=adapter.layers,
            # T5 blocks pass a batch-shaped position bias along: no replay in encoders.
            reuse_prefix=reuse_prefix and not seq2seq, keep_logits=not seq2seq, suffix=suffix,
        )
        corrupted = runner.corrupted_probability()
        if positions is None:
            rows = tuple(range(inp.n_tokens))
        elif positions == "subject_last":
            rows = (inp.subject_last,)
        else:
            rows = tuple(int(p) for p in positions)
            if any(not 0 <= p < inp.n_tokens for p in rows):
                raise ValueError(f"trace: positions {rows} outside the prompt's {inp.n_tokens}")
        plan = {k: build_restorations(adapter, k, rows, depth, window) for k in kinds}
        everything = [r for k in kinds for r in plan[k]]
        probs = runner.probabilities(everything, batch_size)  # (kinds * rows * depth,)
    logger.debug("%d restorations in %d forward passes", len(everything), runner.forward_passes)
    result = FactTrace(
        prompt=inp.prompt, subject=subject, answer=inp.answer, answer_ids=inp.answer_ids,
        tokens=decode_tokens(tok, inp.prompt_ids), subject_range=inp.subject_range,
        clean_prob=clean_prob, corrupted_prob=corrupted, answer_predicted=predicted,
        predicted=shown, noise_scale=scale, samples=samples, seed=seed,
    )
    for i, kind in enumerate(kinds):
        per_kind = probs[i * len(rows) * depth : (i + 1) * len(rows) * depth]
        result.kinds[kind] = KindTrace(
            kind, 1 if kind == "hidden" else window, rows, per_kind.view(len(rows), depth)
        )
    return result
