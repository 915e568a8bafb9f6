"""How many target-optimisation steps does an edit need? Quality of MEMIT edits on SmolLM2 for
settings of the target optimisation (learning rate, step budget, early-stop threshold).

    python benchmarks/targets_steps_quality.py --records 0:30 --lrs 0.5,1.0 \
        --steps 8,10,12,15,20 --early-stop 0.05,0.1,0.15,0.2 --out runs/steps_tune.json
    python benchmarks/targets_steps_quality.py --records 100:160 --lrs 0.5 \
        --configs 0.5:20:0.05,0.5:20:0.15 --out runs/steps_judge.json    # held-out records

The optimisation runs once per learning rate with early stopping off and the most steps, and
every (steps, early-stop) setting is read off that one trajectory: a request's δ after k updates
does not depend on the step budget, and with early stopping it keeps the δ of the first step
whose loss falls below the threshold (each request's δ is independent of the others',
docs/design.md §5). The per-step losses come from the optimiser's DEBUG log, the δ of every step
from the passes' inputs. Each setting's targets are then written with the MEMIT preset
(``--batch`` facts per batch, each batch on the unedited model) and scored on the same
CounterFact records (ES, PS, NS, Score; no generation). Cost is counted in differentiated passes
per fact (the forward and backward passes of requests still optimising), the quantity target
time is proportional to; ``benchmarks/edit_speed_memory.py`` measures the seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from collections import defaultdict
from pathlib import Path

import torch

import massedit.targets.optimise as optimise
from massedit import Editor, StatsSpec, load_model
from massedit.data.locations import default_data_root
from massedit.evals.evaluation import EvalSettings, evaluate, summarize, unedited_reference
from massedit.evals.readers import load_eval_dataset, shared_data_dir
from massedit.targets.optimise import TargetResult, compute_targets, target_groups
from massedit.targets.passes import GroupPass

logger = logging.getLogger("bench")


class _StepLog(logging.Handler):
    """Collects the optimiser's per-step DEBUG records: (step, nll, kl, wd) of one group."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.steps: list[tuple] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("targets: step"):
            self.steps.append(record.args[:4])


def trajectories(model, tok, requests, prefixes, block, hp) -> list[dict]:
    """Per request: h, and per step its δ and loss parts, with early stopping off."""
    deltas: list[torch.Tensor] = []

    class Recording(GroupPass):
        def __call__(self, delta, done):
            deltas.append(delta.detach().clone())  # (g, d) the δ this step is scored at
            return super().__call__(delta, done)

    hp = hp.replace(early_stop_loss=0.0)
    handler = _StepLog()
    log = logging.getLogger(optimise.__name__)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False  # collected here, not printed
    optimise.GroupPass = Recording
    out: list[dict | None] = [None] * len(requests)
    try:
        for idx in target_groups(tok, requests, len(prefixes), hp.target_rows or hp.batch_rows):
            deltas.clear()
            handler.steps.clear()
            res = compute_targets(model, tok, [requests[i] for i in idx], prefixes, block, hp,
                                  progress=False)
            for j, i in enumerate(idx):
                out[i] = {"h": res.h[j],
                          "delta": [d[j] for d in deltas],
                          "loss": [(nll[j], kl[j], wd[j]) for _, nll, kl, wd in handler.steps]}
    finally:
        optimise.GroupPass = GroupPass
        log.removeHandler(handler)
        log.propagate = True
    return out  # type: ignore[return-value]


def settle(traj: dict, steps: int, early_stop: float, kl_factor: float) -> tuple[torch.Tensor,
                                                                                 int, float]:
    """The δ, updates taken and final NLL a run with ``steps`` and ``early_stop`` would give."""
    for it in range(steps):
        nll, kl, wd = traj["loss"][it]
        if nll + kl_factor * kl + wd < early_stop or it == steps - 1:
            return traj["delta"][it], it, nll
    raise ValueError("no steps")


def score_setting(model, tok, editor_args, cases, reference, trajs, steps, early_stop, batch,
                  kl_factor) -> dict:
    rows, updates, nlls = [], [], []
    for lo in range(0, len(cases), batch):
        part = list(range(lo, min(lo + batch, len(cases))))
        settled = [settle(trajs[i], steps, early_stop, kl_factor) for i in part]
        h = torch.stack([trajs[i]["h"] for i in part])  # (b, d)
        z = h + torch.stack([d for d, _, _ in settled])
        fixed = TargetResult(z=z, h=h, nll=torch.tensor([n for _, _, n in settled]),
                             steps=torch.tensor([u for _, u, _ in settled]))
        editor = Editor(model, tok, **editor_args)
        editor._targets = lambda reqs, prefixes, block, fixed=fixed: fixed  # the settled targets
        patch = editor.edit([cases[i].request for i in part])
        try:
            rows += evaluate(model, tok, [cases[i] for i in part], EvalSettings(fluency=False),
                             reference.subset(part).locality_tokens)
        finally:
            patch.revert(model)
        updates += [u for _, u, _ in settled]
        nlls += [n for _, _, n in settled]
    summary = summarize(rows)
    keep = ("score", "efficacy_success", "paraphrase_success", "neighborhood_success",
            "efficacy_magnitude", "paraphrase_magnitude", "neighborhood_magnitude")
    out = {k: round(summary[k], 2) for k in keep}
    # Differentiated passes per fact: the updates taken (the last, scoring-only pass excluded).
    out["passes_per_fact"] = round(sum(updates) / len(updates), 2)
    out["mean_final_nll"] = round(sum(nlls) / len(nlls), 4)
    out["case_scores"] = [_case_successes(r) for r in rows]
    return out


