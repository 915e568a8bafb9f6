"""Key statistics: throughput against the forward-pass floor, and edit quality against budget.

    python benchmarks/stats_throughput.py speed --tokens 20000
    python benchmarks/stats_throughput.py quality --n 30 --multiples 10,100

``speed`` runs, on the same corpus, the same tokens and the same batches:
  (a) floor: a plain forward pass stopped after the deepest site (batches tokenised beforehand);
  (b) massedit: ``collect_moments`` on all sites of the MEMIT preset in one pass (tokenising,
      hooks, ``kᵀk`` per site);
  (c) reference-style: one such pass per site, each stopped after its site, as ROME/MEMIT's
      ``layer_stats`` does.
Each mode runs in a fresh child process so that its peak resident memory (CPU) or peak allocated
GPU memory is its own. Reported: seconds, tokens/s, b/a, c/b (total time for all sites), memory.

``quality`` edits N dev CounterFact records at once with MEMIT using statistics of k × the MLP
width tokens for each k, and reports the CounterFact Score (harmonic mean of efficacy, paraphrase
and neighbourhood success); targets are shared between budgets (they do not depend on C).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

logger = logging.getLogger("stats_throughput")
REPO = Path(__file__).resolve().parents[1]


def _peak_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _sites(model) -> list[str]:
    from massedit import Editor
    from massedit.models.adapters import get_adapter

    editor = Editor(model, None, method="memit", progress=False)
    adapter = get_adapter(model)
    return [adapter.site_name(layer) for layer in editor.layers]


@torch.no_grad()
def run_mode(args) -> dict:
    """One mode in this process; returns its measurements."""
    from massedit import load_model
    from massedit.data.corpus import iter_texts
    from massedit.engine.hooks import StopForward, stop_after
    from massedit.engine.tokens import pad_id_of, pad_right
    from massedit.stats.moments import StatsSpec, collect_moments, row_batches

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else None
    model, tok = load_model(args.model, device_map=device)
    sites = _sites(model)
    spec = StatsSpec(corpus=args.corpus, max_length=args.max_length, batch_size=args.batch_size)
    dev = next(model.parameters()).device
    batches = [pad_right(b, pad_id_of(tok), dev) for b in row_batches(
        tok, iter_texts(args.corpus), args.tokens, spec.max_length, spec.batch_size)]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = _peak_mb()
    t0, cpu0 = time.perf_counter(), time.process_time()
    if args.mode == "a":
        deepest = sites[-1]
        with stop_after(model, deepest):
            for batch in batches:
                try:
                    model(**batch, use_cache=False)
                except StopForward:
                    pass
        counted = sum(int(b["attention_mask"].sum()) for b in batches)
    else:
        groups = [sites] if args.mode == "b" else [[s] for s in sites]
        for group in groups:
            result = collect_moments(model, tok, group, iter_texts(args.corpus), args.tokens,
                                     spec, progress=False)
            counted = result.moments[group[0]].count
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    peak = _peak_mb()
    return {"mode": args.mode, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "tokens": counted, "sites": sites,
            "peak_mb": round(peak, 1), "extra_mb": round(peak - baseline, 1),
            "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": args.threads}


def speed(args) -> None:
    results = {}
    for mode in ("a", "b", "c"):
        cmd = [sys.executable, __file__, "_run", "--mode", mode, "--model", args.model,
               "--corpus", args.corpus, "--tokens", str(args.tokens), "--threads",
               str(args.threads), "--max-length", str(args.max_length), "--batch-size",
               str(args.batch_size)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        logger.info("%s", results[mode])
    a, b, c = (results[m] for m in "abc")
    n = b["tokens"]
    summary = {
        "model": args.model, "tokens": n, "sites": b["sites"], "device": b["device"],
        "threads": args.threads,
        "a_floor_tok_s": round(a["tokens"] / a["seconds"]),
        "b_massedit_tok_s": round(n / b["seconds"]),
        "c_per_site_tok_s_all_sites": round(n / c["seconds"]),
        "b_over_a": round(a["seconds"] / b["seconds"], 3),
        "b_speedup_over_c": round(c["seconds"] / b["seconds"], 2),
        # On a shared machine wall time depends on the neighbours; CPU time of these
        # single-threaded runs much less.
        "cpu_b_over_a": round(a["cpu_seconds"] / b["cpu_seconds"], 3),
        "cpu_b_speedup_over_c": round(c["cpu_seconds"] / b["cpu_seconds"], 2),
        "seconds": {m: round(r["seconds"], 2) for m, r in results.items()},
        "cpu_seconds": {m: round(r["cpu_seconds"], 2) for m, r in results.items()},
        "peak_mb": {m: r["peak_mb"] for m, r in results.items()},
        "extra_mb_over_loaded_model": {m: r["extra_mb"] for m, r in results.items()},
    }
    print(json.dumps(summary, indent=2))  # noqa: T201 - the report is this script's output


def quality(args) -> None:
    from massedit import Editor, StatsSpec, load_model
    from massedit.evals.metrics import counterfact_scores, summarize_counterfact
    from massedit.evals.readers import load_eval_dataset
    from massedit.models.adapters import get_adapter

    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    d_in = get_adapter(model).mlp_width(model.config)
    cases = load_eval_dataset("counterfact", n=args.n)
    requests = [c.request for c in cases]
    pre = summarize_counterfact(counterfact_scores(model, tok, cases))
    rows = [{"stats": "unedited", **{k: round(v, 2) for k, v in pre.items()}}]
    print(json.dumps(rows[-1]), flush=True)  # noqa: T201
    targets: dict = {}
    for multiple in (int(m) for m in args.multiples.split(",")):
        tokens = multiple * d_in
        t0 = time.perf_counter()
        editor = Editor(model, tok, method="memit", target_cache=targets,
                        stats=StatsSpec(corpus=args.corpus, tokens=tokens))
        editor.moments()
        stats_s = time.perf_counter() - t0
        patch = editor.edit(requests)
        post = summarize_counterfact(counterfact_scores(model, tok, cases))
        patch.revert(model)
        used = sorted(set(patch.metadata["stats"]["tokens_used"].values()))
        rows.append({"stats": f"{multiple}x d_in", "tokens_asked": tokens, "tokens_used": used,
                     "stats_seconds": round(stats_s, 1),
                     **{k: round(v, 2) for k, v in post.items()}})
        print(json.dumps(rows[-1]), flush=True)  # noqa: T201


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["speed", "quality", "_run"])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--corpus", help="default: wikitext-2/valid.txt in the data mirror "
                    "($MASSEDIT_DATA; for a checkout, shared/data beside it)")
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mode", choices=["a", "b", "c"])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--multiples", default="10,100")
    args = ap.parse_args()
    from massedit.data.locations import default_data_root, require_mirror_file

    default_data_root(REPO)  # the developers' data mirror unless $MASSEDIT_DATA names another
    args.corpus = args.corpus or str(require_mirror_file("wikitext-2/valid.txt"))
    if args.what == "quality":
        require_mirror_file("counterfact/counterfact_dev.json")  # the dev records, not a download
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stderr)
    if args.what == "_run":
        print(json.dumps(run_mode(args)))  # noqa: T201 - read by the parent process
    elif args.what == "speed":
        speed(args)
    else:
        quality(args)


if __name__ == "__main__":
    main()
