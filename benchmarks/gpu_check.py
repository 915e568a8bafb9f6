"""The measured half of ``benchmarks/gpu_check.sh``: MEMIT on SmolLM2 on one device (issue 18).

    python benchmarks/gpu_check.py --device cuda --dtype bfloat16 --n 1000 --out gpu_check.json
    python benchmarks/gpu_check.py --device cpu --quick --out dry_run.json   # the dry run

On the model loaded in ``--dtype`` on ``--device`` (``load_model(device_map=...)``, as
``massedit edit --device-map cuda --dtype bfloat16`` does):

1. **statistics throughput**: the MEMIT preset's sites counted in one pass over a fresh cache
   (tokens per second; docs/design.md §6);
2. **the edit**: ``--n`` facts in one MEMIT batch: seconds per fact, and of that the targets'
   seconds (targets per second), and the peak device memory of the edit (CUDA: peak allocated
   after a reset; CPU: the process's peak RSS, which includes loading);
3. **quality**: ES/PS/NS/Score (docs/design.md §9) on ``--measure`` of the edited facts, before
   and after, and whether revert gives back every edited weight bit for bit;
4. **device agreement**: the same MEMIT edit of three facts on a tiny Llama on the CPU and on
   ``--device``, their largest weight difference (float32; equal up to kernel rounding).

Facts come from CounterFact in the EasyEdit form if the data mirror has it (10,000 records),
else from the full CounterFact (downloaded once into the cache); statistics from WikiText-2
validation in the mirror, else massedit's default corpus. ``--quick`` shrinks everything (10
facts, 5,000 statistics tokens, 5 target steps) so the script's path can be tried anywhere;
its quality figures then say nothing about the method (targets stop far from converged).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch

from massedit.atomic import write_json_atomic
from massedit.data.locations import default_data_root, mirror_file

logger = logging.getLogger("gpu_check")
QUALITY = ("efficacy_success", "paraphrase_success", "neighborhood_success", "score")


def peak_memory_gb(device: str) -> float:
    """Peak allocated CUDA memory since the last reset, else this process's peak RSS."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def environment(device: str) -> dict:
    from massedit.version import __version__

    env = {"massedit": __version__, "torch": torch.__version__, "python": platform.python_version(),
           "device": device, "threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        env.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, bf16_supported=torch.cuda.is_bf16_supported())
    return env


def fact_source() -> str:
    """The EasyEdit CounterFact file in the mirror, else the full CounterFact (downloaded)."""
    from massedit.data.datasets import dataset_file

    try:
        return str(dataset_file("counterfact_easyedit", allow_download=False))
    except (FileNotFoundError, ValueError, OSError):
        return "counterfact"


def device_agreement(device: str) -> dict:
    """MEMIT on a tiny Llama on the CPU and on ``device``: the largest weight difference."""
    from massedit import Editor, StatsSpec
    from massedit.engine.requests import EditRequest
    from massedit.models.adapters import get_module
    from massedit.testing import TINY_WORDS, tiny_model

    requests = [EditRequest("The {} is located in", "Eiffel Tower", "Rome", "Paris"),
                EditRequest("{} plays", "Michael Jordan", "football", "basketball"),
                EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English",
                            "French")]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "words.txt"  # every tiny word, so the statistics are full rank
        words = list(TINY_WORDS)
        corpus.write_text("\n\n".join(" ".join(words[i::7]) + " ." for i in range(7)) * 20)
        weights = []
        for where in ("cpu", device):
            model, tok = tiny_model("llama")
            model.to(where)
            editor = Editor(model, tok, "memit", stats=StatsSpec(corpus=str(corpus),
                                                                 cache_dir=f"{tmp}/{where}"),
                            progress=False, layers=[1, 2], v_num_grad_steps=4,
                            context_lengths=((2, 4),), stats_tokens_per_width=30,
                            max_update_ratio=1e9)
            patch = editor.edit(requests)
            weights.append({sd.site: get_module(model, sd.site).weight.detach().cpu().clone()
                            for sd in patch.deltas})
    diff = max(float((weights[1][s] - weights[0][s]).abs().max()) for s in weights[0])
    scale = max(float(w.abs().max()) for w in weights[0].values())
    return {"sites": sorted(weights[0]), "max_abs_weight_difference": diff,
            "max_abs_weight": scale}


