"""The conformance kit (massedit.testing): the built-ins pass it, broken parts are caught and
named, and the tiny example distribution passes it (issue 8)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from massedit.algorithms import EqualityObjective, LeastSquaresObjective
from massedit.distribution import SingleLayer, Spread
from massedit.editing.registry import DISTRIBUTIONS
from massedit.engine.problem import Delta
from massedit.testing import (
    ConformanceError,
    ToyThresholds,
    check_distribution,
    check_method,
    check_objective,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


@pytest.mark.parametrize("cls, declared", [
    (EqualityObjective, "exact: writes Ŵ K = W K + R (mu = 0)"),
    (LeastSquaresObjective, "normal equations: ΔW (λC + K Kᵀ) = R Kᵀ"),
])
def test_builtin_objectives_pass_their_declared_checks(cls, declared):
    report = check_objective(cls)
    assert report.passed
    assert declared in report.checks()
    assert "zero residual gives a zero update" in report.checks()
    assert {"runs on cpu", "model weight in bfloat16"} <= set(report.checks())


@pytest.mark.parametrize("cls", [SingleLayer, Spread])
def test_builtin_distributions_pass(cls):
    report = check_distribution(cls)
    assert report.passed and len(report.results) == 7


@pytest.mark.parametrize("method", ["rome", "memit", "emmet"])
def test_builtin_methods_pass_on_tiny_and_toy_world_models(method, tmp_path, stats_dir):
    """The built-ins pass the kit as a plug-in author runs it: default thresholds, no overrides
    (their toy-world settings are the kit's TOY_PRESETS)."""
    report = check_method(method, workdir=tmp_path, stats_cache_dir=stats_dir)
    assert report.passed, str(report)
    checks = report.checks()
    assert any(c.startswith("tiny gpt2 on cpu") for c in checks)
    assert any(c.startswith("tiny llama on cpu") for c in checks)
    assert any(c.startswith("objective ") for c in checks)
    assert any(c.startswith("distribution ") for c in checks)
    bars = ToyThresholds()
    assert {f"toy world {name} ≥ {getattr(bars, name):.2f}"
            for name in ("efficacy", "paraphrase", "locality")} <= set(checks)


# ---- the kit catches what is wrong -----------------------------------------------------------
class TransposedObjective(LeastSquaresObjective):
    """ΔW in Conv1D layout (d_in, d_out): the classic orientation bug."""

    name = "transposed"

    def solve(self, problem):
        return Delta(dense=super().solve(problem).matrix().T.contiguous())


class ClaimsExact(LeastSquaresObjective):
    """Least squares does not write the keys exactly, so this promise is false."""

    name = "claims_exact"
    exact = True


class MutatesInputs(EqualityObjective):
    name = "mutates"

    def solve(self, problem):
        delta = super().solve(problem)
        problem.residual.zero_()
        return delta


class Leaky(Spread):
    """Each layer takes too little: part of the residual is never written."""

    name = "leaky"

    def share(self, residual, step, remaining):
        return residual / (remaining + 1)


class Unsorted(Spread):
    name = "unsorted"

    def layers(self, preset_layers):
        return sorted(preset_layers, reverse=True)


def test_kit_names_what_is_wrong_with_an_objective():
    with pytest.raises(ConformanceError) as err:
        check_objective(TransposedObjective)
    message = str(err.value)
    assert "objective 'transposed' failed" in message
    assert "returns a Delta of shape (d_out, d_in): ΔW is (20, 12)" in message

    report = check_objective(ClaimsExact, raise_on_failure=False)
    assert [r.check for r in report.failures] == ["exact: writes Ŵ K = W K + R (mu = 0)"]
    report = check_objective(MutatesInputs, raise_on_failure=False)
    assert "leaves W, K, R and C unchanged" in [r.check for r in report.failures]
    assert "solve modified W, K, R or C in place" in str(report)


def test_kit_names_what_is_wrong_with_a_distribution():
    report = check_distribution(Leaky, raise_on_failure=False)
    failed = [r.check for r in report.failures]
    assert failed == [f"shares add up to the residual over {p} on cpu"
                      for p in ([5], [2, 3, 4], [1, 3, 6, 7])]
    assert "of the residual is never written" in report.failures[0].detail
    report = check_distribution(Unsorted, raise_on_failure=False)
    assert "layers from preset [2, 3, 4]" in [r.check for r in report.failures]
    assert "not strictly increasing" in str(report)


def test_kit_reports_an_unknown_method_and_low_toy_scores(tmp_path, stats_dir):
    with pytest.raises(ConformanceError, match="unknown method 'no_such_method'"):
        check_method("no_such_method")
    # λ far too large for the toy model: the update is too small to flip its facts.
    bars = ToyThresholds()
    report = check_method("memit", overrides={"mom2_lambda": 1e7}, tiny_types=(),
                          workdir=tmp_path, stats_cache_dir=stats_dir, raise_on_failure=False)
    assert [r.check for r in report.failures] == [f"toy world efficacy ≥ {bars.efficacy:.2f}",
                                                  f"toy world paraphrase ≥ {bars.paraphrase:.2f}"]
    # Over training seeds 0, 1, 2 (benchmarks/toy_thresholds.py kit): efficacy 0, locality 1.
    assert report.measures["efficacy"] < bars.efficacy and report.measures["locality"] > 0.9


# ---- the ~30-line example distribution -------------------------------------------------------
@pytest.fixture(scope="module")
def score_weighted():
    name = "massedit_example_weighted_distribution"
    if name not in sys.modules:  # import once: a second class with the same name would clash
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / "weighted_distribution.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].ScoreWeighted


def test_score_weighted_example_passes_the_kit(score_weighted):
    assert DISTRIBUTIONS["score_weighted"] is score_weighted  # registered by its decorator
    assert check_distribution(score_weighted).passed

    class Traced(score_weighted):  # scores as from a causal trace: layer 3 matters most
        SCORES = {1: 1.0, 2: 1.0, 3: 6.0}

    report = check_distribution(Traced)
    walk = next(r for r in report.results if r.check.startswith("shares add up") and
                "[2, 3, 4]" in r.check)
    assert walk.detail == "fractions 0.12, 0.75, 0.12"  # 1 : 6 : 1 (layer 4 has no score: 1)
    dist = Traced()
    dist.layers([1, 2, 3])
    residual = torch.ones(2, 4)  # (n, d)
    first = dist.share(residual, 0, 3)
    torch.testing.assert_close(first, residual / 8)
