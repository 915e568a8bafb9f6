"""``massedit trace``: trace one fact or many, write tables and heatmaps, suggest edit layers.

Files in ``--out`` (each written under a temporary name and renamed into place):

- one fact: ``trace.json`` (everything), ``trace.csv`` (one row per restored state),
  ``heatmap.png``;
- ``--known``: ``traces.jsonl`` (one fact a line, rewritten after every fact, so an interrupted
  run continues where it stopped when re-run with the same settings), ``average.json``,
  ``average.csv``, ``average.png``, and ``heatmap.png`` of the first fact;
- ``--suggest``: ``suggestion.json`` and ``presets/<method>.yaml`` for rome, memit and emmet.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from massedit.jobs.runs import write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TraceOptions:
    """Everything ``massedit trace`` was asked to do."""

    out: Path
    model: str
    prompt: str | None = None
    subject: str | None = None
    target: str | None = None
    kinds: tuple[str, ...] = ("hidden", "mlp", "attn")
    window: int | None = None  # None: a fifth of the model's depth (ROME's 10 of 48)
    noise: str = "3sd"
    samples: int = 10
    seed: int = 0
    batch_size: int = 32
    known: Path | None = None
    n: int = 50
    suggest: bool = False
    spread: int = 5
    dtype: str = "float32"
    device_map: str | None = None

    def settings(self, window: int) -> dict[str, Any]:
        """What decides a fact's trace (a resumed ``--known`` run must match it)."""
        return {"model": self.model, "kinds": list(self.kinds), "window": window,
                "noise": self.noise, "samples": self.samples, "seed": self.seed,
                "known": str(self.known), "dtype": self.dtype}


def check_options(opts: TraceOptions) -> None:
    """Bad usage fails before the model is loaded."""
    from massedit.trace.inputs import subject_template
    from massedit.trace.noise import parse_noise
    from massedit.trace.result import KINDS

    if opts.known is None and not (opts.prompt and opts.subject):
        raise ValueError("trace: give --prompt and --subject, or --known FILE")
    if opts.known is not None and opts.prompt:
        raise ValueError("trace: give either --prompt/--subject or --known, not both")
    if opts.prompt and opts.subject:
        subject_template(opts.prompt, opts.subject)  # the subject must be in the prompt
    unknown = [k for k in opts.kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"trace: unknown --kind {unknown}; choose hidden, mlp, attn or all")
    parse_noise(opts.noise)
    if opts.known is not None and not opts.known.is_file():
        raise ValueError(f"trace: --known file {opts.known} does not exist")


def run_trace(opts: TraceOptions, console) -> None:
    from massedit.models.loading import load_model
    from massedit.trace.fact import traced_stack
    from massedit.trace.suggest import default_window

    check_options(opts)
    model, tok = load_model(opts.model, dtype=opts.dtype, device_map=opts.device_map)
    depth = traced_stack(model).adapter.depth(model.config)  # the encoder's, for seq2seq
    window = opts.window or default_window(depth)
    opts.out.mkdir(parents=True, exist_ok=True)
    if opts.known is None:
        traces = [_trace_one(opts, model, tok, window, console)]
    else:
        traces = _trace_known(opts, model, tok, window, console)
    if opts.suggest:
        _suggest(opts, model, tok, traces, window, console)


def _trace_kwargs(opts: TraceOptions, window: int) -> dict[str, Any]:
    return dict(kinds=opts.kinds, window=window, noise=opts.noise, samples=opts.samples,
                seed=opts.seed, batch_size=opts.batch_size)


def _trace_one(opts: TraceOptions, model, tok, window: int, console):
    from massedit.trace import plot_trace, save_trace, trace_fact

    trace = trace_fact(model, tok, opts.prompt, opts.subject, target=opts.target,
                       **_trace_kwargs(opts, window))
    paths = save_trace(trace, opts.out)
    paths.append(plot_trace(trace, opts.out / "heatmap.png", model_name=Path(opts.model).name))
    _print_trace(trace, console)
    console.print("wrote " + ", ".join(str(p) for p in paths), highlight=False)
    return trace


def _print_trace(trace, console) -> None:
    from rich.table import Table

    console.print(
        f"answer {trace.answer!r}: clean p = {trace.clean_prob:.3f}, corrupted p = "
        f"{trace.corrupted_prob:.3f} (noise {trace.noise_scale:.4g}, {trace.samples} samples)",
        highlight=False, markup=False,
    )
    table = Table(title="strongest restoration per kind")
    for col in ("kind", "token", "layer", "p(answer)", "recovered"):
        table.add_column(col)
    span = trace.clean_prob - trace.corrupted_prob
    labels = trace.token_labels()
    for name, k in trace.kinds.items():
        flat = int(k.scores.argmax())
        row, layer = divmod(flat, k.scores.shape[1])
        p = float(k.scores[row, layer])
        share = (p - trace.corrupted_prob) / span if span > 0 else float("nan")
        table.add_row(name, labels[k.positions[row]], str(layer), f"{p:.3f}", f"{share:.0%}")
    console.print(table)


