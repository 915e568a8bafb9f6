"""Sequential editing on the toy-world model: AlphaEdit vs MEMIT (issue 8).

    .venv/bin/python benchmarks/sequential_alphaedit.py --batches 10 --batch-size 10

Writes ``batches × batch_size`` counterfactual facts batch after batch (each batch on the model the
previous one left) and reports, per method: the efficacy of the FIRST batch after each later
batch (does a later edit overwrite an earlier one?), the efficacy and paraphrase success of all
facts at the end, and locality (the share of 200 unedited facts, recalled before, still recalled
after). Needs the example plug-in (``pip install --no-deps -e examples/plugin_alphaedit``).
Extra settings per method: ``--set memit:mom2_lambda=100 --set alphaedit:null_space_l2=3``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from massedit import Editor, StatsSpec
from massedit.testing import TOY_EDIT_LAYERS, toy_world_model
from massedit.testing.conformance_edits import TOY_PRESETS
from massedit.testing.toyworld import WIDE_GPT2_EDIT_LAYERS, WIDE_GPT2_SPEC, recall

logger = logging.getLogger("bench")

# The toy model's key statistics have another scale than a real model's (docs/design.md §5: λ does
# not transfer): MEMIT's λ is the conformance kit's toy preset (TOY_PRESETS), which
# tests/test_toyworld_edits.py uses too.
DEFAULTS = {
    "memit": dict(TOY_PRESETS["memit"]),
    "alphaedit": {},
}
COMMON = {"v_num_grad_steps": 40}


def hits(model, tok, pairs) -> float:
    with torch.no_grad():
        found = recall(model, tok, [p for p, _ in pairs], [a for _, a in pairs])[0]
    return found.float().mean().item()


def toy(args):
    """A fresh copy of the toy model from the cache, and the layers to edit it at: the default
    model, or with ``--wide`` the wide GPT-2 whose batch edits stay specific (toyworld.py)."""
    if args.wide:
        return (*toy_world_model("gpt2", spec=WIDE_GPT2_SPEC), WIDE_GPT2_EDIT_LAYERS)
    return (*toy_world_model(args.arch), TOY_EDIT_LAYERS[args.arch])


def run(method: str, settings: dict, args, corpus: Path, stats_dir: Path) -> dict:
    model, tok, world, layers = toy(args)
    requests = world.requests(args.batches * args.batch_size, seed=args.seed)
    edited = {r.subject for r in requests}
    others = [f for f in world.facts if f["subject"] not in edited][: args.n_unrelated]
    unrelated = [(f["templates"][0].format(f["subject"]), f["object"]) for f in others]
    with torch.no_grad():
        known = recall(model, tok, [p for p, _ in unrelated], [a for _, a in unrelated])[0]
    unrelated = [pair for pair, k in zip(unrelated, known.tolist(), strict=True) if k]
    first = [(r.text, r.target_new) for r in requests[: args.batch_size]]
    editor = Editor(model, tok, method=method, progress=False,
                    stats=StatsSpec(corpus=str(corpus), cache_dir=str(stats_dir)),
                    **{"layers": layers, **COMMON, **settings})
    first_batch_curve = []

    def after_batch(index: int, patch) -> None:
        first_batch_curve.append(round(hits(model, tok, first), 3))
        logger.info("%s: batch %d done, first batch efficacy %.2f", method, index + 1,
                    first_batch_curve[-1])

    t0 = time.perf_counter()
    editor.edit(requests, batch_size=args.batch_size, on_batch_done=after_batch)
    seconds = time.perf_counter() - t0
    return {
        "method": method, "settings": settings,
        "first_batch_efficacy_after_last": first_batch_curve[-1],
        "first_batch_efficacy_curve": first_batch_curve,
        "efficacy_all": round(hits(model, tok, [(r.text, r.target_new) for r in requests]), 3),
        "paraphrase_all": round(hits(model, tok, [(p, r.target_new) for r in requests
                                                  for p in r.paraphrases]), 3),
        "locality": round(hits(model, tok, unrelated), 3),
        "n_unrelated_known": len(unrelated),
        "seconds": round(seconds, 1),
    }


def parse_sets(items: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {m: dict(v) for m, v in DEFAULTS.items()}
    for item in items:
        method, assignment = item.split(":", 1)
        key, value = assignment.split("=", 1)
        out.setdefault(method, {})[key] = float(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="gpt2")
    ap.add_argument("--methods", default="memit,alphaedit")
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--n-unrelated", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="METHOD:KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--wide", action="store_true", help="edit the wide toy GPT-2 at layer 0")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("massedit").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    settings = parse_sets(args.set)
    with tempfile.TemporaryDirectory() as tmp:
        _, _, world, _ = toy(args)
        corpus = Path(tmp) / f"toyworld-{args.arch}.txt"
        corpus.write_text(world.corpus_text())
        rows = [run(m, settings.get(m, {}), args, corpus, Path(tmp) / "stats")
                for m in args.methods.split(",")]
    for row in rows:
        logger.info("%s", json.dumps(row))
    header = f"{'method':<10} {'settings':<34} {'first batch':>11} {'all':>6} {'para':>6} " \
             f"{'locality':>8}"
    logger.info(header)
    for r in rows:
        logger.info("%-10s %-34s %11.2f %6.2f %6.2f %8.2f", r["method"], json.dumps(r["settings"]),
                    r["first_batch_efficacy_after_last"], r["efficacy_all"], r["paraphrase_all"],
                    r["locality"])
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)},
                                        "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
