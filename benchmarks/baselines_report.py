"""Issue 17's study: the seed papers' baselines beside the closed-form editors on SmolLM2.

    export MASSEDIT_DATA=../shared/data
    massedit compare --n 100 --methods ike,mend,ft-l,ft,rome,memit,emmet,alphaedit \
        --batch-sizes 1,100 --generation-prompts 1 --stats-corpus \
        ../shared/data/wikitext-2/valid.txt --out runs/baselines
    massedit compare --n 10 --methods kn --batch-sizes 1 --generation-prompts 1 \
        --stats-corpus ../shared/data/wikitext-2/valid.txt --out runs/baselines-kn
    python benchmarks/baselines_report.py --study runs/baselines --kn runs/baselines-kn

KN costs minutes per fact on this CPU (integrated gradients over every neuron of its layers),
so it runs on the first 10 of the 100 records. The report therefore has two tables: every
method on the 100 records, and every method's batch-1 run restricted to the first 10 records
(the per-case rows of the same runs, not a re-run) beside KN's, so that KN is compared on the
records it saw. Numbers are read from the studies' combination files, never recomputed from
models.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from massedit.evals.evaluation import summarize
from massedit.evals.study_report import format_cell

logger = logging.getLogger("baselines")
ROOT = Path(__file__).resolve().parents[1]
# Table and plot order: the seed papers' baselines, then the closed-form family.
ORDER = ("ft", "ft-l", "kn", "mend", "ike", "rome", "memit", "emmet", "alphaedit")
COLUMNS = (("score", "Score"), ("efficacy_success", "ES"), ("paraphrase_success", "PS"),
           ("neighborhood_success", "NS"), ("fluency", "Fluency"))


def load_combinations(study: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((study / "combinations").glob("*.json"))]


def row_of(rec: dict, n_cases: int | None = None) -> dict:
    """One table row; ``n_cases`` restricts the summary to the first cases of the run."""
    combo = rec["combination"]
    row = {"method": combo["method"], "batch_size": combo["batch_size"],
           "status": rec["status"], "error": rec.get("error")}
    if rec["status"] != "finished":
        return row
    cases = rec["rows"][:n_cases] if n_cases else rec["rows"]
    row.update(summarize(cases) if n_cases else rec["summary"])
    row["n_cases"] = len(cases)
    row["seconds_per_edit"] = rec.get("seconds_per_edit")
    return row


def sort_key(row: dict) -> tuple:
    method = row["method"]
    return (ORDER.index(method) if method in ORDER else len(ORDER), method, row["batch_size"])


def markdown(rows: list[dict], unedited: dict) -> str:
    head = ["method", "batch", "facts", *(short for _, short in COLUMNS), "s/fact"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             "| unedited | – | – | " + " | ".join(format_cell(unedited.get(k)) for k, _ in COLUMNS)
             + " | – |"]
    for row in rows:
        if row["status"] != "finished":
            note = (row.get("error") or row["status"]).split(";")[0]
            lines.append(f"| {row['method']} | {row['batch_size']} | – | "
                         + " | ".join("–" for _ in COLUMNS) + f" | – ({note[:120]}) |")
            continue
        lines.append(f"| {row['method']} | {row['batch_size']} | {row['n_cases']} | "
                     + " | ".join(format_cell(row.get(k)) for k, _ in COLUMNS)
                     + f" | {format_cell(row.get('seconds_per_edit'), 2)} |")
    return "\n".join(lines)


def plot(rows: list[dict], unedited: dict, path: Path) -> None:
    """ES / PS / NS / Score per method at batch 1 (bars), seconds per fact (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["status"] == "finished" and r["batch_size"] == 1]
    metrics = [(k, s) for k, s in COLUMNS if k != "fluency"]
    fig, (ax, ax_t) = plt.subplots(1, 2, figsize=(13, 4.5), width_ratios=(3, 1))
    width = 0.8 / len(metrics)
    for j, (key, short) in enumerate(metrics):
        xs = [i + (j - (len(metrics) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [r.get(key) or 0.0 for r in rows], width, label=short)
        ax.axhline(unedited.get(key, 0.0), color=f"C{j}", lw=0.8, ls=":")
    labels = [f"{r['method']}\n({r['n_cases']} facts)" if r["n_cases"] != 100 else r["method"]
              for r in rows]
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylim(0, 118)
    ax.set_ylabel("×100 (dotted: unedited)")
    ax.set_title("SmolLM2-135M, CounterFact dev records, one fact per edit")
    ax.legend(ncols=4, fontsize=8, loc="upper center")
    ax_t.barh(range(len(rows)), [r.get("seconds_per_edit") or 0.0 for r in rows], color="grey")
    ax_t.set_yticks(range(len(rows)), [r["method"] for r in rows], fontsize=8)
    ax_t.set_xscale("log")
    ax_t.set_xlabel("seconds per fact (2-core CPU)")
    ax_t.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", type=Path, required=True, help="the 100-record compare folder")
    ap.add_argument("--kn", type=Path, required=True, help="KN's compare folder (10 records)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "studies" / "baselines")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    main_recs, kn_recs = load_combinations(args.study), load_combinations(args.kn)
    n_kn = min(len(r["rows"]) for r in kn_recs if r["status"] == "finished")
    unedited_record = json.loads((args.study / "unedited.json").read_text())
    unedited = unedited_record["summary"]
    full = sorted([row_of(r) for r in main_recs + kn_recs], key=sort_key)
    first = sorted([row_of(r, n_kn) for r in main_recs if r["combination"]["batch_size"] == 1]
                   + [row_of(r) for r in kn_recs], key=sort_key)
    unedited_first = summarize(unedited_record["rows"][:n_kn])

    args.out.mkdir(parents=True, exist_ok=True)
    plot(full, unedited, args.out / "baselines.png")
    for name, folder in (("main", args.study), ("kn", args.kn)):
        # Each report beside its own plots, renamed so the two studies' files do not collide.
        shutil.copy(folder / "results.csv", args.out / f"{name}-results.csv")
        report = (folder / "report.md").read_text().replace("](plots/", f"]({name}-plots/")
        (args.out / f"{name}-report.md").write_text(report)
        shutil.copytree(folder / "plots", args.out / f"{name}-plots", dirs_exist_ok=True)
    (args.out / "tables.json").write_text(json.dumps(
        {"all_records": full, f"first_{n_kn}_records": first}, indent=1, default=str))
    text = [
        "# The seed papers' baselines beside the closed-form editors (SmolLM2-135M)",
        "",
        "Generated by `python benchmarks/baselines_report.py` (its docstring has the commands).",
        "",
        "## Every method on the 100 dev records (KN: the first "
        f"{n_kn}, see below)",
        "",
        markdown(full, unedited),
        "",
        "![baselines](baselines.png)",
        "",
        f"## Batch 1 on the first {n_kn} records, the ones KN was run on",
        "",
        "The same runs' per-case rows, restricted to the records KN saw.",
        "",
        markdown(first, unedited_first),
        "",
        "The compare reports these tables come from are `main-report.md` and `kn-report.md`.",
        "",
    ]
    (args.out / "tables.md").write_text("\n".join(text))
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
