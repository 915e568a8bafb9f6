"""A small editing study on SmolLM2: ROME (sequential), MEMIT and EMMET at several batch sizes.

    python benchmarks/study_counterfact.py --n 100 --batch-sizes 100,10,1   # the full study
    python benchmarks/study_counterfact.py --n 10 --batch-sizes 1,10        # a quick one on CPU

On two cores, ``--methods memit,emmet`` and ``--methods rome`` can run as two processes on the
same ``--out`` folder; the same command with all methods then finds everything finished and
writes the combined report.

Cases are the first ``--n`` dev CounterFact records (``counterfact/counterfact_dev.json`` in the
data mirror ``$MASSEDIT_DATA``, for a checkout by default ``shared/data`` beside it); statistics
come from WikiText-2 validation (``wikitext-2/valid.txt`` there). ROME writes the facts one at a
time on top of each other (batch size 1, sequential); MEMIT and EMMET write batches of each size
on the unedited model (batch mode). The study folder (``--out``) gets the combined table, plots
and ``report.md`` (see ``massedit compare``), and ``scoring_cost.json``: the time teacher-forced
scoring of the unedited model takes (CPU seconds) against bare forward passes over the same padded
batches, its physical floor (docs/design.md §11). Re-running continues an interrupted study.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from massedit.data.locations import default_data_root, require_mirror_file
from massedit.engine.tokens import pad_batch, pad_id_of
from massedit.evals.evaluation import EvalSettings
from massedit.evals.metrics import COUNTERFACT_FAMILIES
from massedit.evals.readers import load_eval_dataset
from massedit.evals.scoring import encode_prompt_target, inference_mode, score_targets
from massedit.evals.study import Combination, StudyOptions, run_study
from massedit.evals.study_report import render_study

logger = logging.getLogger("study")


def scoring_pairs(cases) -> tuple[list[str], list[str]]:
    """Every (prompt, target) pair CounterFact's metrics score: new and true target per prompt."""
    prompts, targets = [], []
    for case in cases:
        for family in COUNTERFACT_FAMILIES:
            for prompt in getattr(case, family):
                prompts += [prompt, prompt]
                targets += [case.target_new, case.target_true]
    return prompts, targets


def bare_forward_seconds(model, tok, prompts, targets, batch_size: int) -> float:
    """Forward passes over the batches the scorer builds (same ids, order and left padding),
    projecting only the last position onto the vocabulary: the floor scoring cannot beat."""
    encoded = sorted((encode_prompt_target(tok, p, t)[0] for p, t in zip(prompts, targets,
                                                                          strict=True)), key=len)
    pad = pad_id_of(tok)
    t0 = time.perf_counter()
    with inference_mode(model):
        for lo in range(0, len(encoded), batch_size):
            ids, mask, _ = pad_batch(encoded[lo : lo + batch_size], pad, "left", model.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (batch, seq)
            model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
    return time.perf_counter() - t0


def scoring_cost(model, tok, cases, batch_size: int, repeats: int = 3) -> dict:
    """Median CPU seconds (all threads of this process) of scoring and of its bare forward
    passes, and their ratio. CPU time, not wall time: on a shared machine the wall clock mostly
    measures the other processes."""
    prompts, targets = scoring_pairs(cases)
    score, bare = [], []
    for _ in range(repeats):
        t0 = time.process_time()
        score_targets(model, tok, prompts, targets, batch_size=batch_size)
        score.append(time.process_time() - t0)
        t0 = time.process_time()
        bare_forward_seconds(model, tok, prompts, targets, batch_size)
        bare.append(time.process_time() - t0)
    s, b = statistics.median(score), statistics.median(bare)
    return {"pairs": len(prompts), "batch_size": batch_size, "repeats": repeats,
            "scoring_cpu_seconds": round(s, 3), "bare_forward_cpu_seconds": round(b, 3),
            "ratio": round(s / b, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--batch-sizes", default="1,10,100")
    ap.add_argument("--methods", default="memit,emmet,rome",
                    help="rome runs sequentially; the others in batch mode at every batch size. "
                         "Processes given disjoint methods can share one --out folder.")
    ap.add_argument("--scoring-cases", type=int, default=10,
                    help="cases whose scoring is timed against bare forward passes")
    ap.add_argument("--stats-corpus", default=None,
                    help="default: wikitext-2/valid.txt in the data mirror")
    ap.add_argument("--generation-prompts", type=int, default=2,
                    help="generation prompts per case for fluency (ROME: all 10)")
    ap.add_argument("--max-new-tokens", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default="runs/study_counterfact")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    default_data_root(Path(__file__).resolve().parents[1])  # unless $MASSEDIT_DATA is set
    require_mirror_file("counterfact/counterfact_dev.json")  # the dev records, not a download
    corpus = args.stats_corpus or str(require_mirror_file("wikitext-2/valid.txt"))
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    batch_methods = tuple(m for m in methods if m != "rome")
    opts = StudyOptions(
        model=args.model, dataset="counterfact", out=Path(args.out), methods=methods,
        batch_sizes=sizes, n=args.n, stats_corpus=corpus,
        settings=EvalSettings(generation_prompts=args.generation_prompts,
                              max_new_tokens=args.max_new_tokens),
    )
    # Batch mode in the order given (largest first computes every target in one call and later
    # sizes re-use them), ROME's sequential run last: it shares nothing with the others.
    combos = [Combination(m, b) for b in sizes for m in batch_methods]
    if "rome" in methods:
        combos.append(Combination("rome", 1, sequential=True))

    from rich.console import Console

    console = Console()
    t0 = time.perf_counter()
    result = run_study(opts, console, combos)
    study_seconds = time.perf_counter() - t0
    render_study(console, result.table)

    from massedit import load_model

    model, tok = load_model(args.model)
    cases = load_eval_dataset("counterfact", n=min(args.scoring_cases, args.n))
    cost = scoring_cost(model, tok, cases, batch_size=opts.settings.batch_size)
    cost["study_seconds_this_run"] = round(study_seconds, 1)
    (result.out / "scoring_cost.json").write_text(json.dumps(cost, indent=2) + "\n")
    console.print(f"scoring cost: {cost}")
    console.print(f"study took {study_seconds:.0f} s this run; report in {result.out}/report.md")


if __name__ == "__main__":
    main()
