"""PNG plots of a comparison study (matplotlib, Agg backend: no display needed).

Each function returns the series it drew, ``{panel: {label: [(batch_size, mean, std), ...]}}``,
so callers (and tests) can check the picture holds the table's numbers. Points are means over
seeds; the bars are the standard deviation over seeds when there are several.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from massedit.atomic import atomic_path  # noqa: E402

Series = dict[str, dict[str, list[tuple[int, float, float]]]]

SCORE_PANELS = (
    ("score", "Score (harmonic mean)"),
    ("efficacy_success", "Efficacy success (ES)"),
    ("paraphrase_success", "Paraphrase success (PS)"),
    ("neighborhood_success", "Neighborhood success (NS)"),
)


def series(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[str, list[tuple]]:
    """``{label: [(batch_size, mean, std), ...]}`` over finished rows, sorted by batch size."""
    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row.get("status") != "finished" or row.get(metric) is None:
            continue
        values[row["label"]][int(row["batch_size"])].append(float(row[metric]))
    out = {}
    for label, by_size in values.items():
        out[label] = [(b, statistics.fmean(v), statistics.pstdev(v) if len(v) > 1 else 0.0)
                      for b, v in sorted(by_size.items())]
    return out


def _save(fig, path: str | Path) -> None:
    """Write under a temporary name, then rename: no half-written PNG after an interruption."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)


def _draw(ax, found: dict[str, list[tuple]], log_y: bool = False) -> None:
    for label, points in sorted(found.items()):
        xs, ys, errs = zip(*points, strict=True)
        ax.errorbar(xs, ys, yerr=errs if any(errs) else None, marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("batch size (edits written at once)")
    ax.grid(True, which="both", alpha=0.3)


def plot_scores(rows: Sequence[Mapping[str, Any]], path: str | Path,
                unedited: Mapping[str, float] | None = None) -> Series:
    """Score, ES, PS and NS vs batch size, one line per editor; the unedited model dashed."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), sharex=True)
    drawn: Series = {}
    for ax, (metric, title) in zip(axes.flat, SCORE_PANELS, strict=True):
        drawn[metric] = series(rows, metric)
        _draw(ax, drawn[metric])
        if unedited and unedited.get(metric) is not None:
            ax.axhline(unedited[metric], color="grey", linestyle="--", label="unedited")
        ax.set_title(title)
        ax.set_ylim(-5, 105)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat[1:]:  # the unedited line may appear only on some panels
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4) or 1)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    _save(fig, path)
    return drawn


def plot_time(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Series:
    """Seconds per edit vs batch size (log-log), one line per editor."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn: Series = {"seconds_per_edit": series(rows, "seconds_per_edit")}
    _draw(ax, drawn["seconds_per_edit"], log_y=True)
    ax.set_ylabel("seconds per edit")
    ax.set_title("Edit time per fact")
    if drawn["seconds_per_edit"]:
        ax.legend()
    fig.tight_layout()
    _save(fig, path)
    return drawn
