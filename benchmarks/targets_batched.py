"""Batched vs one-request-at-a-time target optimisation (MEMIT on SmolLM2), same steps.

    python benchmarks/targets_batched.py --n 10 30

Early stopping is switched off so both runs take exactly the same number of gradient steps; the
script checks that the final per-request losses agree and reports seconds per edit and the ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import torch

from massedit import Editor, StatsSpec, load_model
from massedit.evals.readers import load_eval_dataset
from massedit.targets import compute_targets

logger = logging.getLogger("bench")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    editor = Editor(model, tok, method="memit", progress=False,
                    stats=StatsSpec(corpus="../shared/data/wikitext-2/valid.txt"))
    prefixes = editor.prefixes()
    hp = editor.hparams.replace(v_num_grad_steps=args.steps, early_stop_loss=0.0)
    block = editor.adapter.block_name(editor.layers[-1])
    results = []
    for n in args.n:
        reqs = [c.request for c in load_eval_dataset("counterfact", n=n)]
        t0 = time.perf_counter()
        batched = compute_targets(model, tok, reqs, prefixes, block, hp, progress=False)
        t_batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        single = [compute_targets(model, tok, [r], prefixes, block, hp, progress=False)
                  for r in reqs]
        t_single = time.perf_counter() - t0
        nll_single = torch.stack([s.nll[0] for s in single])
        row = {
            "n": n, "steps": args.steps, "prefixes": len(prefixes),
            "batched_s_per_edit": round(t_batched / n, 3),
            "single_s_per_edit": round(t_single / n, 3),
            "speedup": round(t_single / t_batched, 2),
            "max_final_nll_diff": float((batched.nll - nll_single).abs().max()),
            "max_z_diff": float(max((batched.z[i] - s.z[0]).abs().max()
                                    for i, s in enumerate(single))),
        }
        logger.info("%s", row)
        results.append(row)
    print(json.dumps(results, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
