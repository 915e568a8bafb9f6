"""How well IKE's retrieval (massedit/baselines/ike.py) finds a prompt's own fact on a real model.

For N CounterFact dev records held in one memory, each record's rewrite and paraphrase prompts
are embedded with the model's own mean hidden state at a block, and the nearest fact of the
memory is compared with the record's own; neighbourhood prompts (other subjects) should find a
fact of the same relation, which is not measured here. Prints top-1 accuracy per block.

    MASSEDIT_DATA=../shared/data .venv/bin/python benchmarks/ike_retrieval.py \
        [--model smollm2-135m] [--n 50] [--layers 4 10 16 22 29]
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

log = logging.getLogger("ike_retrieval")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default="counterfact")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 10, 16, 22, 29])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from massedit.baselines.ike import embed_texts
    from massedit.data.locations import default_data_root
    from massedit.evals.readers import load_eval_dataset
    from massedit.models.loading import load_model

    default_data_root(__import__("pathlib").Path(__file__).resolve().parents[1])
    cases = load_eval_dataset(args.dataset, args.n, skip_invalid=True)
    model, tok = load_model(args.model)
    facts = [c.request.text for c in cases]
    queries = [(i, p) for i, c in enumerate(cases) for p in (*c.rewrite_prompts,
                                                              *c.paraphrase_prompts)]
    for layer in args.layers:
        t0 = time.perf_counter()
        f = embed_texts(model, tok, facts, layer, 32)  # (n, d)
        q = embed_texts(model, tok, [p for _, p in queries], layer, 32)  # (m, d)
        nearest = (q @ f.T).argmax(1)  # (m,)
        own = torch.tensor([i for i, _ in queries])
        rewrite = [k for k, (i, p) in enumerate(queries) if p in cases[i].rewrite_prompts]
        para = [k for k in range(len(queries)) if k not in set(rewrite)]
        hit = nearest == own
        log.info("block %2d: top-1 own fact: rewrite %.2f, paraphrase %.2f (%d facts, %.1f s)",
                 layer, hit[rewrite].float().mean(), hit[para].float().mean(), len(facts),
                 time.perf_counter() - t0)


if __name__ == "__main__":
    main()