def _case_successes(row: dict) -> list[float]:
    return [row.get("efficacy_success"), row.get("paraphrase_success"),
            row.get("neighborhood_success")]


def paired_spread(a: list, b: list, draws: int = 2000, seed: int = 0) -> dict:
    """Bootstrap over cases of Score(b) − Score(a): mean and 90% interval."""
    from massedit.evals.metrics import _harmonic_mean

    def score(rows, idx):
        means = [sum(rows[i][k] for i in idx) / len(idx) for k in range(3)]
        return _harmonic_mean(means)

    rng = random.Random(seed)
    n = len(a)
    diffs = sorted(score(b, idx) - score(a, idx)
                   for idx in ([rng.randrange(n) for _ in range(n)] for _ in range(draws)))
    return {"mean": round(sum(diffs) / draws, 2), "p05": round(diffs[int(0.05 * draws)], 2),
            "p95": round(diffs[int(0.95 * draws)], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--records", default="0:30", help="CounterFact dev records lo:hi")
    ap.add_argument("--batch", type=int, default=30)
    ap.add_argument("--lrs", default="0.5")
    ap.add_argument("--steps", default="20", help="step budgets to read off")
    ap.add_argument("--early-stop", default="0.05", help="early-stop thresholds to read off")
    ap.add_argument("--configs", default=None,
                    help="explicit lr:steps:early_stop settings (instead of the grid)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    default_data_root(Path(__file__).resolve().parents[1])  # unless $MASSEDIT_DATA is set
    lo, hi = (int(x) for x in args.records.split(":"))
    cases = load_eval_dataset("counterfact", n=hi)[lo:]
    model, tok = load_model(args.model)
    corpus = str(shared_data_dir() / "wikitext-2" / "valid.txt")
    editor_args = {"method": "memit", "progress": False, "stats": StatsSpec(corpus=corpus)}
    editor = Editor(model, tok, **editor_args)
    editor.moments()
    prefixes = editor.prefixes()
    block = editor.adapter.block_name(editor.layers[-1])
    reference = unedited_reference(model, tok, cases, EvalSettings(fluency=False))
    if args.configs:
        grid = [tuple(float(x) for x in c.split(":")) for c in args.configs.split(",")]
    else:
        grid = [(float(lr), int(k), float(es)) for lr in args.lrs.split(",")
                for k in args.steps.split(",") for es in args.early_stop.split(",")]
    by_lr: dict[float, list] = defaultdict(list)
    for lr, k, es in grid:
        by_lr[lr].append((int(k), es))
    results = []
    for lr, settings in by_lr.items():
        hp = editor.hparams.replace(v_lr=lr, v_num_grad_steps=max(k for k, _ in settings))
        t0 = time.perf_counter()
        trajs = trajectories(model, tok, [c.request for c in cases], prefixes, block, hp)
        logger.info("lr %s: trajectories in %.0f s", lr, time.perf_counter() - t0)
        for k, es in settings:
            row = {"lr": lr, "steps": k, "early_stop_loss": es,
                   **score_setting(model, tok, editor_args, cases, reference, trajs, k, es,
                                   args.batch, editor.hparams.kl_factor)}
            logger.info("%s", {key: v for key, v in row.items() if key != "case_scores"})
            results.append(row)
    preset = next((r for r in results if (r["lr"], r["steps"], r["early_stop_loss"]) ==
                   (editor.hparams.v_lr, editor.hparams.v_num_grad_steps,
                    editor.hparams.early_stop_loss)), results[0])
    for row in results:
        row["score_vs_first"] = paired_spread(preset["case_scores"], row["case_scores"])
    summary = [{k: v for k, v in r.items() if k != "case_scores"} for r in results]
    print(json.dumps({"records": args.records, "baseline": {k: preset[k] for k in
                      ("lr", "steps", "early_stop_loss")}, "rows": summary}, indent=1))  # noqa: T201
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"records": args.records, "rows": results}, fh, indent=1)


if __name__ == "__main__":
    main()
