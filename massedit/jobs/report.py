"""The before/after table of an edit run: what each prompt says and how likely each target is.

Probabilities follow docs/design.md §9: P(target) = exp(-mean per-token NLL of " " + target) after
the
prompt. Paraphrase and neighbourhood columns appear when the edit file gives those prompts;
they hold means over a request's prompts. The summary's successes are shares of prompts (×100):
efficacy and paraphrase P(new) > P(true), neighbourhood P(true) > P(new).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from massedit.engine.requests import EditRequest
from massedit.jobs.edit_files import EditSet
from massedit.jobs.runs import write_json_atomic, write_text_atomic

FAMILIES = ("prompt", "paraphrase", "neighborhood")
CHUNK = 64  # requests per scoring call: big enough to batch, small enough to show progress


@dataclass
class Measurement:
    """One request on one model: continuation and per-family lists of (P(new), P(true))."""

    continuation: str
    probs: dict[str, list[tuple[float, float | None]]]


def _family_prompts(req: EditRequest, family: str) -> tuple[str, ...]:
    return {"prompt": (req.text,), "paraphrase": req.paraphrases,
            "neighborhood": req.neighborhood}[family]


def measure(model, tok, requests: Sequence[EditRequest], *, desc: str = "measuring",
            max_new_tokens: int = 10, progress: bool = True) -> list[Measurement]:
    """Greedy continuations and target probabilities of every request on ``model``."""
    from massedit.evals.scoring import greedy_continuation, target_nll

    out: list[Measurement] = []
    for lo in tqdm(range(0, len(requests), CHUNK), desc=desc, unit="chunk", leave=False,
                   disable=not progress or len(requests) <= CHUNK):
        chunk = requests[lo : lo + CHUNK]
        prompts, targets, where = [], [], []
        for i, req in enumerate(chunk):
            for family in FAMILIES:
                for prompt in _family_prompts(req, family):
                    for target in (req.target_new, req.target_true):
                        if target is not None:
                            prompts.append(prompt)
                            targets.append(target)
                    where.append((i, family, req.target_true is not None))
        probs = torch.exp(-target_nll(model, tok, prompts, targets).double()).tolist()
        texts = greedy_continuation(model, tok, [r.text for r in chunk], max_new_tokens)
        found: list[dict[str, list]] = [{f: [] for f in FAMILIES} for _ in chunk]
        k = 0
        for i, family, has_true in where:
            p_true = probs[k + 1] if has_true else None
            found[i][family].append((probs[k], p_true))
            k += 2 if has_true else 1
        out += [Measurement(t.strip(), f) for t, f in zip(texts, found, strict=True)]
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def comparison_rows(edits: EditSet, before: Sequence[Measurement],
                    after: Sequence[Measurement]) -> list[dict[str, Any]]:
    """One flat row per request, suitable for CSV and JSON."""
    families = [f for f in FAMILIES[1:]
                if any(_family_prompts(r, f) for r in edits.requests)]
    rows = []
    for req, row, b, a in zip(edits.requests, edits.rows, before, after, strict=True):
        out: dict[str, Any] = {
            "row": row, "case_id": req.case_id, "subject": req.subject, "prompt": req.text,
            "target_new": req.target_new, "target_true": req.target_true,
            "continuation_before": b.continuation, "continuation_after": a.continuation,
        }
        for family in ("prompt", *families):
            name = "" if family == "prompt" else f"{family}_"
            for stage, m in (("before", b), ("after", a)):
                pairs = m.probs[family]
                out[f"{name}p_new_{stage}"] = _mean([p for p, _ in pairs])
                out[f"{name}p_true_{stage}"] = _mean([q for _, q in pairs])
        rows.append(out)
    return rows


def _success_share(measurements: Sequence[Measurement], family: str, new_wins: bool):
    hits = [(p > q) == new_wins for m in measurements for p, q in m.probs[family]
            if q is not None]
    return 100.0 * sum(hits) / len(hits) if hits else None


def summarise(edits: EditSet, before: Sequence[Measurement],
              after: Sequence[Measurement]) -> dict[str, dict[str, float | None]]:
    """Metric -> {"before": value, "after": value}; None where the file gives no data for it."""
    def mentions(ms: Sequence[Measurement]) -> float:
        hits = [r.target_new.lower() in m.continuation.lower()
                for r, m in zip(edits.requests, ms, strict=True)]
        return 100.0 * sum(hits) / len(hits)

    def mean_p(ms: Sequence[Measurement], index: int) -> float | None:
        return _mean([pair[index] for m in ms for pair in m.probs["prompt"]])

    metrics = {
        "efficacy_success": lambda ms: _success_share(ms, "prompt", True),
        "paraphrase_success": lambda ms: _success_share(ms, "paraphrase", True),
        "neighborhood_success": lambda ms: _success_share(ms, "neighborhood", False),
        "mean_p_new": lambda ms: mean_p(ms, 0),
        "mean_p_true": lambda ms: mean_p(ms, 1),
        "continuation_mentions_new": mentions,
    }
    summary = {name: {"before": f(before), "after": f(after)} for name, f in metrics.items()}
    return {k: v for k, v in summary.items() if v["before"] is not None}


def write_tables(run_dir: Path, rows: Sequence[dict[str, Any]], summary: dict) -> None:
    """``results.csv``, ``results.json`` (rows and summary) and ``summary.json``, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(run_dir / "results.csv", buffer.getvalue())
    write_json_atomic(run_dir / "results.json", {"summary": summary, "rows": list(rows)})
    write_json_atomic(run_dir / "summary.json", summary)


# ---- terminal -----------------------------------------------------------------------------------
def _fmt(value: float | None, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.1f}" if percent else f"{value:.3f}"


def _one_line(text: str, width: int = 30) -> str:
    """Newlines would break the table's rows, and the first words are what show the edit."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render(console, rows: Sequence[dict[str, Any]], summary: dict, *, limit: int = 20) -> None:
    """Per-request before/after table (first ``limit`` rows) and the summary, with rich."""
    from rich.table import Table

    table = Table(title="before -> after (greedy continuations)")
    table.add_column("row", style="dim", no_wrap=True)
    table.add_column("prompt", overflow="fold", ratio=3, min_width=12)
    table.add_column("new (true)", style="bold", overflow="fold", ratio=2, min_width=8)
    table.add_column("P(new)", no_wrap=True, min_width=11)
    for name, style in (("before", "red"), ("after", "green")):
        table.add_column(name, style=style, overflow="fold", ratio=3, min_width=10)
    for r in rows[:limit]:
        true = f" ({r['target_true']})" if r["target_true"] else ""
        table.add_row(
            str(r["row"]), r["prompt"], f"{r['target_new']}{true}",
            f"{_fmt(r['p_new_before'])}→{_fmt(r['p_new_after'])}",
            _one_line(r["continuation_before"]), _one_line(r["continuation_after"]),
        )
    console.print(table)
    if len(rows) > limit:
        console.print(f"... and {len(rows) - limit} more rows in results.csv")
    totals = Table(title=f"summary over {len(rows)} edits")
    for name in ("metric", "before", "after"):
        totals.add_column(name, justify="left" if name == "metric" else "right")
    for name, values in summary.items():
        percent = not name.startswith("mean_p")
        totals.add_row(name + (" (%)" if percent else ""), _fmt(values["before"], percent),
                       _fmt(values["after"], percent))
    console.print(totals)
