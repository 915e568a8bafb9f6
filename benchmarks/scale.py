"""Mass editing at scale on SmolLM2: where each method stops working (issue 15's frontier).

    python benchmarks/scale.py targets --n 2000             # 1. every target once, on disk
    # (or in two 1-thread processes: --threads 1 --n 1075 and --threads 1 --start 1075 --n 2000)
    python benchmarks/scale.py single --sizes 100,300,1000,2000 --methods memit,emmet,alphaedit
    python benchmarks/scale.py stream --n 2000 --batch-size 100 --every 2 \
        --methods memit,alphaedit                          # 2. the AlphaEdit paper's protocol
    python benchmarks/scale.py report                       # docs/studies/smollm2-scale/

Facts are the first records of CounterFact in the EasyEdit form
(``counterfact/counterfact_train_easyedit.json`` in the data mirror ``$MASSEDIT_DATA``: 10,000
records, none of them the dev records the SmolLM2 presets were swept on). Statistics come from
WikiText-2 validation, perplexity from WikiText-2 test.

Targets are computed once per fact into massedit's disk target store (``Editor(target_store=
True)``) and shared by every size and method: ``targets`` pays for them (resumable: re-run it
after an interruption), and its per-fact seconds are the targets' cost; ``single`` then times
each edit (keys and solves, with targets read from disk) in its own process, so the process's
peak RSS is the edit's. Metrics of a batch larger than ``--measure`` (300) are taken on a fixed
random sample of that many of its facts. Each result is a JSON file in ``--out``; re-running
skips finished ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from massedit.data.locations import default_data_root, require_mirror_file

logger = logging.getLogger("scale")
ROOT = Path(__file__).resolve().parents[1]
DATASET = "counterfact/counterfact_train_easyedit.json"
# The target settings every stored target of this study was computed with (the SmolLM2 presets
# before MEMIT's became lr 1.0 / 15 steps / stop at 0.3), kept so that all sizes and methods,
# and the continuation of the study, share one set of targets. Streams keep theirs in run.json.
STUDY_TARGETS = {"v_lr": 0.5, "v_num_grad_steps": 20, "early_stop_loss": 0.05}


def peak_rss_gb() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def load(n: int, model_name: str):
    from massedit.evals.readers import load_eval_dataset
    from massedit.models.loading import load_model

    cases = load_eval_dataset(str(require_mirror_file(DATASET)), n)
    model, tok = load_model(model_name)
    return cases, model, tok


def make_editor(model, tok, method: str, progress: bool = True):
    from massedit import Editor, StatsSpec

    corpus = str(require_mirror_file("wikitext-2/valid.txt"))
    return Editor(model, tok, method, stats=StatsSpec(corpus=corpus), target_store=True,
                  progress=progress, **STUDY_TARGETS)


def run_targets(args) -> None:
    """Every fact's target into the disk store (a re-run reads the finished ones)."""
    cases, model, tok = load(args.n, args.model)
    editor = make_editor(model, tok, "memit")  # MEMIT and AlphaEdit share its last layer
    editor.moments()
    editor.prefixes()
    # --start: processes with one thread each can fill the store for disjoint slices (on two
    # cores, two 1-thread processes outrun one 2-thread process and suffer less from other work).
    requests = [c.request for c in cases][args.start :]
    t0 = time.perf_counter()
    for lo in range(0, len(requests), args.chunk):  # chunks: progress survives a kill
        editor.edit(requests[lo : lo + args.chunk]).revert(model)
        logger.info("targets for %d of %d facts (%.0f s)", min(lo + args.chunk, len(requests)),
                    len(requests), time.perf_counter() - t0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds = [float(t.seconds) for t in editor.target_cache.values()]
    (out / f"targets-{args.start}-{args.n}.json").write_text(json.dumps({
        "start": args.start, "n": args.n, "seconds_per_target": sum(seconds) / max(1, len(seconds)),
        "median_seconds_per_target": statistics.median(seconds) if seconds else None,
        "wall_seconds_this_call": time.perf_counter() - t0, "threads": torch.get_num_threads(),
    }, indent=1))


def run_one(args) -> None:
    """One single-batch edit of the first ``size`` facts, measured; run in its own process."""
    from massedit.evals.evaluation import EvalSettings, evaluate, summarize, unedited_reference
    from massedit.evals.stream import retention_sample

    cases, model, tok = load(args.size, args.model)
    settings = EvalSettings(fluency=False)
    sample = retention_sample(len(cases), args.measure, 0)
    chosen = [cases[i] for i in sample]
    reference = unedited_reference(model, tok, chosen, settings)
    editor = make_editor(model, tok, args.method)
    editor.moments()
    editor.prefixes()
    rss_before = peak_rss_gb()
    t0 = time.perf_counter()
    row = {"method": args.method, "size": args.size, "n_measured": len(chosen)}
    try:
        patch = editor.edit([c.request for c in cases])
    except Exception as err:  # the frontier: a batch a method cannot write is a result too
        row.update(status="error", error=f"{type(err).__name__}: {err}")
    else:
        edit_seconds = time.perf_counter() - t0
        reused = [t.seconds for t in editor.target_cache.values()]
        rows = evaluate(model, tok, chosen, settings, reference.locality_tokens)
        row.update(status="finished", **{k: v for k, v in summarize(rows).items()
                                         if k in ("efficacy_success", "paraphrase_success",
                                                  "neighborhood_success", "score", "locality")})
        row.update(seconds_edit=edit_seconds, seconds_edit_per_fact=edit_seconds / args.size,
                   seconds_targets_per_fact=sum(reused) / max(1, len(reused)))
        patch.revert(model)
    row.update(peak_rss_gb=peak_rss_gb(), peak_rss_gb_before_edit=rss_before,
               threads=torch.get_num_threads())
    Path(args.json).write_text(json.dumps(row, indent=1))


def run_single(args) -> None:
    out = Path(args.out) / "single"
    out.mkdir(parents=True, exist_ok=True)
    for size in (int(s) for s in args.sizes.split(",")):
        for method in args.methods.split(","):
            target = out / f"{method}-{size}.json"
            if target.exists():
                continue
            logger.info("%s at a batch of %d", method, size)
            subprocess.run([sys.executable, __file__, "one", "--method", method, "--size",
                            str(size), "--measure", str(args.measure), "--model", args.model,
                            "--json", str(target)], check=True)


def run_stream_benchmark(args) -> None:
    from massedit.evals.stream import StreamSettings
    from massedit.evals.stream_job import StreamOptions, run_stream_study

    opts = StreamOptions(
        model=args.model, dataset=str(require_mirror_file(DATASET)), out=Path(args.out) / "stream",
        methods=tuple(args.methods.split(",")), n=args.n,
        settings=StreamSettings(batch_size=args.batch_size, every=args.every,
                                measure=args.measure),
        heldout_text=str(require_mirror_file("wikitext-2/test.txt")), heldout_tokens=8192,
        stats_corpus=str(require_mirror_file("wikitext-2/valid.txt")))
    run_stream_study(opts)


FRONTIER_COLUMNS = ("efficacy_success", "paraphrase_success", "neighborhood_success", "score",
                    "seconds_targets_per_fact", "seconds_edit_per_fact", "peak_rss_gb")


def _cell(value) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if isinstance(value, float) and abs(value) < 10 else (
        f"{value:.1f}" if isinstance(value, float) else str(value))


def frontier_rows(out: Path) -> list[dict]:
    rows = [json.loads(p.read_text()) for p in sorted((out / "single").glob("*.json"))]
    return sorted(rows, key=lambda r: (r["method"], r["size"]))


def largest_passing(rows: list[dict], bar: float = 80.0) -> dict[str, int | None]:
    """Per method, the largest batch size whose Score is at least ``bar`` with every smaller
    measured size passing too (the frontier, not an isolated lucky size)."""
    best: dict[str, int | None] = {}
    for method in sorted({r["method"] for r in rows}):
        best[method] = None
        for r in sorted((r for r in rows if r["method"] == method), key=lambda r: r["size"]):
            if r.get("status") != "finished" or r.get("score", 0.0) < bar:
                break
            best[method] = r["size"]
    return best


def retention_falls(points: list[dict], bar: float = 80.0) -> int | None:
    """Facts written at the first point whose retention (efficacy success over the facts
    written so far) is below ``bar``; None while it holds."""
    for p in sorted(points, key=lambda p: p["facts_written"]):
        if p["facts_written"] and p.get("efficacy_success") is not None \
                and p["efficacy_success"] < bar:
            return p["facts_written"]
    return None


def plot_frontier(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("score", "Score (ES/PS/NS harmonic mean)"), ("peak_rss_gb", "Peak RSS (GB)"),
              ("seconds_edit_per_fact", "Edit seconds per fact (targets read from disk)"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (metric, title) in zip(axes, panels, strict=True):
        for i, method in enumerate(sorted({r["method"] for r in rows})):
            # A refused batch (EMMET beyond d_in) has an RSS but wrote nothing: not a point.
            xy = [(r["size"], r[metric]) for r in rows if r["method"] == method
                  and r.get("status") == "finished" and r.get(metric) is not None]
            if xy:
                xs, ys = zip(*sorted(xy), strict=True)
                ax.plot(xs, ys, marker="o", color=f"C{i}", label=method)
        ax.set_xscale("log")
        ax.set_xlabel("facts in one batch")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[0].axhline(80, color="grey", linestyle=":")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _speed_lines(out: Path) -> list[str]:
    """The speed and memory goals, from ``benchmarks/edit_speed_memory.py``'s JSON reports
    saved in ``out`` (``speed30-preset.json``, ``speed30.json``: old vs new at batch 30, with
    MEMIT's preset now and before; ``memory10.json``: 10 facts;
    ``memory-scaling.json``: batch sizes)."""
    lines: list[str] = []
    for name, title in (("speed30-preset.json", "Speed: MEMIT, one batch of 30 held-out facts, "
                         "its preset now (targets lr 1.0, 15 steps, stop below 0.3) against "
                         "the target code and preset of 53e16e6"),
                        ("speed30.json", "Speed: MEMIT, one batch of 30 held-out facts, the "
                         "earlier preset (targets lr 0.5, 20 steps, stop below 0.05)"),
                        ("memory10.json", "Memory: MEMIT, 10 held-out facts"),
                        ("memory-scaling.json", "Memory against batch size")):
        path = out / name
        if not path.exists() or not path.read_text().strip():
            continue
        report = json.loads(path.read_text())
        lines += [f"## {title}", "", f"`python benchmarks/edit_speed_memory.py "
                  f"{report['command'].split(' ', 1)[1] if ' ' in report['command'] else ''}`",
                  "", "| variant | wall s/fact | CPU s/fact | peak RSS GB | Score | ES | PS | NS |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        runs = report.get("runs", {}) or {"new": report.get("scaling", [])}
        for variant, rows in runs.items():
            for r in rows:
                q = r.get("quality", {})
                label = variant if "scaling" not in report else f"{r['n']} facts"
                lines.append(
                    f"| {label} | {r['wall_s_per_fact']:.2f} | {r['cpu_s_per_fact']:.2f} | "
                    f"{r['peak_rss_gb']:.2f} | " + " | ".join(
                        _cell(q.get(k)) for k in ("score", "efficacy_success",
                                                  "paraphrase_success", "neighborhood_success"))
                    + " |")
        for key in ("speedup_wall", "speedup_cpu", "peak_rss_ratio",
                    "peak_ratio_largest_vs_smallest"):
            if key in report:
                lines.append(f"- {key}: {report[key]}")
        lines.append("")
    return lines


def run_report(args) -> None:
    """The study's page: frontier table and plot, stream table and curves, the two answers."""
    from massedit.evals.stream_report import markdown_table, plot_stream

    out, dest = Path(args.out), Path(args.report)
    dest.mkdir(parents=True, exist_ok=True)
    rows = frontier_rows(out)
    lines = ["| method | facts | measured | status | " + " | ".join(FRONTIER_COLUMNS) + " |",
             "|---|---:|---:|---|" + "---:|" * len(FRONTIER_COLUMNS)]
    for r in rows:
        status = r.get("status") if r.get("status") == "finished" else r.get("error", "")[:80]
        lines.append(f"| {r['method']} | {r['size']} | {r.get('n_measured', '–')} | {status} | "
                     + " | ".join(_cell(r.get(c)) for c in FRONTIER_COLUMNS) + " |")
    if rows:
        plot_frontier(rows, dest / "frontier.png")
    streams = {p.parent.name: json.loads(p.read_text())
               for p in sorted((out / "stream").glob("*/points.json"))}
    if streams:
        plot_stream(streams, dest / "stream.png")
    targets = [json.loads(p.read_text()) for p in sorted(out.glob("targets-*.json"))]
    answers = ["- largest single batch with Score ≥ 80 (every smaller size too): "
               + ", ".join(f"{m} {v if v is not None else 'none measured'}"
                           for m, v in largest_passing(rows).items())]
    for method, points in streams.items():
        falls = retention_falls(points)
        reached = max(p["facts_written"] for p in points)
        if falls is not None:
            said = f"falls below 80 at {falls} facts"
        elif reached:
            said = f"stays ≥ 80 up to {reached} facts written (as far as run)"
        else:
            said = "not measured yet (only the unedited point)"
        answers.append(f"- {method} stream: retention (ES over facts written) {said}")
    speed = _speed_lines(out)
    text = "\n".join([
        "# SmolLM2-135M at scale: the frontier of single batches and sequential streams", "",
        "Generated by `python benchmarks/scale.py report` from the results in "
        f"`{out.name}/` (raw JSON copied to `results/`).", "",
        "## Answers", "", *answers, "",
        "## Single batches", "",
        "Facts are the first N records of `counterfact_train_easyedit.json`; batches larger "
        f"than {args.measure} are measured on a fixed random sample of {args.measure} of "
        "their facts (`measured`). Targets were computed once per fact and read from the "
        "disk store by every size and method: `seconds_targets_per_fact` is their mean cost "
        "when computed (1-thread processes, mostly on a machine shared with other work: see "
        "Targets), `seconds_edit_per_fact` the edit (keys, solves) with targets read. "
        "Peak RSS is the editing process's (model, statistics, evaluation included).", "",
        *lines, "", "![frontier](frontier.png)" if rows else "", "",
        "## Sequential stream", "",
        f"Facts written in batches of {args.batch_size}, each on the model the previous left "
        "(targets recomputed on it); retention is measured on the facts of a fixed sample of "
        f"{args.measure} that were written so far (`n_measured`).", "",
        markdown_table(streams) if streams else "(not run)", "",
        "![stream](stream.png)" if streams else "", "",
        *speed,
        "## Targets", "",
        *[f"- facts {t.get('start', 0)}..{t['n']}: {t['seconds_per_target']:.2f} s per target "
          f"(median {t.get('median_seconds_per_target') or 0:.2f}; {t['threads']} thread(s) a "
          "process, on a machine shared with other work)" for t in targets], "",
    ])
    (dest / "README.md").write_text(text + "\n")
    results = dest / "results"
    results.mkdir(exist_ok=True)
    for p in [*(out / "single").glob("*.json"), *out.glob("*.json")]:
        (results / p.name).write_text(p.read_text())
    for method in streams:
        (results / f"stream-{method}.json").write_text(
            (out / "stream" / method / "points.json").read_text())
    logger.info("report in %s", dest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default="smollm2-135m")
    common.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale"))
    common.add_argument("--measure", type=int, default=300)
    common.add_argument("--threads", type=int, default=2)
    p = sub.add_parser("targets", parents=[common])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--chunk", type=int, default=50)
    p.add_argument("--start", type=int, default=0, help="first fact of this process's slice")
    p = sub.add_parser("single", parents=[common])
    p.add_argument("--sizes", default="100,300,1000,2000")
    p.add_argument("--methods", default="memit,emmet,alphaedit")
    p = sub.add_parser("one", parents=[common])
    p.add_argument("--method", required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--json", required=True)
    p = sub.add_parser("stream", parents=[common])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--every", type=int, default=2)
    p.add_argument("--methods", default="memit,alphaedit")
    p = sub.add_parser("report", parents=[common])
    p.add_argument("--report", default=str(ROOT / "docs" / "studies" / "smollm2-scale"))
    p.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    default_data_root(ROOT)  # unless $MASSEDIT_DATA is set
    {"targets": run_targets, "single": run_single, "one": run_one,
     "stream": run_stream_benchmark, "report": run_report}[args.command](args)


if __name__ == "__main__":
    main()
