"""``massedit compare`` end to end on the toy-world model: table, plots, report, re-runs,
crashes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from massedit.editing.registry import register_objective
from massedit.targets.store import TargetStore
from tests.test_cli import invoke
from tests.test_eval_command import SET, STATS_TOKENS, toy_workspace_with_cache


@register_objective
class ExplodingObjective:
    """A plug-in objective that always fails: a combination that crashes."""

    name = "test_exploding"

    def solve(self, problem):
        raise RuntimeError("this objective always fails")


@pytest.fixture(scope="module")
def toy(tmp_path_factory, stats_dir):
    # A target store of this module's own: other modules edit the same toy facts, and the
    # counts below are of targets this module's studies computed.
    store = TargetStore(tmp_path_factory.mktemp("compare-targets"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TargetStore, "default", classmethod(lambda cls, cache_dir=None: store))
        yield from toy_workspace_with_cache(tmp_path_factory, stats_dir, "compare")


def compare(toy, out: Path, *extra: str):
    return invoke("compare", "--model", toy["model"], "--dataset", toy["data"], "--n", "all",
                  "--stats-corpus", toy["corpus"], "--stats-tokens", str(STATS_TOKENS), *SET,
                  "--max-new-tokens", "3", "--out", out, *extra)


@pytest.fixture(scope="module")
def study(toy):
    out = toy["root"] / "study"
    result = compare(toy, out, "--methods", "rome,memit", "--batch-sizes", "1,4")
    assert result.exit_code == 0, result.output
    return out


def read_table(out: Path) -> list[dict]:
    with (out / "results.csv").open() as fh:
        return list(csv.DictReader(fh))


def combination(out: Path, slug: str) -> dict:
    return json.loads((out / "combinations" / f"{slug}.json").read_text())


def test_table_holds_every_combination_and_its_numbers(study) -> None:
    table = read_table(study)
    assert [(r["label"], r["batch_size"]) for r in table] == [
        ("unedited", ""), ("rome", "1"), ("memit", "1"), ("rome", "4"), ("memit", "4")]
    assert all(r["status"] == "finished" for r in table)
    for row in table[1:]:
        rec = combination(study, f"{row['method']}__-__-__b{row['batch_size']}__batch__s0")
        for metric in ("score", "efficacy_success", "neighborhood_success", "fluency"):
            assert float(row[metric]) == pytest.approx(rec["summary"][metric])
        # Each summary is the mean of the combination's per-case rows (all 4 cases).
        assert len(rec["rows"]) == 4
        mean = sum(r["efficacy_success"] for r in rec["rows"]) / 4
        assert rec["summary"]["efficacy_success"] == pytest.approx(mean)
        assert float(row["seconds_per_edit"]) == pytest.approx(rec["seconds"] / 4, abs=1e-3)
    unedited = json.loads((study / "unedited.json").read_text())["summary"]
    assert float(table[0]["efficacy_success"]) == unedited["efficacy_success"] == 0.0
    rome = combination(study, "rome__-__-__b1__batch__s0")["summary"]
    # Over training seeds 0, 1, 2 (benchmarks/toy_thresholds.py compare): 100 on each; the bar
    # is one of the 4 facts below.
    assert rome["efficacy_success"] >= 75.0


def test_targets_are_shared_and_their_cost_charged(study) -> None:
    """memit ends at the same layer with the same target settings as rome: it re-uses rome's
    targets, and is charged what they cost; so do the larger batches (targets are per request)."""
    rome = combination(study, "rome__-__-__b1__batch__s0")
    memit = combination(study, "memit__-__-__b1__batch__s0")
    assert rome["targets_computed"] == 4 and rome["targets_reused"] == 0
    assert memit["targets_computed"] == 0 and memit["targets_reused"] == 4
    for method in ("rome", "memit"):
        larger = combination(study, f"{method}__-__-__b4__batch__s0")
        assert larger["targets_computed"] == 0 and larger["targets_reused"] == 4
        # Charged what the 4 targets cost when rome's batches of 1 computed them.
        assert larger["seconds_targets_reused"] == pytest.approx(
            memit["seconds_targets_reused"], abs=2e-3)
    assert 0 < memit["seconds_targets_reused"] <= rome["seconds_edit"]
    assert memit["seconds"] == pytest.approx(
        memit["seconds_edit"] + memit["seconds_targets_reused"], abs=2e-3)
    assert memit["seconds_targets_reused"] > memit["seconds_edit"]


def test_another_study_reads_the_stored_targets_and_is_charged_their_cost(toy, study,
                                                                          tmp_path) -> None:
    """A study in another folder (or process) computes no target the store already has, and
    is charged what the stored ones cost when computed; without the store it computes them."""
    first = combination(study, "memit__-__-__b1__batch__s0")
    out = tmp_path / "again"
    assert compare(toy, out, "--methods", "rome", "--batch-sizes", "1").exit_code == 0
    again = combination(out, "rome__-__-__b1__batch__s0")
    assert again["targets_computed"] == 0 and again["targets_reused"] == 4
    assert again["seconds_targets_reused"] == pytest.approx(first["seconds_targets_reused"],
                                                            abs=2e-3)
    out = tmp_path / "without"
    assert compare(toy, out, "--methods", "rome", "--batch-sizes", "1",
                   "--no-target-store").exit_code == 0
    alone = combination(out, "rome__-__-__b1__batch__s0")
    assert alone["targets_computed"] == 4 and alone["targets_reused"] == 0


def test_plots_and_report(study) -> None:
    import matplotlib.image

    from massedit.evals.plots import plot_scores

    for name in ("scores_vs_batch_size.png", "time_per_edit.png"):
        image = matplotlib.image.imread(study / "plots" / name)
        assert image.shape[0] > 300 and image.shape[1] > 500
    table = json.loads((study / "results.json").read_text())["rows"]
    drawn = plot_scores(table[1:], study / "check.png")
    by_size = {int(r["batch_size"]): r["score"] for r in table if r["label"] == "rome"}
    assert drawn["score"]["rome"] == [(1, by_size[1], 0.0), (4, by_size[4], 0.0)]
    report = (study / "report.md").read_text()
    assert "![scores_vs_batch_size](plots/scores_vs_batch_size.png)" in report
    assert "![time_per_edit](plots/time_per_edit.png)" in report
    assert report.count("| rome |") == 2 and report.count("| memit |") == 2


def test_rerun_skips_finished_and_runs_only_new_combinations(toy, study) -> None:
    files = sorted((study / "combinations").glob("*.json"))
    stamps = {p.name: p.stat().st_mtime_ns for p in files}
    result = compare(toy, study, "--methods", "rome,memit", "--batch-sizes", "1,2,4")
    assert result.exit_code == 0, result.output
    assert "4 finished combination(s) kept; 2 to run" in result.output
    assert {p.name: p.stat().st_mtime_ns for p in files} == stamps
    assert len(read_table(study)) == 1 + 6
    # Other shared settings would mix incomparable results: the folder is refused.
    refused = compare(toy, study, "--methods", "rome", "--batch-sizes", "1", "--no-fluency")
    assert refused.exit_code == 1 and "other arguments" in " ".join(refused.output.split())


def test_crashed_combination_is_reported_and_others_kept(toy, tmp_path) -> None:
    out = tmp_path / "crash"
    args = ("--methods", "rome", "--objectives", "test_exploding,equality", "--batch-sizes", "2",
            "--sequential", "--no-fluency")
    result = compare(toy, out, *args)
    assert result.exit_code == 1
    table = read_table(out)
    assert [(r["objective"], r["status"]) for r in table[1:]] == [
        ("test_exploding", "error"), ("equality", "finished")]
    assert table[1]["error"] == "RuntimeError: this objective always fails"
    # The failed edit left the model exactly as it was: the next combination finds the first
    # batch's targets (keyed by the weights' digest) already computed by the failed one.
    ok = combination(out, "rome__equality__-__b2__seq__s0")
    assert ok["targets_reused"] == 2 and ok["targets_computed"] == 2  # per request
    assert ok["summary"]["efficacy_success"] >= 75.0  # 100 over training seeds 0, 1, 2
    assert "test_exploding" in (out / "report.md").read_text()
    again = compare(toy, out, *args)  # the failed one is retried, the finished one kept
    assert again.exit_code == 1
    assert "1 finished combination(s) kept; 1 to run" in again.output
