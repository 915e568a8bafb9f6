"""The paper's four NMT editing tasks (Raunak & Menezes, Table 1) on the toy NMT world.

For each architecture (marian, t5, bart: small models trained on synthetic parallel text with the
four errors planted, cached after the first run) and each task: sweep every encoder and decoder FF
layer, edit at the best one, and report efficacy on the task's check inputs (10, or 1 for the
hallucination) and BLEU on held-out clean pairs, unedited vs edited, without and with
edit-dropout. The sweep ranks sites by efficacy, then BLEU on the first ``--dev-pairs`` held-out
pairs; the BLEU reported is on the other held-out pairs, which the sweep never saw.

``--wide-spans`` widens each task's span by one neighbouring word shared by both sources (the
world's spans are single words, where ``reduce=mean`` and ``reduce=last`` coincide), to compare
the two reductions.

    .venv/bin/python benchmarks/nmt_tasks.py [--archs marian t5 bart] [--value stream]
        [--reduce mean] [--wide-spans] [--dropout 0.1] [--out runs/nmt_tasks.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from massedit.seq2seq.pair_edit import PairEditor, PairSettings
from massedit.seq2seq.pairs import EditPair
from massedit.seq2seq.quality import bleu, efficacy
from massedit.seq2seq.sweep import edit_at_best_site
from massedit.testing.nmt_train import nmt_world_model

log = logging.getLogger("nmt_tasks")


def widened(pair: EditPair) -> EditPair:
    """``pair`` with its span grown by the next (else the previous) word both sources share."""
    neg = pair.negative_source.split()
    i = neg.index(pair.span.split()[-1])
    for lo, hi in ((i - len(pair.span.split()) + 1, i + 2), (i - len(pair.span.split()), i + 1)):
        span = " ".join(neg[max(lo, 0):hi])
        if span != pair.span and f" {span} " in f" {pair.positive_source} ":
            return EditPair(pair.negative_source, pair.positive_source, span,
                            pair.expected_output, pair.case_id)
    return pair


def run_arch(arch: str, args) -> list[dict]:
    model, tok, world = nmt_world_model(arch)
    corpus = world.train[: args.corpus_pairs]
    dev, test = world.heldout[: args.dev_pairs], world.heldout[args.dev_pairs :]
    base_bleu = bleu(model, tok, test)
    rows = []
    for task in world.tasks.values():
        before = efficacy(model, tok, task.checks).rate
        pair = widened(task.pair) if args.wide_spans else task.pair
        row = {"arch": arch, "task": task.name, "checks": len(task.checks), "span": pair.span,
               "efficacy_before": before, "bleu_unedited": base_bleu.score}
        for label, p in (("no_dropout", 0.0), ("dropout", args.dropout)):
            settings = PairSettings(reduce=args.reduce, value=args.value, edit_dropout=p,
                                    dropout_rescale=args.rescale, dropout_seed=args.seed)
            editor = PairEditor(model, tok, corpus=corpus, settings=settings)
            t0 = time.perf_counter()
            patch, sweep = edit_at_best_site(editor, [pair], task.checks, bleu_pairs=dev)
            site = patch.metadata["site"]
            eff = efficacy(model, tok, task.checks).rate
            score = bleu(model, tok, test).score
            patch.revert(model)
            row[label] = {"site": site, "efficacy": eff, "bleu": score,
                          "seconds": round(time.perf_counter() - t0, 1),
                          "sweep": {r.site: r.efficacy for r in sweep}}
            log.info("%s %s %s: site %s efficacy %.0f BLEU %.2f", arch, task.name, label, site,
                     eff, score)
        rows.append(row)
    rows.append({"arch": arch, "bleu_signature": base_bleu.signature})
    return rows


def render(rows: list[dict], args) -> str:
    lines = [f"value={args.value} reduce={args.reduce} dropout p={args.dropout} "
             f"({args.rescale}) wide spans={args.wide_spans}", "",
             "| arch | task | span | checks | efficacy before | layer | efficacy | BLEU |"
             " layer (dropout) | efficacy (dropout) | BLEU (dropout) | BLEU unedited |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "task" not in r:
            continue
        a, b = r["no_dropout"], r["dropout"]
        lines.append(f"| {r['arch']} | {r['task']} | {r['span']} | {r['checks']} | "
                     f"{r['efficacy_before']:.0f} "
                     f"| {a['site']} | {a['efficacy']:.0f} | {a['bleu']:.2f} | {b['site']} | "
                     f"{b['efficacy']:.0f} | {b['bleu']:.2f} | {r['bleu_unedited']:.2f} |")
    sigs = {r["bleu_signature"] for r in rows if "bleu_signature" in r}
    lines += ["", f"BLEU signature: {', '.join(sorted(sigs))}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["marian", "t5", "bart"])
    parser.add_argument("--value", default="stream", choices=["site", "stream"])
    parser.add_argument("--reduce", default="mean", choices=["mean", "last"])
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--rescale", default="inverse", choices=["exact", "inverse", "none"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus-pairs", type=int, default=2000)
    parser.add_argument("--dev-pairs", type=int, default=50)
    parser.add_argument("--wide-spans", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    rows = [row for arch in args.archs for row in run_arch(arch, args)]
    table = render(rows, args)
    print(table)  # noqa: T201 - a benchmark's report
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)},
                                        "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
