"""The outputs of a comparison study: combined table (CSV/JSON), plots, Markdown report, and the
terminal table. Numbers are copied from the per-combination result files, never recomputed."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from massedit.jobs.runs import write_json_atomic, write_text_atomic

from .plots import plot_scores, plot_time

METRICS = (
    "score", "efficacy_success", "paraphrase_success", "neighborhood_success",
    "efficacy_magnitude", "paraphrase_magnitude", "neighborhood_magnitude",
    "reliability", "generalization", "locality", "fluency",
)
COLUMNS = ("label", "method", "objective", "distribution", "batch_size", "sequential", "seed",
           "status", *METRICS, "seconds_per_edit", "seconds", "n_edits", "targets_reused",
           "error")
SHORT = {"score": "Score", "efficacy_success": "ES", "paraphrase_success": "PS",
         "neighborhood_success": "NS", "efficacy_magnitude": "EM", "paraphrase_magnitude": "PM",
         "neighborhood_magnitude": "NM", "fluency": "Fluency", "seconds_per_edit": "s/edit"}


def table_rows(unedited: Mapping[str, float], records: Sequence[Mapping[str, Any]]
               ) -> list[dict[str, Any]]:
    """The unedited model first, then one row per combination (failed ones with their error)."""
    rows = [{"label": "unedited", "method": "unedited", "status": "finished",
             **{m: unedited.get(m) for m in METRICS}}]
    for rec in records:
        combo = rec["combination"]
        summary = rec.get("summary", {})
        row: dict[str, Any] = {
            "label": rec["label"], "method": combo["method"],
            "objective": rec.get("objective", combo["objective"]),
            "distribution": rec.get("distribution", combo["distribution"]),
            "batch_size": combo["batch_size"], "sequential": combo["sequential"],
            "seed": combo["seed"], "status": rec["status"],
            **{m: summary.get(m) for m in METRICS},
        }
        for key in ("seconds_per_edit", "seconds", "n_edits", "targets_reused", "error"):
            row[key] = rec.get(key)
        rows.append(row)
    return [{c: row.get(c) for c in COLUMNS} for row in rows]


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def format_cell(value: Any, digits: int = 1) -> str:
    """A table cell: "-" for a missing value, 3 significant digits below 1, else `digits`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The headline columns as a Markdown table (all columns are in results.csv)."""
    cols = ("label", "batch_size", "seed", "status", "score", "efficacy_success",
            "paraphrase_success", "neighborhood_success", "efficacy_magnitude",
            "paraphrase_magnitude", "neighborhood_magnitude", "fluency", "seconds_per_edit")
    lines = ["| " + " | ".join(SHORT.get(c, c) for c in cols) + " |",
             "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(row.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def markdown_report(study: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                    plots: Sequence[str]) -> str:
    """A short report: what was run, the table, the plots, failures."""
    args = study["arguments"]
    failed = [r for r in rows if r["status"] == "error"]
    parts = [
        "# Editing study",
        "",
        f"Model `{args['model']}`, data set `{args['dataset']}` ({args['n_cases']} cases), "
        f"statistics `{args['stats_corpus'] or 'default corpus'}`. Metrics ×100 as docs/design.md "
        f"§9 "
        "defines them (ES/PS/NS: share of prompts where the right target is more probable; "
        "EM/PM/NM: mean probability differences; Score: harmonic mean of ES, PS, NS; Fluency: "
        "ROME's n-gram entropy ×100). Batch mode edits each batch on the unedited model; "
        "sequential mode writes the batches one on top of another. Times include the original "
        "cost of targets shared between combinations.",
        "",
        markdown_table(rows),
        "",
    ]
    parts += [f"![{Path(p).stem}]({p})\n" for p in plots]
    if failed:
        parts += ["## Failed combinations", ""]
        parts += [f"- `{r['label']}` batch {r['batch_size']} seed {r['seed']}: {r['error']}"
                  for r in failed]
        parts.append("")
    versions = ", ".join(f"{k} {v}" for k, v in study.get("versions", {}).items())
    parts += ["Per-combination results: `combinations/*.json`; all columns: `results.csv`.",
              "", f"Versions: {versions}.", ""]
    return "\n".join(parts)


def write_study_outputs(out: Path, unedited: Mapping[str, float],
                        records: Sequence[Mapping[str, Any]], study: Mapping[str, Any]
                        ) -> list[dict[str, Any]]:
    """``results.csv``, ``results.json``, ``study.json``, ``plots/*.png``, ``report.md``."""
    rows = table_rows(unedited, records)
    write_text_atomic(out / "results.csv", _csv(rows))
    write_json_atomic(out / "results.json", {"unedited": dict(unedited), "rows": rows})
    write_json_atomic(out / "study.json", study)
    (out / "plots").mkdir(exist_ok=True)
    edited = rows[1:]
    plot_scores(edited, out / "plots" / "scores_vs_batch_size.png", unedited)
    plot_time(edited, out / "plots" / "time_per_edit.png")
    plots = ["plots/scores_vs_batch_size.png", "plots/time_per_edit.png"]
    write_text_atomic(out / "report.md", markdown_report(study, rows, plots))
    return rows


def render_study(console, rows: Sequence[Mapping[str, Any]]) -> None:
    """The combined table on the terminal (rich)."""
    from rich.table import Table

    cols = ("label", "batch_size", "seed", "status", "score", "efficacy_success",
            "paraphrase_success", "neighborhood_success", "fluency", "seconds_per_edit")
    table = Table(title="editing study (metrics ×100)")
    for c in cols:
        table.add_column(SHORT.get(c, c), justify="left" if c in ("label", "status") else "right")
    for row in rows:
        status = row["status"] if row["status"] != "error" else "[red]error[/red]"
        table.add_row(*[status if c == "status" else format_cell(row.get(c)) for c in cols])
    console.print(table)
