"""Half precision against fp32: MEMIT on SmolLM2 in float32, bfloat16 and float16 (issue 18).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/half_precision.py --threads 1 \
        --out runs/half_precision --json docs/studies/half-precision/half_precision.json

For each ``--dtypes`` entry the model is loaded in that dtype (``load_model(dtype=...)``, as
``massedit edit --dtype`` does) and the first ``--n`` dev CounterFact records (0..n-1 of
``counterfact/counterfact_dev.json`` in the data mirror) are written in one MEMIT batch on the
unedited model, then scored (ES/PS/NS/Score, docs/design.md §9) and reverted. Statistics come from
WikiText-2 validation, computed per dtype (the statistics cache keys on the model's embeddings,
which differ once rounded): keys are read in the model's dtype and summed in fp32, solves run in
fp64, and the write is cast to the weight's dtype (docs/design.md §1). Seconds per fact are the
edit's own (targets, keys, solves, writes), without statistics and scoring.

Each dtype is one ``massedit compare`` study folder under ``--out`` (re-running skips finished
ones); the JSON written to ``--json`` holds every dtype's summary and its difference from fp32.
A dtype that fails (fp16 overflow, say) is recorded with its error and the others go on.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from massedit.atomic import write_json_atomic
from massedit.data.locations import default_data_root, require_mirror_file

logger = logging.getLogger("half_precision")
# The success rates and Score, then the magnitudes (mean probability gaps, continuous: where
# the rates of two dtypes tie, these still show how far apart they are).
METRICS = ("efficacy_success", "paraphrase_success", "neighborhood_success", "score",
           "efficacy_magnitude", "paraphrase_magnitude", "neighborhood_magnitude")


FAMILIES = ("rewrite_prompts_probs", "paraphrase_prompts_probs", "neighborhood_prompts_probs")


def prompt_agreement(base_rows: list[dict], rows: list[dict]) -> dict:
    """Prompt by prompt against fp32: how many change sides (P(new) > P(true) or not), and how
    far the probabilities of both targets moved (median, 95th percentile, largest)."""
    gaps, flips, prompts = [], 0, 0
    for a, b in zip(base_rows, rows, strict=True):
        assert a["case_id"] == b["case_id"]
        for family in FAMILIES:
            for pa, pb in zip(a[family], b[family], strict=True):
                prompts += 1
                flips += (pa["target_new"] > pa["target_true"]) != (pb["target_new"] >
                                                                   pb["target_true"])
                gaps += [abs(pa[t] - pb[t]) for t in ("target_new", "target_true")]
    gaps.sort()
    return {"prompts": prompts, "changed_sides": flips,
            "median_abs_probability_change": gaps[len(gaps) // 2],
            "p95_abs_probability_change": gaps[int(0.95 * len(gaps))],
            "max_abs_probability_change": gaps[-1]}


def run_dtype(dtype: str, args, corpus: str) -> dict:
    """One study (MEMIT, one batch of ``args.n``) on the model loaded in ``dtype``."""
    from rich.console import Console

    from massedit.evals.evaluation import EvalSettings
    from massedit.evals.study import RESULTS, Combination, StudyOptions, run_study

    opts = StudyOptions(
        model=args.model, dataset="counterfact", out=Path(args.out) / dtype, methods=("memit",),
        batch_sizes=(args.n,), n=args.n, stats_corpus=corpus, dtype=dtype,
        settings=EvalSettings(fluency=False), progress=False)
    combo = Combination("memit", args.n)
    t0 = time.perf_counter()
    try:
        result = run_study(opts, Console(), [combo])
    except Exception as err:  # recorded: e.g. fp16 overflow stops that dtype, not the others
        logger.warning("%s failed: %s", dtype, err)
        return {"dtype": dtype, "status": "error", "error": f"{type(err).__name__}: {err}"}
    record = json.loads((result.out / RESULTS / f"{combo.slug}.json").read_text())
    unedited = json.loads((result.out / "unedited.json").read_text())["summary"]
    out = {"dtype": dtype, "status": record["status"],
           "wall_seconds_this_run": round(time.perf_counter() - t0, 1),
           "unedited": {m: unedited.get(m) for m in METRICS}}
    if record["status"] != "finished":
        out["error"] = record.get("error")
        return out
    out["rows"] = record["rows"]  # for prompt_agreement; not written
    out.update(edited={m: record["summary"].get(m) for m in METRICS},
               seconds_per_fact=round(record["seconds_per_edit"], 3),
               seconds_edit=record["seconds"], layers=record["layers"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=30, help="dev CounterFact records 0..n-1, one batch")
    ap.add_argument("--dtypes", default="float32,bfloat16,float16")
    ap.add_argument("--stats-corpus", default=None,
                    help="default: wikitext-2/valid.txt in the data mirror")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default="runs/half_precision", help="study folders, one per dtype")
    ap.add_argument("--json", default=None, help="summary JSON (default: OUT/half_precision.json)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    default_data_root(Path(__file__).resolve().parents[1])  # unless $MASSEDIT_DATA is set
    require_mirror_file("counterfact/counterfact_dev.json")  # the dev records, not a download
    corpus = args.stats_corpus or str(require_mirror_file("wikitext-2/valid.txt"))
    results = [run_dtype(d.strip(), args, corpus) for d in args.dtypes.split(",") if d.strip()]
    base = next((r for r in results if r["dtype"] == "float32" and "edited" in r), None)
    for r in results:  # each half-precision Score and rate minus fp32's, in points
        if base is not None and "edited" in r:
            r["minus_float32"] = {m: round(r["edited"][m] - base["edited"][m], 2)
                                  for m in METRICS if r["edited"].get(m) is not None}
            r["prompts_against_float32"] = prompt_agreement(base["rows"], r["rows"])
    for r in results:
        r.pop("rows", None)
    summary = {"model": args.model, "n": args.n, "method": "memit", "batch_size": args.n,
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "results": results}
    path = Path(args.json) if args.json else Path(args.out) / "half_precision.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, summary)
    for r in results:
        logger.info("%s: %s", r["dtype"], json.dumps({k: r.get(k) for k in (
            "status", "edited", "seconds_per_fact", "minus_float32", "error")}))
    logger.info("written %s", path)


if __name__ == "__main__":
    main()
