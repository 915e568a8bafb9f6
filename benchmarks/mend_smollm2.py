"""MEND on SmolLM2: train (or read from the cache) its hypernetwork, time it, then edit dev
CounterFact records one at a time and report ES / PS / NS before and after.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/mend_smollm2.py --n 10 --out runs/mend

A small-sample indication, not the study (``massedit compare`` is). Training reads the shared
training records (``counterfact_easyedit``) minus the evaluation's (docs/design.md §4, MEND).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from massedit import Editor, load_model
from massedit.baselines.mend_train import hypernetwork, training_report
from massedit.data.locations import default_data_root
from massedit.evals.metrics import counterfact_scores, summarize_counterfact
from massedit.evals.readers import load_eval_dataset
from massedit.models.adapters import get_module, read_weight

logger = logging.getLogger("mend")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=10, help="dev records 0..n-1, one edit each")
    ap.add_argument("--set", action="append", default=[], help="key=value MEND setting")
    ap.add_argument("--generation", action="store_true",
                    help="also fluency: n-gram entropy of sampled generations (slower)")
    ap.add_argument("--out", default="runs/mend-smollm2")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    default_data_root(Path(__file__).resolve().parents[1])
    overrides = dict(kv.split("=", 1) for kv in args.set)

    model, tok = load_model(args.model)
    editor = Editor(model, tok, "mend", progress=True, **overrides)
    sites = [editor.adapter.site_name(layer) for layer in editor.layers]
    layout = editor.adapter.layout
    weights = {s: read_weight(get_module(model, s), layout).detach() for s in sites}
    t0 = time.perf_counter()
    _, path = hypernetwork(model, tok, editor.hparams, sites, weights, layout)
    load_seconds = time.perf_counter() - t0
    training = training_report(path)
    logger.info("hypernetwork %s (%.0f s to get; trained in %s s)", path, load_seconds,
                training.get("seconds"))

    cases = load_eval_dataset("counterfact", n=args.n)
    before = counterfact_scores(model, tok, cases, generation=args.generation)
    after, seconds = [], []
    for case in cases:
        t = time.perf_counter()
        patch = editor.edit([case.request])
        seconds.append(time.perf_counter() - t)
        after += counterfact_scores(model, tok, [case], generation=args.generation)
        patch.revert(model)
    result = {
        "model": args.model, "n": len(cases), "settings": overrides, "network": str(path),
        "training": training, "threads": torch.get_num_threads(),
        "unedited": {k: round(v, 1) for k, v in summarize_counterfact(before).items()},
        "edited": {k: round(v, 1) for k, v in summarize_counterfact(after).items()},
        "seconds_per_edit": round(sum(seconds) / len(seconds), 2),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mend.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))  # noqa: T201 - the result is this script's output


if __name__ == "__main__":
    main()
