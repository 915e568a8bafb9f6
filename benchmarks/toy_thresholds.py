"""How the toy-model tests' numbers spread over independently trained toy models.

Every bar the tests hold a toy-world or NMT-world model to is set below the worst of several
models trained from different seeds (same world, same recipe; the suite's model is training
seed 0), so that the bar tests the method, not the luck of one training run. This script runs
each test's own measurement (the helper the test calls) on the models of ``--seeds`` and prints
the spread; the comment next to each bar quotes it.

    .venv/bin/python benchmarks/toy_thresholds.py [--seeds 0 1 2] [--only cli_edit kit ...]
        [--out runs/toy_thresholds.json]

Models are trained once per seed into ``$MASSEDIT_CACHE`` (bit-reproducible, one CPU thread:
about 2 minutes for gpt2, 5 for the wide gpt2, 1 for llama, marian and t5, 3 for bart, more on a
busy machine); with all of them cached, all measurements of one seed take about 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' measurement helpers

log = logging.getLogger("toy_thresholds")


def memorise(seed: int, work: Path, stats: Path) -> dict:
    from tests.test_testing_kit import memorisation_scores

    return {arch: memorisation_scores(arch, seed) for arch in ("gpt2", "llama")}


def cli_edit(seed: int, work: Path, stats: Path) -> dict:
    from tests.test_cli_models import edit_toy_facts_through_cli

    _, summary = edit_toy_facts_through_cli(work, stats, train_seed=seed)
    return {k: summary[k]["after"] for k in ("efficacy_success", "paraphrase_success",
                                             "neighborhood_success")}


@contextmanager
def cache_at(folder: Path):
    """``MASSEDIT_CACHE`` set to ``folder`` (statistics), as the tests' fixtures do."""
    previous = os.environ.get("MASSEDIT_CACHE")
    os.environ["MASSEDIT_CACHE"] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["MASSEDIT_CACHE"]
        else:
            os.environ["MASSEDIT_CACHE"] = previous


def eval_patch(seed: int, work: Path, stats: Path) -> dict:
    from tests.test_eval_command import build_toy_workspace, evaluate_patch

    toy = build_toy_workspace(work, stats, train_seed=seed)
    with cache_at(stats):
        evaluate_patch(toy, work / "eval")
    summary = json.loads((work / "eval" / "summary.json").read_text())
    return {k: summary[k] for k in ("efficacy_success", "locality", "paraphrase_success",
                                    "neighborhood_success")}


def compare_study(seed: int, work: Path, stats: Path) -> dict:
    """The ROME combinations of tests/test_compare_command.py whose efficacy it bounds."""
    from tests.test_compare_command import combination, compare
    from tests.test_eval_command import build_toy_workspace

    toy = build_toy_workspace(work, stats, train_seed=seed)
    with cache_at(stats):
        assert compare(toy, work / "study", "--methods", "rome", "--batch-sizes", "1,4",
                       "--no-fluency").exit_code == 0
        assert compare(toy, work / "seq", "--methods", "rome", "--objectives", "equality",
                       "--batch-sizes", "2", "--sequential", "--no-fluency").exit_code == 0
    return {
        "rome_b1": combination(work / "study", "rome__-__-__b1__batch__s0")["summary"],
        "rome_b4": combination(work / "study", "rome__-__-__b4__batch__s0")["summary"],
        "rome_equality_b2_seq": combination(work / "seq",
                                            "rome__equality__-__b2__seq__s0")["summary"],
    }


def toyworld_edits(seed: int, work: Path, stats: Path) -> dict:
    from tests.test_toyworld_edits import build_toy, method_scores

    toy = build_toy(work, train_seed=seed)
    return {method: method_scores(method, toy, stats) for method in ("rome", "memit", "emmet")}


def post_norm(seed: int, work: Path, stats: Path) -> dict:
    """The olmo2 toy (a norm after every MLP) edited as tests/test_post_norm_toyworld.py does."""
    from tests.test_post_norm_toyworld import build_post_norm_toy, post_norm_scores

    toy = build_post_norm_toy(work, train_seed=seed)
    return {method: post_norm_scores(method, toy, stats) for method in ("rome", "memit", "emmet")}


def kit(seed: int, work: Path, stats: Path) -> dict:
    """The conformance kit's toy-world edit as check_method runs it (default settings)."""
    from massedit.testing.conformance_edits import TOY_BATCH_SIZES, toy_world_edit
    from tests.test_plugin_alphaedit import ALPHAEDIT_TOY

    runs = {name: dict(method=name) for name in ("rome", "memit", "emmet")}
    runs["alphaedit"] = dict(method="alphaedit", overrides=ALPHAEDIT_TOY)
    runs["alphaedit_defaults"] = dict(method="alphaedit")
    runs["memit_lambda_1e7"] = dict(method="memit", overrides={"mom2_lambda": 1e7})
    return {name: toy_world_edit(workdir=work / name, stats_cache_dir=stats, train_seed=seed,
                                 batch_size=TOY_BATCH_SIZES.get(kw["method"]), **kw)
            for name, kw in runs.items()}


