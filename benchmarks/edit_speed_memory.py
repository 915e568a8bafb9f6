"""End-to-end MEMIT edits on SmolLM2: seconds per fact and peak memory, old code vs new, in one
invocation (docs/design.md §11).

    # 30 held-out facts (dev records 100..129), one batch, statistics cached; the target
    # optimisation as of --baseline against the working tree, each in its own process:
    python benchmarks/edit_speed_memory.py --n 30 --start 100 --baseline 53e16e6 --repeats 2 --score
    # memory as the batch grows (targets take 2 steps: their memory is one group's anyway)
    python benchmarks/edit_speed_memory.py --scaling 100,2000 --steps 2

Every measurement runs in a fresh child process (``--child``), so its peak RSS is its own:
imports, the model (0.54 GB of weights, read from the file as they are first touched),
statistics from the cache, prefixes, then ``Editor.edit`` timed (wall and CPU seconds of the
process). Peak RSS is sampled every millisecond per stage and checked against ``ru_maxrss``.

"old" is the working tree with the target-optimisation files (``OWNED``) and the MEMIT SmolLM2
preset taken from ``--baseline``: a finder serves those modules' old source before anything is
imported, so everything else (editor, solves, statistics) is the same code in both. Runs
alternate old/new, so a machine shared with other work loads both alike; the ratios are the
figures to read. ``--score`` evaluates the edited facts after the timed edit (CounterFact ES,
PS, NS, Score; no generation) in the same process.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OWNED = {
    "massedit.targets.optimise": "massedit/targets/optimise.py",
    "massedit.targets.passes": "massedit/targets/passes.py",
    "massedit.targets.suffix": "massedit/targets/suffix.py",
    "massedit.targets.rows": "massedit/targets/rows.py",
}  # engine.hooks/keys stay current: the editor and the baselines need their present API
PRESET = "massedit/presets/memit/smollm2-135m.yaml"

logger = logging.getLogger("bench")


def git_show(rev: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout


class _OldSource(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the named modules from source text (another revision's files)."""

    def __init__(self, sources: dict[str, str]) -> None:
        self.sources = sources

    def find_spec(self, name, path=None, target=None):
        if name in self.sources:
            return importlib.util.spec_from_loader(name, self, origin=f"baseline:{name}")
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        exec(compile(self.sources[module.__name__], module.__spec__.origin, "exec"),
             module.__dict__)


