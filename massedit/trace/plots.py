"""Heatmaps of traces, drawn with matplotlib's Agg canvas (no display, no global backend).

- :func:`plot_trace`: one fact, one panel per kind, tokens down and layers across, subject tokens
  marked ``*``, colour from the corrupted probability up (ROME's figure 1).
- :func:`plot_average`: many facts, one panel per kind, the six token categories down and layers
  across, colour = average indirect effect (ROME's figure 2).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from massedit.atomic import atomic_path
from massedit.trace.average import CATEGORIES, AverageTrace
from massedit.trace.result import KIND_TITLES, FactTrace

CMAPS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}


def _xlabel(kind: str, window: int) -> str:
    if kind == "hidden" or window == 1:
        return "single restored layer"
    return f"center of interval of {window} restored {'MLP' if kind == 'mlp' else 'attn'} layers"


def _save(fig: Figure, path: str | Path) -> Path:
    """Render to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path, suffix=f".tmp{path.suffix}") as tmp:  # savefig reads the extension
        fig.savefig(tmp, bbox_inches="tight", dpi=150)
    return path


def _layer_ticks(ax, depth: int) -> None:
    step = max(1, depth // 6)
    ticks = list(range(0, depth, step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])



def _panel(fig: Figure, i: int, n_panels: int, values, kind: str, window: int,
           rows: list[str], previous_rows: list[str] | None, title: str, bar_label: str,
           vmin: float | None = None) -> None:
    """Panel ``i``: ``values`` (rows, layers) as a heatmap with its colour bar."""
    ax = fig.add_subplot(1, n_panels, i + 1)
    image = ax.imshow(values.numpy(), cmap=CMAPS.get(kind, "Blues"), aspect="auto", vmin=vmin,
                      interpolation="nearest")
    ax.set_yticks(range(len(rows)))
    # Row names once per row of panels, unless a panel shows other rows.
    ax.set_yticklabels(rows if rows != previous_rows else [], fontsize=8)
    _layer_ticks(ax, values.shape[1])
    ax.set_xlabel(_xlabel(kind, window), fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax).set_label(bar_label, fontsize=8)

def plot_trace(trace: FactTrace, path: str | Path, model_name: str | None = None) -> Path:
    """Write the heatmaps of one fact's trace to ``path`` (PNG)."""
    kinds = list(trace.kinds)
    labels = trace.token_labels()
    height = 0.9 + 0.28 * max(len(k.positions) for k in trace.kinds.values())
    # Constrained layout keeps tick labels, colour bars and titles of neighbouring panels apart.
    fig = Figure(figsize=(4.2 * len(kinds), height + 1.0), layout="constrained")
    previous_rows = None
    for i, kind in enumerate(kinds):
        k = trace.kinds[kind]
        rows = [labels[p] for p in k.positions]
        _panel(fig, i, len(kinds), k.scores, kind, k.window, rows, previous_rows,
               f"restoring the {KIND_TITLES.get(kind, kind)}", f"p({trace.answer})",
               vmin=min(trace.corrupted_prob, float(k.scores.min())))
        previous_rows = rows
    where = f" in {model_name}" if model_name else ""
    fig.suptitle(
        f"{trace.prompt!r} -> {trace.answer!r}{where}: clean p={trace.clean_prob:.2f}, "
        f"corrupted p={trace.corrupted_prob:.2f}", fontsize=9,
    )
    return _save(fig, path)


def plot_average(avg: AverageTrace, path: str | Path, model_name: str | None = None) -> Path:
    """Write the average indirect effect per kind and token category to ``path`` (PNG)."""
    kinds = list(avg.kinds)
    fig = Figure(figsize=(4.4 * len(kinds), 3.0), layout="constrained")
    previous_rows = None
    for i, kind in enumerate(kinds):
        k = avg.kinds[kind]
        rows = [f"{c} ({n})" for c, n in zip(CATEGORIES, k.counts, strict=True)]
        _panel(fig, i, len(kinds), k.effect, kind, k.window, rows, previous_rows,
               f"average indirect effect of the {KIND_TITLES.get(kind, kind)}",
               "average indirect effect")
        previous_rows = rows
    where = f" ({model_name})" if model_name else ""
    fig.suptitle(
        f"{avg.n_facts} facts{where}: mean clean p={avg.clean_prob:.2f}, "
        f"corrupted p={avg.corrupted_prob:.2f}", fontsize=9,
    )
    return _save(fig, path)
