"""Sequential streams (lifelong editing): F facts written in batches of B, each batch on the model
the previous ones left, measured after every k batches (docs/design.md §9).

At each measurement point, with ``t`` facts written so far:

- *retention*: efficacy and paraphrase success over the facts written so far — all of them, or a
  fixed random sample of at most ``measure`` of the stream's facts (the same sample for every
  method and point, so curves are comparable);
- neighbourhood success of those facts (specificity as CounterFact measures it);
- perplexity of held-out text (a general-capability signal), when given;
- each edit site's weight growth ``‖W_t − W_0‖ / ‖W_0‖``.

A stream is resumable: each method's batches are checkpointed in its run folder (the
machinery of ``massedit edit``), and the points measured so far are kept in ``points.json``, so
a re-run continues after the last finished batch and measures only missing points.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from massedit.engine.patch import EditPatch
from massedit.jobs.runs import RunDir, fingerprint, write_json_atomic
from massedit.models.adapters import get_module, read_weight
from massedit.models.placement import input_device

from .evaluation import (
    EvalSettings,
    Reference,
    context_length,
    evaluate,
    summarize,
    unedited_reference,
)
from .readers import EvalCase

logger = logging.getLogger(__name__)

POINTS = "points.json"
METRICS = ("efficacy_success", "paraphrase_success", "neighborhood_success", "score")


@dataclass(frozen=True)
class StreamSettings:
    """How a stream is written and measured."""

    batch_size: int = 100
    every: int = 1  # measure after every k batches (and after the last)
    measure: int | None = 300  # facts in the retention sample; None: all
    seed: int = 0  # of the retention sample
    ppl_window: int = 256  # tokens per perplexity window
    eval: EvalSettings = field(default_factory=lambda: EvalSettings(fluency=False))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def retention_sample(n_facts: int, measure: int | None, seed: int = 0) -> list[int]:
    """Indices (sorted) of the stream's facts that retention is measured on."""
    if measure is None or measure >= n_facts:
        return list(range(n_facts))
    return sorted(random.Random(seed).sample(range(n_facts), measure))


def weight_growth(model, patch: EditPatch) -> dict[str, float]:
    """``‖W_now − W_0‖ / ‖W_0‖`` for every site ``patch`` changed (Frobenius norms)."""
    out = {}
    for site, original in patch.originals.items():
        layout = next(d.layout for d in patch.deltas if d.site == site)
        now = read_weight(get_module(model, site), layout).detach().double().cpu()
        base = original.double().cpu()
        out[site] = float((now - base).norm() / base.norm().clamp_min(1e-30))
    return out


@torch.no_grad()
def perplexity(model, ids: Sequence[int], window: int = 256) -> float:
    """Perplexity of ``ids`` read in consecutive windows of ``window`` tokens, or of the model's
    context when shorter (each window is scored on its own, its first token unscored)."""
    if len(ids) < 2:
        raise ValueError("perplexity needs at least two tokens of held-out text")
    window = min(window, context_length(model) or window)
    device = input_device(model)  # docs/design.md §12: the first parameter may be on meta
    total, count = 0.0, 0
    for lo in range(0, len(ids) - 1, window):
        chunk = torch.tensor([list(ids[lo : lo + window])], device=device)  # (1, w)
        if chunk.shape[1] < 2:
            break
        logits = model(input_ids=chunk, use_cache=False).logits.float()  # (1, w, vocab)
        nll = torch.nn.functional.cross_entropy(logits[0, :-1], chunk[0, 1:], reduction="sum")
        total += float(nll)
        count += chunk.shape[1] - 1
    return math.exp(total / count)


def measure_point(model, tok, cases: Sequence[EvalCase], written: int, sample: Sequence[int],
                  reference: Reference, settings: StreamSettings, patch: EditPatch | None,
                  heldout_ids: Sequence[int] | None) -> dict[str, Any]:
    """One row of the stream's table for the model as it is after ``written`` facts.
    ``reference`` holds the unedited model's results for ``sample`` (in its order)."""
    chosen = [j for j, i in enumerate(sample) if i < written]  # positions in the sample
    point: dict[str, Any] = {"facts_written": written, "n_measured": len(chosen)}
    if chosen:
        rows = evaluate(model, tok, [cases[sample[j]] for j in chosen], settings.eval,
                        reference.subset(chosen).locality_tokens)
        summary = summarize(rows)
        point.update({name: summary.get(name) for name in METRICS})
    if heldout_ids is not None:
        point["perplexity"] = perplexity(model, heldout_ids, settings.ppl_window)
    growth = weight_growth(model, patch) if patch is not None and patch.deltas else {}
    point["weight_growth"] = growth
    point["max_weight_growth"] = max(growth.values(), default=0.0)
    return point


def _load_points(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


def run_stream(model, tok, cases: Sequence[EvalCase], method: str, out: Path,
               settings: StreamSettings, *, editor_kwargs: dict[str, Any] | None = None,
               heldout_ids: Sequence[int] | None = None, reference: Reference | None = None,
               progress: bool = True) -> list[dict[str, Any]]:
    """Write ``cases`` with ``method`` as a stream into ``model``; returns the measured points
    (also kept in ``out/<method>/points.json``). The model is left unedited; the final patch is
    saved in ``out/<method>/patch``. ``reference`` (the unedited results on the retention
    sample) is computed when not given."""
    from massedit.editing.editor import Editor
    from massedit.jobs.sequential import edit_resumably

    sample = retention_sample(len(cases), settings.measure, settings.seed)
    folder = Path(out) / method
    points_path = folder / POINTS
    arguments = {"method": method, "n_facts": len(cases),
                 "cases": [str(c.case_id) for c in cases], "settings": settings.to_dict(),
                 "editor": {k: str(v) for k, v in sorted((editor_kwargs or {}).items())}}
    run = RunDir.open(folder, "stream", arguments, fingerprint(arguments))
    points = _load_points(points_path)
    done = {p["facts_written"] for p in points}
    if reference is None:
        reference = unedited_reference(model, tok, [cases[i] for i in sample], settings.eval)
    if 0 not in done:  # the unedited model's point: the start of every curve
        points.append(measure_point(model, tok, cases, 0, sample, reference, settings, None,
                                    heldout_ids))
        write_json_atomic(points_path, points)
    editor = Editor(model, tok, method, progress=progress, **(editor_kwargs or {}))
    requests = [c.request for c in cases]
    while len(cases) not in done:
        result = edit_resumably(editor, requests, settings.batch_size, run,
                                max_batches=settings.every, progress=progress)
        try:
            if result.requests_done not in done:
                point = measure_point(model, tok, cases, result.requests_done, sample,
                                      reference, settings, result.patch, heldout_ids)
                logger.info("%s after %d facts: %s", method, result.requests_done,
                            {k: point.get(k) for k in (*METRICS, "perplexity")})
                points.append(point)
                done.add(result.requests_done)
                write_json_atomic(points_path, sorted(points, key=lambda p: p["facts_written"]))
            if result.finished:
                result.patch.save(folder / "patch")
        finally:
            result.patch.revert(model)  # the next call re-applies the newest checkpoint
    return sorted(points, key=lambda p: p["facts_written"])
