"""The stream study's outputs: one table per checkpoint and method, and the curves against facts
written (retention, neighbourhood success, perplexity, weight growth), one line per method."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from massedit.jobs.runs import write_text_atomic

from .plots import _save, plt

# (metric, panel title); retention is ES and PS on one panel.
STREAM_PANELS = (
    (("efficacy_success", "paraphrase_success"), "Retention: ES (—), PS (- -) of facts written"),
    (("neighborhood_success",), "Neighbourhood success (NS)"),
    (("perplexity",), "Perplexity of held-out text"),
    (("max_weight_growth",), "Largest ‖W − W₀‖ / ‖W₀‖ over edit sites"),
)
COLUMNS = ("facts_written", "n_measured", "efficacy_success", "paraphrase_success",
           "neighborhood_success", "score", "perplexity", "max_weight_growth")


def curve(points: Sequence[Mapping[str, Any]], metric: str) -> list[tuple[int, float]]:
    """``[(facts written, value), ...]`` for the points that have ``metric``."""
    return [(int(p["facts_written"]), float(p[metric])) for p in points
            if p.get(metric) is not None]


def plot_stream(by_method: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path
                ) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Four panels against facts written; returns the drawn curves ``{metric: {method: xy}}``."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    drawn: dict[str, dict[str, list[tuple[int, float]]]] = {}
    colours = {m: f"C{i}" for i, m in enumerate(sorted(by_method))}
    for ax, (metrics, title) in zip(axes.flat, STREAM_PANELS, strict=True):
        for metric, style in zip(metrics, ("-", "--"), strict=False):
            drawn[metric] = {}
            for method, points in sorted(by_method.items()):
                xy = curve(points, metric)
                drawn[metric][method] = xy
                if xy:
                    xs, ys = zip(*xy, strict=True)
                    ax.plot(xs, ys, style, marker="o", color=colours[method],
                            label=method if style == "-" else None)
        ax.set_title(title)
        ax.set_xlabel("facts written")
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[:2]:
        ax.set_ylim(-5, 105)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _save(fig, path)
    return drawn


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def markdown_table(by_method: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    lines = ["| method | " + " | ".join(COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for method, points in sorted(by_method.items()):
        for p in points:
            row = {**p, "max_weight_growth": 100 * p.get("max_weight_growth", 0.0)}
            lines.append(f"| {method} | " + " | ".join(_fmt(row.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines)


def write_stream_report(out: Path, by_method: Mapping[str, Sequence[Mapping[str, Any]]],
                        description: str) -> Path:
    """``stream.md`` (table and plot) and ``stream.png`` in ``out``."""
    plot_stream(by_method, out / "stream.png")
    text = (f"# Sequential stream\n\n{description}\n\n"
            "Success metrics ×100 over the retention sample of the facts written so far; "
            "weight growth ×100 (per cent of ‖W₀‖).\n\n"
            f"{markdown_table(by_method)}\n\n![stream](stream.png)\n")
    return write_text_atomic(out / "stream.md", text)
