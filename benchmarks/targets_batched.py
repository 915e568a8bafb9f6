"""Target optimisation (MEMIT on SmolLM2): batched vs one request at a time, and running only
the positions δ can change (suffix rows above the edit block) vs full rows, same steps.

    python benchmarks/targets_batched.py --n 10 30

Early stopping is switched off so every run takes exactly the same number of gradient steps;
``--early-stop`` keeps the preset's (then requests that stop leave the batch on the suffix path).
Four runs per n:
  batched        all requests together, lower blocks replayed, suffix rows above (the default)
  batched_full   all requests together, lower blocks replayed, full rows above
  single         one request at a time, otherwise as ``batched``
  reference      one request at a time, every block on full rows at every step (the work the
                 reference implementations do)
The script checks that the final per-request losses and targets agree and reports seconds per
edit and the ratios. Requests are the first dev CounterFact records and prefixes come from
WikiText-2 validation, both from the data mirror ``$MASSEDIT_DATA`` (for a checkout by default
``shared/data`` beside it).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from massedit import Editor, StatsSpec, load_model
from massedit.data.locations import default_data_root, require_mirror_file
from massedit.evals.readers import load_eval_dataset
from massedit.targets.optimise import compute_targets

logger = logging.getLogger("bench")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--early-stop", action="store_true",
                    help="keep the preset's early_stop_loss instead of running every step")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    default_data_root(Path(__file__).resolve().parents[1])  # unless $MASSEDIT_DATA is set
    require_mirror_file("counterfact/counterfact_dev.json")  # the dev records, not a download
    wikitext = require_mirror_file("wikitext-2/valid.txt")
    model, tok = load_model(args.model)
    editor = Editor(model, tok, method="memit", progress=False,
                    stats=StatsSpec(corpus=str(wikitext)))
    prefixes = editor.prefixes()
    hp = editor.hparams.replace(v_num_grad_steps=args.steps)
    if not args.early_stop:
        hp = hp.replace(early_stop_loss=0.0)
    block = editor.adapter.block_name(editor.layers[-1])
    def timed(requests_per_call, **kwargs):
        t0 = time.perf_counter()
        out = [compute_targets(model, tok, part, prefixes, block, hp, progress=False,
                               **kwargs) for part in requests_per_call]
        return time.perf_counter() - t0, out

    results = []
    for n in args.n:
        reqs = [c.request for c in load_eval_dataset("counterfact", n=n)]
        t_batched, (batched,) = timed([reqs])
        t_full, (full,) = timed([reqs], suffix=False)
        t_single, single = timed([[r] for r in reqs])
        t_reference, reference = timed([[r] for r in reqs], replay=False)
        others = {"batched_full": full.z, "single": torch.cat([s.z for s in single]),
                  "reference": torch.cat([s.z for s in reference])}
        nll_single = torch.stack([s.nll[0] for s in single])
        row = {
            "n": n, "steps": args.steps, "prefixes": len(prefixes),
            "early_stop_loss": hp.early_stop_loss,
            "mean_steps_taken": float(batched.steps.float().mean()),
            "batched_s_per_edit": round(t_batched / n, 3),
            "batched_full_s_per_edit": round(t_full / n, 3),
            "single_s_per_edit": round(t_single / n, 3),
            "reference_s_per_edit": round(t_reference / n, 3),
            "suffix_speedup": round(t_full / t_batched, 2),
            "batching_speedup": round(t_single / t_batched, 2),
            "speedup_vs_reference": round(t_reference / t_batched, 2),
            "max_final_nll_diff": float((batched.nll - nll_single).abs().max()),
            "max_z_diff": {k: float((batched.z - z).abs().max()) for k, z in others.items()},
        }
        logger.info("%s", row)
        results.append(row)
    print(json.dumps(results, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
