"""``massedit stream``: load the model and data, run each method's stream, write the report."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .evaluation import check_context, unedited_reference
from .readers import load_eval_dataset
from .stream import StreamSettings, retention_sample, run_stream
from .stream_report import write_stream_report

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamOptions:
    """Everything ``massedit stream`` was asked to do."""

    model: str
    dataset: str
    out: Path
    methods: tuple[str, ...] = ("memit",)
    n: int = 100
    settings: StreamSettings = field(default_factory=StreamSettings)
    heldout_text: str | None = None  # a text file for perplexity; None: no perplexity
    heldout_tokens: int = 4096
    stats_corpus: str | None = None
    stats_tokens: int | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    dtype: str = "float32"
    device_map: str | None = None
    progress: bool = True


def heldout_ids(tok, path: str, n_tokens: int) -> list[int]:
    """The first ``n_tokens`` tokens of a text file (read only as far as needed)."""
    ids: list[int] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                ids += tok(line, add_special_tokens=False)["input_ids"]
            if len(ids) >= n_tokens:
                break
    if len(ids) < 2:
        raise ValueError(f"{path}: not enough text for perplexity")
    return ids[:n_tokens]


def run_stream_study(opts: StreamOptions) -> dict[str, list[dict[str, Any]]]:
    """Run (or continue) every method's stream in ``opts.out``; write ``stream.md/png``."""
    from massedit.models.loading import load_model
    from massedit.stats.moments import StatsSpec

    cases = load_eval_dataset(opts.dataset, opts.n)
    if len(cases) < opts.n:
        raise ValueError(f"{opts.dataset} has only {len(cases)} cases; asked for {opts.n}")
    model, tok = load_model(opts.model, dtype=opts.dtype, device_map=opts.device_map)
    check_context(model, tok, cases, opts.settings.eval)
    ids = heldout_ids(tok, opts.heldout_text, opts.heldout_tokens) if opts.heldout_text else None
    sample = retention_sample(len(cases), opts.settings.measure, opts.settings.seed)
    # The unedited model's results on the sample serve every method.
    reference = unedited_reference(model, tok, [cases[i] for i in sample], opts.settings.eval)
    editor_kwargs = {"stats": StatsSpec(corpus=opts.stats_corpus, tokens=opts.stats_tokens),
                     **opts.overrides}
    opts.out.mkdir(parents=True, exist_ok=True)
    by_method = {}
    for method in opts.methods:
        logger.info("stream of %d facts in batches of %d with %s", len(cases),
                    opts.settings.batch_size, method)
        by_method[method] = run_stream(model, tok, cases, method, opts.out, opts.settings,
                                       editor_kwargs=editor_kwargs, heldout_ids=ids,
                                       reference=reference, progress=opts.progress)
    description = (f"Model `{opts.model}`, data set `{opts.dataset}`: {len(cases)} facts in "
                   f"batches of {opts.settings.batch_size}, measured every "
                   f"{opts.settings.every} batch(es) on {len(sample)} of the facts; perplexity "
                   f"on {opts.heldout_tokens} tokens of `{opts.heldout_text}`.")
    write_stream_report(opts.out, by_method, description)
    return by_method