def _load_done(path: Path, settings: dict) -> dict[tuple[str, str], dict]:
    """Facts already traced with these settings by an earlier, interrupted run."""
    done: dict[tuple[str, str], dict] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("settings") == settings:
            done[(row["trace"]["prompt"], row["trace"]["subject"])] = row
    return done


def _trace_known(opts: TraceOptions, model, tok, window: int, console):
    from massedit.trace import (
        FactTrace,
        average_traces,
        load_known,
        plot_average,
        plot_trace,
        predicted_facts,
        trace_fact,
    )
    from massedit.trace.fact import traced_stack
    from massedit.trace.noise import noise_scale
    from massedit.trace.result import to_csv

    facts = load_known(opts.known)
    chosen = predicted_facts(model, tok, facts, opts.n)
    console.print(f"{len(chosen)} facts of {opts.known} are predicted by the model; tracing "
                  f"{len(chosen)}", highlight=False)
    settings = opts.settings(window)
    store = opts.out / "traces.jsonl"
    done = _load_done(store, settings)
    rows, traces = [], []
    # ROME: one noise scale for all facts, from the embeddings of all the file's subjects.
    scale = noise_scale(model, tok, opts.noise, [f["subject"] for f in facts],
                        traced_stack(model).embed)
    for i, fact in enumerate(chosen):
        key = (fact["prompt"], fact["subject"])
        if key in done:
            row = done[key]
        else:
            trace = trace_fact(model, tok, fact["prompt"], fact["subject"],
                               **{**_trace_kwargs(opts, window), "noise": scale})
            row = {"id": fact["id"], "settings": settings, "trace": trace.to_dict()}
        rows.append(row)
        traces.append(FactTrace.from_dict(row["trace"]))
        write_text_atomic(store, "".join(json.dumps(r) + "\n" for r in rows))
        logger.info("fact %d/%d %r -> %r: clean p=%.3f corrupted p=%.3f", i + 1, len(chosen),
                    fact["prompt"], traces[-1].answer, traces[-1].clean_prob,
                    traces[-1].corrupted_prob)
    avg = average_traces(traces)
    paths = [
        write_json_atomic(opts.out / "average.json", avg.to_dict()),
        write_text_atomic(opts.out / "average.csv", to_csv(avg.csv_rows())),
        plot_average(avg, opts.out / "average.png", model_name=Path(opts.model).name),
        plot_trace(traces[0], opts.out / "heatmap.png", model_name=Path(opts.model).name),
        store,
    ]
    console.print(f"averaged {avg.n_facts} facts: mean clean p = {avg.clean_prob:.3f}, "
                  f"corrupted p = {avg.corrupted_prob:.3f}", highlight=False)
    console.print("wrote " + ", ".join(str(p) for p in paths), highlight=False)
    return traces


def _suggest(opts: TraceOptions, model, tok, traces, window: int, console) -> None:
    from massedit.trace import suggest_from_traces, trace_fact

    if "mlp" not in opts.kinds:  # trace the one state the suggestion needs
        traces = [
            trace_fact(model, tok, t.prompt, t.subject, target=t.answer_ids, kinds=("mlp",),
                       window=window, noise=t.noise_scale, samples=opts.samples, seed=opts.seed,
                       batch_size=opts.batch_size, positions="subject_last")
            for t in traces
        ]
    suggestion = suggest_from_traces(traces, opts.spread)
    write_json_atomic(opts.out / "suggestion.json", asdict(suggestion))
    effects = ", ".join(f"{i}:{e:+.3f}" for i, e in enumerate(suggestion.effects))
    console.print(f"mean indirect effect of the MLP at the subject's last token, per layer "
                  f"(window {suggestion.window}, {suggestion.n_facts} facts): {effects}",
                  highlight=False, markup=False)
    for method in ("rome", "memit", "emmet"):
        text = suggestion.preset_yaml(method, opts.model)
        path = write_text_atomic(opts.out / "presets" / f"{method}.yaml", text)
        console.print(f"\n# --- {path} ---", highlight=False, markup=False)
        # soft_wrap: a preset is copied from the terminal, so rich must not break its lines
        console.print(text, highlight=False, markup=False, end="", soft_wrap=True)
    layers = ",".join(str(x) for x in suggestion.memit_layers)
    console.print(f"\nuse now: massedit edit --method memit --set layers=[{layers}] ...",
                  highlight=False, markup=False)
