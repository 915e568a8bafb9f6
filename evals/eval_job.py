"""``massedit eval``: score a model (and optionally a patch on it) on a benchmark.

Order: read and check the cases, load the model, evaluate the UNEDITED model (``pre``; its argmax
tokens are the locality reference), then apply the patch and evaluate again (``post``). Every file
is written into a temporary folder renamed to ``--out`` at the end, so an interrupted evaluation
leaves nothing half-written.

Records whose edit is unusable (record 534 of the developers' zsRE dev file has an empty ``alt``,
i.e. no new target) are skipped with a warning and listed in ``config.json`` under
``dataset.skipped``; ``--n`` counts the cases that remain. A record missing a field is an error
naming its index. ``config.json`` also names the file that was read and its sha256: a named data
set may come from the ``$MASSEDIT_DATA`` mirror (possibly a subset), the cache or a download.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from massedit.jobs.runs import atomic_dir, ensure_new_output

from .evaluation import (
    EvalSettings,
    check_context,
    evaluate,
    library_versions,
    summarize,
    unedited_reference,
)
from .in_context import cases_for_patch
from .readers import EvalCase, load_eval_dataset

logger = logging.getLogger(__name__)

CASE_FIELDS = ("case_id", "subject", "prompt", "target_new", "target_true")


@dataclass(frozen=True)
class EvalOptions:
    """Everything ``massedit eval`` was asked to do."""

    model: str
    dataset: str
    n: int | None = None  # None: every record
    patch: Path | None = None
    out: Path | None = None
    references: Path | None = None
    settings: EvalSettings = field(default_factory=EvalSettings)
    dtype: str = "float32"
    device_map: str | None = None


@dataclass
class EvalResult:
    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, float | None]]  # metric -> {"pre": value, "post": value}
    out: Path | None


def parse_n(text: str) -> int | None:
    """``--n``: a positive count or ``all``."""
    if text.strip().lower() == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"--n must be a positive number or 'all', got {text!r}") from None
    if n < 1:
        raise ValueError(f"--n must be a positive number or 'all', got {n}")
    return n


def load_cases(dataset: str, n: int | None) -> tuple[list[EvalCase], list[int]]:
    """The cases and the indices of records skipped as unusable (see the module docstring)."""
    skipped: list[int] = []
    cases = load_eval_dataset(dataset, n, skip_invalid=True, skipped=skipped)
    return cases, skipped


def dataset_record(dataset: str) -> dict[str, str]:
    """Which file ``--dataset`` read, and its sha256 (for config.json)."""
    from massedit.data.datasets import dataset_file
    from massedit.data.download import sha256_file

    from .readers import NAMED_DATASETS

    path = dataset_file(dataset) if dataset in NAMED_DATASETS else Path(dataset)
    return {"file": str(Path(path).resolve()), "sha256": sha256_file(path)}


def _read_references(path: Path | None) -> dict[str, list[str]] | None:
    """``{case_id: [reference texts]}`` for TF-IDF consistency; keys compared as strings."""
    if path is None:
        return None
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping case_id to a list of texts")
    return {str(k): [v] if isinstance(v, str) else list(v) for k, v in data.items()}


class _StrKeys(dict):
    """Look case ids up by their string form (JSON object keys are strings)."""

    def __contains__(self, key: object) -> bool:
        return super().__contains__(str(key))

    def __getitem__(self, key: object):
        return super().__getitem__(str(key))


def run_eval(opts: EvalOptions, console) -> EvalResult:
    """Evaluate, write the files (when ``opts.out``) and print the summary table."""
    from massedit.models.loading import load_model

    if opts.out is not None:
        ensure_new_output(opts.out)
    cases, skipped = load_cases(opts.dataset, opts.n)
    if skipped:
        logger.warning("skipped %d record(s) with an unusable edit (e.g. an empty target): %s",
                       len(skipped), skipped[:20])
    references = _read_references(opts.references)
    patch = None
    if opts.patch is not None:
        from massedit.jobs.patches import load_patch

        patch = load_patch(opts.patch)
    model, tok = load_model(opts.model, dtype=opts.dtype, device_map=opts.device_map)
    check_context(model, tok, cases, opts.settings)
    refs = _StrKeys(references) if references else None

    logger.info("evaluating the unedited model on %d case(s)", len(cases))
    reference = unedited_reference(model, tok, cases, opts.settings, references=refs)
    post_rows = None
    if patch is not None:
        patch.apply(model)  # refuses a model the patch was not made for
        # An IKE patch changed no weight: its facts go before every prompt (evals/in_context).
        post_cases = cases_for_patch(model, tok, cases, patch)
        if post_cases is not cases:
            check_context(model, tok, post_cases, opts.settings)
        logger.info("evaluating the patched model")
        post_rows = evaluate(model, tok, post_cases, opts.settings, reference.locality_tokens,
                             references=refs)
    rows = case_rows(cases, reference.rows, post_rows)
    summary = summary_table(reference.rows, post_rows)
    if opts.out is not None:
        config = _config(opts, model, cases, skipped, patch)
        write_outputs(opts.out, rows, summary, config)
    render_summary(console, summary, len(cases), opts.dataset)
    if opts.out is not None:
        console.print(f"results in {opts.out}")
    return EvalResult(rows, summary, opts.out)


def case_rows(cases: Sequence[EvalCase], pre: Sequence[dict],
              post: Sequence[dict] | None) -> list[dict[str, Any]]:
    """One JSON row per case: what was edited, then its ``pre`` and ``post`` results."""
    out = []
    for i, case in enumerate(cases):
        req = case.request
        row: dict[str, Any] = {"index": i, "case_id": case.case_id, "subject": req.subject,
                               "prompt": req.text, "target_new": req.target_new,
                               "target_true": req.target_true, "pre": pre[i],
                               "post": None if post is None else post[i]}
        out.append(row)
    return out


def summary_table(pre: Sequence[dict], post: Sequence[dict] | None) -> dict[str, dict]:
    """Metric -> {"pre": mean, "post": mean or None}."""
    before = summarize(pre)
    after = summarize(post) if post is not None else {}
    names = list(dict.fromkeys([*before, *after]))
    return {k: {"pre": before.get(k), "post": after.get(k)} for k in names}


def _config(opts: EvalOptions, model, cases, skipped, patch) -> dict[str, Any]:
    from massedit.jobs.edit import model_reference
    from massedit.models.loading import resolve_model_path

    meta = patch.metadata if patch is not None else {}
    return {
        "command": "eval",
        "model": {"name": opts.model, "path": model_reference(resolve_model_path(opts.model)),
                  "model_type": model.config.model_type, "dtype": opts.dtype,
                  "device_map": opts.device_map},
        "patch": None if patch is None else {
            "path": str(Path(opts.patch).resolve()), "method": meta.get("method"),
            "objective": meta.get("objective"), "distribution": meta.get("distribution"),
            "layers": meta.get("layers"), "hparams": meta.get("hparams"),
            "n_requests": meta.get("n_requests")},
        "dataset": {"name": opts.dataset, **dataset_record(opts.dataset),
                    "n_requested": opts.n, "n_cases": len(cases), "skipped": skipped},
        "references": None if opts.references is None else str(opts.references),
        "settings": opts.settings.to_dict(),
        "versions": library_versions(),
    }


def write_outputs(out: Path, rows: Sequence[dict], summary: dict, config: dict) -> None:
    """``cases.jsonl``, ``summary.json``, ``summary.csv`` and ``config.json``, all at once."""
    out = Path(out)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # atomic_dir renames a new folder into place
    with atomic_dir(out) as tmp:
        with (tmp / "cases.jsonl").open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, default=str) + "\n")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["metric", "pre", "post"])
        for name, values in summary.items():
            writer.writerow([name, values["pre"], values["post"]])
        (tmp / "summary.csv").write_text(buffer.getvalue())
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_summary(console, summary: dict, n_cases: int, dataset: str) -> None:
    """The summary as a rich table: one row per metric, pre and post columns."""
    from rich.table import Table

    has_post = any(v["post"] is not None for v in summary.values())
    table = Table(title=f"{dataset}: {n_cases} case(s), metrics ×100")
    table.add_column("metric")
    table.add_column("unedited" if has_post else "model", justify="right")
    if has_post:
        table.add_column("patched", justify="right")
    for name, values in summary.items():
        if name == "n_cases":
            continue
        cells = [_fmt(values["pre"])] + ([_fmt(values["post"])] if has_post else [])
        table.add_row(name, *cells)
    console.print(table)
