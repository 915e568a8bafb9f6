"""``massedit stats``: fill the statistics cache the editor reads, for a method's layers or any.

The sites, token budget and spec are resolved exactly as the editor resolves them (an
``Editor`` is built for the method and asked), so a later edit with the same options finds every
file and computes nothing. Bad input (layers the model lacks, an unreadable corpus, an unwritable
cache folder) is reported before the model is run; files are written atomically.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from massedit.data.locations import cache_root
from massedit.stats.cache import check_writable
from massedit.stats.moments import StatsSpec, cache_path, check_corpus, fingerprint

logger = logging.getLogger(__name__)
STATS_DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class StatsOptions:
    model: str
    method: str | None = None
    layers: str | None = None  # "4-8", "2,3,5-6"
    corpus: str | None = None
    tokens: int | None = None
    max_length: int = StatsSpec.max_length
    batch_size: int = StatsSpec.batch_size
    dtype: str = "float32"  # of the sums
    seed: int = 0
    cache_dir: str | None = None
    checkpoint_every: int | None = None
    model_dtype: str = "float32"
    device_map: str | None = None

    def spec(self) -> StatsSpec:
        return StatsSpec(corpus=self.corpus, tokens=self.tokens, max_length=self.max_length,
                         batch_size=self.batch_size, dtype=self.dtype, seed=self.seed,
                         cache_dir=self.cache_dir, checkpoint_every=self.checkpoint_every)


def parse_layers(text: str) -> tuple[int, ...]:
    """``"4-8"`` -> (4, 5, 6, 7, 8); ``"2,3,6-7"`` -> (2, 3, 6, 7)."""
    layers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise ValueError(f"--layers {text!r}: write layers as 4-8 or 2,3,5")
        lo, hi = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if hi < lo:
            raise ValueError(f"--layers {text!r}: range {part} runs backwards")
        layers.extend(range(lo, hi + 1))
    return tuple(sorted(set(layers)))


def _validate(opts: StatsOptions) -> tuple[int, ...] | None:
    if opts.dtype not in STATS_DTYPES:
        raise ValueError(f"--dtype {opts.dtype!r}: statistics are summed in float32 or float64")
    if not opts.method and not opts.layers:
        raise ValueError("give --method (its preset's layers) or --layers (e.g. 4-8)")
    layers = parse_layers(opts.layers) if opts.layers else None
    check_writable(cache_root(opts.cache_dir))
    if opts.corpus:
        check_corpus(opts.corpus)
    return layers


def _editor(model, tok, opts: StatsOptions, layers: tuple[int, ...] | None):
    """The editor a later edit would build: it decides layers and the default token budget."""
    from massedit.editing.editor import Editor
    from massedit.models.adapters import get_adapter

    if layers is not None:
        depth = get_adapter(model).depth(model.config)
        bad = [layer for layer in layers if layer >= depth]
        if bad:
            raise ValueError(f"--layers {opts.layers}: layer(s) {bad} do not exist; this model "
                             f"has {depth} layers (0-{depth - 1})")
    overrides = {"layers": layers} if layers is not None else {}
    return Editor(model, tok, method=opts.method or "memit", stats=opts.spec(), progress=False,
                  **overrides)


def run_stats(opts: StatsOptions, console) -> dict:
    """Compute (or find) the statistics; returns the record ``get_moments`` gives."""
    from massedit.models.loading import load_model
    from massedit.stats.distributed import detect_dist
    from massedit.stats.moments import get_moments, resolve_corpus

    layers = _validate(opts)
    dist = detect_dist()  # before loading: a GPU process puts its model on its own device
    model, tok = load_model(opts.model, dtype=opts.model_dtype, device_map=opts.device_map)
    if dist.device is not None and opts.device_map is None:
        model.to(dist.device)
    editor = _editor(model, tok, opts, layers)
    spec = opts.spec()
    corpus = resolve_corpus(spec, model, tok)
    spec = StatsSpec(**{**spec.__dict__, "corpus": corpus})
    tokens = editor.stats_tokens(corpus)
    # --layers are taken as given (a single-layer method would keep only the last one).
    sites = list(layers) if layers is not None else editor.layers
    moments, record = get_moments(model, tok, sites, spec, tokens, require_cache=True)
    if dist.is_main:
        _report(console, model, sites, spec, corpus, tokens, moments, record)
    return record


def _report(console, model, layers, spec, corpus, tokens, moments, record) -> None:
    from rich.table import Table

    from massedit.models.adapters import get_adapter
    from massedit.stats.listing import human_size

    adapter = get_adapter(model)
    root = cache_root(spec.cache_dir)
    d_in = adapter.mlp_width(model.config)
    table = Table(title=f"key statistics: {corpus}, {tokens} tokens asked "
                        f"({tokens / d_in:.3g}× the MLP width {d_in})")
    for column in ("site", "tokens", "status", "file", "size"):
        table.add_column(column)
    for layer in layers:
        site = adapter.site_name(layer)
        path = cache_path(root, fingerprint(model, site, spec, corpus, tokens))
        status = "cached" if layer in record["cached_layers"] else "computed"
        size = human_size(path.stat().st_size) if path.exists() else "-"
        table.add_row(site, str(moments[layer].count), status, _short(path, root), size)
    console.print(table)
    if record["computed_layers"]:
        per = record.get("tokens_per_process", [])
        console.print(f"{record['processes']} process(es) took part; tokens per process: "
                      f"{', '.join(map(str, per))}" +
                      (f"; resumed at {record['resumed_at']} tokens" if record.get("resumed_at")
                       else ""))
    console.print(f"cache: {root}")


def _short(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