def trace(seed: int, work: Path, stats: Path) -> dict:
    from massedit.testing import toy_world_model
    from tests.test_trace import recovery_scores, suggest_toy_layers, trace_toy_facts

    toy = toy_world_model("gpt2", train_seed=seed)
    suggestion = suggest_toy_layers(*toy)
    return {**recovery_scores(trace_toy_facts(*toy)),
            "suggest_effect": max(suggestion.effects), "rome_layer": suggestion.rome_layer}


def nmt_learned(seed: int, work: Path, stats: Path) -> dict:
    from tests.test_seq2seq_tasks import TASKS, planted_error_rates

    return {arch: planted_error_rates(arch, seed) for arch in sorted(TASKS)}


def nmt_pair_edit(seed: int, work: Path, stats: Path) -> dict:
    from tests.test_seq2seq_tasks import TASKS, pair_edit_scores

    return {arch: pair_edit_scores(arch, seed) for arch in sorted(TASKS)}


def nmt_all_tasks(seed: int, work: Path, stats: Path) -> dict:
    """Every task's pair edit on every architecture (how the tests' TASKS were chosen)."""
    from tests.test_seq2seq_tasks import TASKS, pair_edit_scores

    names = ("hallucination", "memorisation", "poison", "word")
    return {arch: {name: pair_edit_scores(arch, seed, task=name)["after"] for name in names}
            for arch in sorted(TASKS)}


def nmt_cli(seed: int, work: Path, stats: Path) -> dict:
    from tests.test_seq2seq_cli import edit_pairs_at_encoder0, write_marian_files

    files = write_marian_files(work, train_seed=seed)  # the model from the models' cache
    with cache_at(stats):
        results = edit_pairs_at_encoder0(files, work / "run")
    return {"before": results["before"]["efficacy"], "after": results["after"]["efficacy"]}


def nmt_subject_edit(seed: int, work: Path, stats: Path) -> dict:
    from tests.test_seq2seq_tasks import subject_edit_checks, subject_edit_translations

    out = subject_edit_translations(work, train_seed=seed)
    return {**subject_edit_checks(out), "after": out["after"]}


MEASUREMENTS: dict[str, Callable[[int, Path, Path], dict]] = {
    "memorise": memorise,  # tests/test_testing_kit.py
    "cli_edit": cli_edit,  # tests/test_cli_models.py
    "eval": eval_patch,  # tests/test_eval_command.py
    "compare": compare_study,  # tests/test_compare_command.py
    "toyworld_edits": toyworld_edits,  # tests/test_toyworld_edits.py
    "post_norm": post_norm,  # tests/test_post_norm_toyworld.py
    "kit": kit,  # tests/test_conformance.py, tests/test_plugin_alphaedit.py
    "trace": trace,  # tests/test_trace.py
    "nmt_learned": nmt_learned,  # tests/test_seq2seq_tasks.py
    "nmt_pair_edit": nmt_pair_edit,  # tests/test_seq2seq_tasks.py
    "nmt_all_tasks": nmt_all_tasks,  # tests/test_seq2seq_tasks.py (TASKS)
    "nmt_subject_edit": nmt_subject_edit,  # tests/test_seq2seq_tasks.py
    "nmt_cli": nmt_cli,  # tests/test_seq2seq_cli.py
}


def _leaves(tree, prefix=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, (*prefix, str(key)))
    else:
        yield prefix, tree


def spread(results: dict[int, dict]) -> dict[str, str]:
    """``metric -> "lo–hi (seed: value, ...)"`` over seeds, numbers only."""
    table: dict[str, dict[int, float]] = {}
    for seed, tree in results.items():
        for path, value in _leaves(tree):
            if isinstance(value, bool | int | float):
                table.setdefault("/".join(path), {})[seed] = float(value)
    return {name: f"{min(v.values()):.4g}–{max(v.values()):.4g} ("
            + ", ".join(f"{s}: {x:.4g}" for s, x in v.items()) + ")"
            for name, v in table.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=sorted(MEASUREMENTS))
    parser.add_argument("--out", type=Path, help="write all numbers as JSON")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while measuring")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    names = args.only or list(MEASUREMENTS)
    results: dict[str, dict[int, dict]] = {name: {} for name in names}
    with tempfile.TemporaryDirectory(prefix="toy-thresholds-") as tmp:
        for seed in args.seeds:
            stats = Path(tmp) / f"stats-{seed}"  # statistics depend on the model: one per seed
            for name in names:
                work = Path(tmp) / f"{name}-{seed}"
                work.mkdir()
                t0 = time.perf_counter()
                try:
                    results[name][seed] = MEASUREMENTS[name](seed, work, stats)
                except Exception as err:  # a failed measurement is a result too
                    log.exception("%s seed %d failed", name, seed)
                    results[name][seed] = {"error": f"{type(err).__name__}: {err}"}
                log.info("%s seed %d (%.0f s): %s", name, seed, time.perf_counter() - t0,
                         json.dumps(results[name][seed], default=str))
                if args.out:
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps(results, indent=1, default=str))
    for name in names:
        print(f"\n{name} over seeds {', '.join(map(str, args.seeds))}:")
        for metric, text in spread(results[name]).items():
            print(f"  {metric}: {text}")


if __name__ == "__main__":
    main()
