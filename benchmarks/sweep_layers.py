"""Layer and λ sweep on dev CounterFact records: how presets for a new model are chosen.

    python benchmarks/sweep_layers.py --model smollm2-135m --n 10 \
        --config "rome:layers=[4]" --config "memit:layers=[2,3,4,5,6];mom2_lambda=1000"

Each ``--config`` is ``method:key=value;key=value``. Targets are shared between configurations
with the same last layer and target settings. Writes a CSV/JSON table to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from massedit import Editor, StatsSpec, load_model
from massedit.data.locations import default_data_root, require_mirror_file
from massedit.evals.metrics import counterfact_scores, summarize_counterfact
from massedit.evals.readers import load_eval_dataset

logger = logging.getLogger("sweep")


def parse_config(text: str) -> tuple[str, dict]:
    method, _, rest = text.partition(":")
    overrides = dict(kv.split("=", 1) for kv in rest.split(";") if kv.strip())
    return method, overrides


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dataset", default="counterfact")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--config", action="append", required=True)
    ap.add_argument("--stats-corpus", default=None,
                    help="default: wikitext-2/valid.txt in the data mirror ($MASSEDIT_DATA)")
    ap.add_argument("--stats-tokens", type=int, default=None)
    ap.add_argument("--out", default="runs/sweep")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # The dev records and WikiText-2 of the developers' mirror, unless $MASSEDIT_DATA is set.
    default_data_root(Path(__file__).resolve().parents[1])
    args.stats_corpus = args.stats_corpus or str(require_mirror_file("wikitext-2/valid.txt"))

    model, tok = load_model(args.model)
    cases = load_eval_dataset(args.dataset, n=args.offset + args.n)[args.offset :]
    requests = [c.request for c in cases]
    pre = summarize_counterfact(counterfact_scores(model, tok, cases))
    logger.info("unedited: %s", {k: round(v, 1) for k, v in pre.items()})
    stats = StatsSpec(corpus=args.stats_corpus, tokens=args.stats_tokens)
    shared_targets: dict = {}
    rows = []
    for text in args.config:
        method, overrides = parse_config(text)
        editor = Editor(model, tok, method=method, stats=stats, target_cache=shared_targets,
                        **overrides)
        t0 = time.perf_counter()
        try:
            patch = editor.edit(requests)
        except Exception as err:  # a failed configuration is a result too
            logger.warning("%s failed: %s", text, err)
            rows.append({"config": text, "error": str(err)})
            continue
        seconds = time.perf_counter() - t0
        post = summarize_counterfact(counterfact_scores(model, tok, cases))
        patch.revert(model)
        row = {"config": text, "seconds": round(seconds, 1),
               **{k: round(v, 2) for k, v in post.items()},
               "neighborhood_success_pre": round(pre["neighborhood_success"], 2)}
        logger.info("%s", row)
        rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps({"unedited": pre, "rows": rows}, indent=2))
    for row in rows:
        print(json.dumps(row))  # noqa: T201 - the table is this script's output


if __name__ == "__main__":
    main()
