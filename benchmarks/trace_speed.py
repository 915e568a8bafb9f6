"""Causal-trace speed on SmolLM2-135M: batched restorations vs one forward pass per restoration.

    python benchmarks/trace_speed.py --threads 1 --out runs/trace_speed.json

Traces one known fact with a prompt of about 10 tokens (the first fact of ROME's known_1000.json
that the model predicts and whose prompt has ``--tokens`` tokens; data set ``known_1000``, from the
data mirror ``$MASSEDIT_DATA``, the cache or the public source) over every layer with
``--samples`` noise samples, in four ways, and checks that all four give the same table:

- ``one_per_pass``: one restoration (x samples) per forward pass, every block recomputed (ROME);
- ``one_per_pass_prefix``: the same, blocks below the restored layer replayed from the corrupted
  run;
- ``batched_full``: ``--batch-size`` restorations per forward pass, every block recomputed;
- ``batched_prefix``: batched and replayed;
- ``batched`` (the default of ``massedit trace``): batched, replayed, and each pass run only from
  its restorations' first token on (earlier positions' keys/values from the corrupted run).

The floor is one plain forward pass over the same number of rows (restorations x samples).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from massedit import load_model
from massedit.data.datasets import dataset_file
from massedit.data.locations import default_data_root
from massedit.trace import load_known, predicted_facts, trace_fact

logger = logging.getLogger("bench")

MODES = {  # name: (batch size or None for --batch-size, reuse_prefix, suffix)
    "one_per_pass": (1, False, False),
    "one_per_pass_prefix": (1, True, False),
    "batched_full": (None, False, False),
    "batched_prefix": (None, True, False),
    "batched": (None, True, True),
}


def pick_fact(model, tok, n_tokens: int) -> dict:
    default_data_root(Path(__file__).resolve().parents[1])  # unless $MASSEDIT_DATA is set
    facts = load_known(dataset_file("known_1000"))
    for fact in predicted_facts(model, tok, facts[:300]):
        if len(tok(fact["prompt"])["input_ids"]) == n_tokens:
            return fact
    raise SystemExit(f"no predicted fact with a {n_tokens}-token prompt among the first 300")


@torch.no_grad()
def plain_forward_seconds(model, n_rows: int, n_tokens: int, repeats: int = 1) -> float:
    ids = torch.zeros((n_rows, n_tokens), dtype=torch.long)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=10)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--kind", default="hidden")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    fact = pick_fact(model, tok, args.tokens)
    logger.info("fact: %r (subject %r) -> %r", fact["prompt"], fact["subject"], fact["attribute"])
    results: dict = {"model": args.model, "prompt": fact["prompt"], "subject": fact["subject"],
                     "samples": args.samples, "kind": args.kind, "batch_size": args.batch_size,
                     "threads": torch.get_num_threads(), "modes": {}}
    tables = {}
    for mode in args.modes:
        size, reuse, suffix = MODES[mode]
        t0 = time.perf_counter()
        trace = trace_fact(model, tok, fact["prompt"], fact["subject"], kinds=(args.kind,),
                           samples=args.samples, batch_size=size or args.batch_size,
                           reuse_prefix=reuse, suffix=suffix)
        seconds = time.perf_counter() - t0
        tables[mode] = trace.kinds[args.kind].scores
        results["modes"][mode] = {"seconds": round(seconds, 2)}
        logger.info("%s: %.1f s", mode, seconds)
    scores = next(iter(tables.values()))
    n_restorations = scores.numel()
    results.update(n_tokens=scores.shape[0], n_layers=scores.shape[1],
                   restorations=n_restorations, answer=trace.answer,
                   clean_prob=trace.clean_prob, corrupted_prob=trace.corrupted_prob)
    ref = tables[args.modes[0]]
    results["max_abs_diff"] = max(float((t - ref).abs().max()) for t in tables.values())
    floor = plain_forward_seconds(model, n_restorations * args.samples, scores.shape[0])
    results["plain_forward_all_rows_seconds"] = round(floor, 2)
    for r in results["modes"].values():
        r["x_plain_forward"] = round(r["seconds"] / floor, 2)
    if "one_per_pass" in results["modes"]:
        base = results["modes"]["one_per_pass"]["seconds"]
        for r in results["modes"].values():
            r["speedup_vs_one_per_pass"] = round(base / r["seconds"], 2)
    text = json.dumps(results, indent=2)
    print(text)  # noqa: T201 - the benchmark's report
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