def run(args) -> dict:
    from massedit import Editor, StatsSpec, load_model
    from massedit.evals.evaluation import EvalSettings, evaluate, summarize, unedited_reference
    from massedit.evals.readers import load_eval_dataset
    from massedit.models.adapters import get_module

    out: dict = {"arguments": vars(args), "environment": environment(args.device)}
    t0 = time.perf_counter()
    model, tok = load_model(args.model, dtype=args.dtype, device_map=args.device)
    out["load_seconds"] = round(time.perf_counter() - t0, 2)
    source = args.dataset or fact_source()
    cases = load_eval_dataset(source, args.n)
    out["facts"] = {"source": source, "n": len(cases)}
    wikitext = mirror_file("wikitext-2/valid.txt")
    corpus = args.stats_corpus or (str(wikitext) if wikitext else None)  # None: the default
    overrides = {"v_num_grad_steps": 5} if args.quick else {}
    # --set: e.g. target_rows=512 (larger target groups use a large GPU better; they never
    # change a target, docs/scale.md); recorded in the JSON's arguments.
    overrides.update(item.split("=", 1) for item in args.set)
    with tempfile.TemporaryDirectory() as fresh_cache:  # statistics computed, not read
        spec = StatsSpec(corpus=corpus, tokens=args.stats_tokens, cache_dir=fresh_cache)
        editor = Editor(model, tok, "memit", stats=spec, progress=not args.no_progress,
                        **overrides)
        reset_peak(args.device)
        t0 = time.perf_counter()
        moments = editor.moments()
        seconds = time.perf_counter() - t0
    counted = next(iter(moments.values())).count
    out["statistics"] = {"corpus": editor.stats_spec.corpus, "sites": len(moments),
                         "tokens": counted, "seconds": round(seconds, 2),
                         "tokens_per_second": round(counted / seconds, 1),
                         "peak_memory_gb": round(peak_memory_gb(args.device), 3)}
    logger.info("statistics: %s", out["statistics"])
    editor.prefixes()

    settings = EvalSettings(fluency=False)
    measured = cases[: args.measure]
    reference = unedited_reference(model, tok, measured, settings)
    sites = [get_module(model, editor.adapter.site_name(layer)) for layer in editor.layers]
    originals = [m.weight.detach().clone() for m in sites]
    reset_peak(args.device)
    t0 = time.perf_counter()
    patch = editor.edit([c.request for c in cases])
    edit_seconds = time.perf_counter() - t0
    peak = peak_memory_gb(args.device)
    target_seconds = sum(float(t.seconds) for t in editor.target_cache.values())
    n = len(cases)
    out["edit"] = {"method": "memit", "layers": editor.layers, "dtype": args.dtype, "facts": n,
                   "seconds": round(edit_seconds, 2),
                   "seconds_per_fact": round(edit_seconds / n, 4),
                   "targets_seconds": round(target_seconds, 2),
                   "targets_per_second": round(n / max(target_seconds, 1e-9), 3),
                   "keys_and_solves_seconds": round(edit_seconds - target_seconds, 2),
                   "peak_memory_gb": round(peak, 3),
                   "peak_memory_kind": "cuda max allocated (edit only)"
                   if args.device.startswith("cuda") else "process peak RSS (since start)",
                   "weight_dtypes": sorted({str(m.weight.dtype) for m in sites})}
    logger.info("edit: %s", out["edit"])
    rows = evaluate(model, tok, measured, settings, reference.locality_tokens)
    before, after = summarize(reference.rows), summarize(rows)
    out["quality"] = {"measured": len(measured),
                      "before": {k: before.get(k) for k in QUALITY},
                      "after": {k: after.get(k) for k in QUALITY}}
    patch.revert(model)
    out["revert_bit_exact"] = all(torch.equal(m.weight, w) for m, w in zip(sites, originals,
                                                                           strict=True))
    out["device_agreement"] = device_agreement(args.device)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:1, cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=None, help="facts in the batch (default 1000; "
                    "--quick: 10)")
    ap.add_argument("--measure", type=int, default=100, help="edited facts scored")
    ap.add_argument("--stats-tokens", type=int, default=None,
                    help="statistics budget (default: the preset's, 100 x MLP width; --quick: "
                         "5000)")
    ap.add_argument("--stats-corpus", default=None)
    ap.add_argument("--dataset", default=None, help="facts (default: see above)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="MEMIT hyper-parameter override (repeatable), e.g. target_rows=512")
    ap.add_argument("--quick", action="store_true", help="shrink everything: a dry run")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", default="runs/gpu_check/gpu_check.json")
    args = ap.parse_args()
    if args.n is None:
        args.n = 10 if args.quick else 1000
    if args.stats_tokens is None and args.quick:
        args.stats_tokens = 5000
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --quick for the dry run")
    default_data_root(Path(__file__).resolve().parents[1])  # unless $MASSEDIT_DATA is set
    result = run(args)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