class _PeakRss:
    """The largest resident set size seen since the last ``take()``, sampled every ms."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.001)

    def take(self) -> float:
        """GB: the peak since the last call; the next period starts at the current RSS."""
        peak = max(self.peak, self.proc.memory_info().rss)
        self.peak = self.proc.memory_info().rss
        return round(peak / 2**30, 3)


def _accept_group_callback() -> None:
    """The editor now hands ``compute_targets`` an ``on_group_done`` callback; old target code
    does not take it, so it is called once with every request after the old call returns."""
    import massedit.editing.editor as editor_module
    import massedit.targets.optimise as optimise

    old = optimise.compute_targets
    if "on_group_done" in old.__code__.co_varnames:
        return

    def compatible(model, tok, requests, *args, on_group_done=None, **kwargs):
        result = old(model, tok, requests, *args, **kwargs)
        if on_group_done is not None:
            on_group_done(list(range(len(requests))), result)
        return result

    editor_module.compute_targets = compatible


def child(spec: dict) -> dict:
    """One measurement (runs in its own process)."""
    overrides = dict(spec.get("set", {}))
    old_preset = None
    if spec["variant"] == "old":
        import yaml

        sys.meta_path.insert(0, _OldSource({name: git_show(spec["baseline"], path)
                                            for name, path in OWNED.items()}))
        # The whole old preset (settings it did not name take EditHparams' defaults), not the
        # current preset with the old one's keys over it.
        old_preset = yaml.safe_load(git_show(spec["baseline"], PRESET))
    rss = _PeakRss()
    stages: dict[str, float] = {}
    import torch

    torch.set_num_threads(spec["threads"])
    from massedit import Editor, StatsSpec, load_model
    from massedit.data.locations import default_data_root, require_mirror_file
    from massedit.evals.readers import load_eval_dataset

    default_data_root(ROOT)  # unless $MASSEDIT_DATA is set

    if spec["variant"] == "old":
        _accept_group_callback()
    stages["imports"] = rss.take()
    model, tok = load_model(spec["model"])
    stages["load"] = rss.take()
    corpus = str(require_mirror_file("wikitext-2/valid.txt"))
    from massedit.engine.hparams import EditHparams

    hparams = EditHparams().replace(**old_preset) if old_preset is not None else None
    editor = Editor(model, tok, method="memit", progress=False, stats=StatsSpec(corpus=corpus),
                    hparams=hparams, **overrides)
    editor.moments()
    editor.prefixes()
    stages["statistics_prefixes"] = rss.take()
    cases = load_eval_dataset(spec["dataset"], n=spec["start"] + spec["n"])[spec["start"]:]
    requests = [c.request for c in cases]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    patch = editor.edit(requests, batch_size=spec.get("batch_size"))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    stages["edit"] = rss.take()
    out = {
        "variant": spec["variant"], "n": len(requests), "wall_s_per_fact": wall / len(requests),
        "cpu_s_per_fact": cpu / len(requests), "peak_rss_gb": max(stages.values()),
        "ru_maxrss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "stages_peak_rss_gb": stages,
        "mean_target_nll": statistics.fmean(patch.metadata.get("target_nll", [float("nan")])),
        "hparams": {k: editor.hparams.to_dict()[k] for k in
                    ("v_lr", "v_num_grad_steps", "early_stop_loss", "batch_rows")},
    }
    if spec.get("score"):
        from massedit.evals.evaluation import EvalSettings, evaluate, summarize

        settings = EvalSettings(fluency=False)
        patch.revert(model)
        from massedit.evals.evaluation import unedited_reference

        reference = unedited_reference(model, tok, cases, settings)
        patch.apply(model)
        rows = evaluate(model, tok, cases, settings, reference.locality_tokens)
        summary = summarize(rows)
        out["quality"] = {k: round(summary[k], 2) for k in (
            "score", "efficacy_success", "paraphrase_success", "neighborhood_success",
            "efficacy_magnitude", "paraphrase_magnitude", "neighborhood_magnitude")}
    return out


def run_child(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        raise RuntimeError(f"child {spec['variant']} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    logger.info("%s", result)
    return result


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dataset", default="counterfact")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--start", type=int, default=100, help="first record (held-out: >= 100)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline", default=None, help="git revision of the old target code")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--score", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="hyper-parameter overrides for both variants")
    ap.add_argument("--scaling", default=None,
                    help="batch sizes whose peak memory to compare (new code only)")
    ap.add_argument("--steps", type=int, default=None, help="v_num_grad_steps for --scaling")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))  # noqa: T201
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    overrides = dict(kv.split("=", 1) for kv in args.set)
    base = {"model": args.model, "dataset": args.dataset, "n": args.n, "start": args.start,
            "threads": args.threads, "baseline": args.baseline, "score": args.score,
            "set": overrides}
    report: dict = {"command": " ".join(sys.argv)}
    if args.scaling:
        if args.steps:
            overrides["v_num_grad_steps"] = str(args.steps)
        sizes = [int(x) for x in args.scaling.split(",")]
        runs = [run_child({**base, "variant": "new", "n": n, "score": False}) for n in sizes]
        report["scaling"] = runs
        report["peak_ratio_largest_vs_smallest"] = round(
            runs[-1]["peak_rss_gb"] / runs[0]["peak_rss_gb"], 3)
    else:
        variants = ["old", "new"] if args.baseline else ["new"]
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for _ in range(args.repeats):
            for v in variants:
                runs[v].append(run_child({**base, "variant": v}))
        report["runs"] = runs
        for v in variants:
            report[v] = {k: _median(runs[v], k) for k in
                         ("wall_s_per_fact", "cpu_s_per_fact", "peak_rss_gb")}
        if args.baseline:
            report["speedup_wall"] = round(report["old"]["wall_s_per_fact"]
                                           / report["new"]["wall_s_per_fact"], 2)
            report["speedup_cpu"] = round(report["old"]["cpu_s_per_fact"]
                                          / report["new"]["cpu_s_per_fact"], 2)
            report["peak_rss_ratio"] = round(report["new"]["peak_rss_gb"]
                                             / report["old"]["peak_rss_gb"], 3)
    print(json.dumps(report, indent=1))  # noqa: T201


if __name__ == "__main__":
    main()
