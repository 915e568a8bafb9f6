"""The conformance kit's toy-world bars (massedit/testing/conformance_edits.py): a method may
declare its own (``toy_world_bars`` on its hparams class), the kit holds it to them and names
them in its report; a method that declares none is held to the defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from massedit.baselines.finetune import (
    ConstrainedFineTuneHparams,
    FineTuneHparams,
    fine_tune,
)
from massedit.contracts import MethodSpec
from massedit.editing.registry import get_method, register_method
from massedit.testing import ToyThresholds, check_method
from massedit.testing.conformance_edits import declared_bars, toy_bars

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class UndeclaredFineTuneHparams(FineTuneHparams):
    """FT exactly, without FT's declared bars: the kit must hold it to its defaults."""

    toy_world_bars: ClassVar[dict[str, float] | None] = None


@dataclass(frozen=True)
class BadBarsHparams(FineTuneHparams):
    toy_world_bars: ClassVar[dict[str, float]] = {"efficacy": 1.5, "fluency": 0.1}


register_method(MethodSpec("test_ft_undeclared", editor=fine_tune,
                           hparams=UndeclaredFineTuneHparams, description="FT, no own bars"))
register_method(MethodSpec("test_ft_bad_bars", editor=fine_tune, hparams=BadBarsHparams,
                           description="FT with malformed bars"))


def test_bars_come_from_the_method_else_the_defaults():
    default = ToyThresholds()
    for name in ("rome", "memit", "emmet", "test_ft_undeclared"):
        assert declared_bars(get_method(name)) == {}
        assert toy_bars(get_method(name), None) == {
            m: (getattr(default, m), "default") for m in ("efficacy", "paraphrase", "locality")}
    ft = toy_bars(get_method("ft"), None)
    for metric, bar in FineTuneHparams.toy_world_bars.items():
        assert bar < getattr(default, metric)  # FT's own bars are lower, and named as such
        assert ft[metric] == (bar, f"method's own; default {getattr(default, metric):.2f}")
    # Bars the caller gives win over both, for every metric.
    given = ToyThresholds(0.5, 0.5, 0.5)
    assert toy_bars(get_method("ft"), given) == {
        m: (0.5, "given by the caller") for m in ("efficacy", "paraphrase", "locality")}
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['fluency'\]"):
        declared_bars(get_method("test_ft_bad_bars"))


@pytest.mark.parametrize("method, cls", [("ft", FineTuneHparams),
                                         ("ft-l", ConstrainedFineTuneHparams)])
def test_baselines_pass_their_own_bars_and_the_report_names_them(method, cls, tmp_path,
                                                                  stats_dir):
    report = check_method(method, tiny_types=(), workdir=tmp_path, stats_cache_dir=stats_dir)
    assert report.passed, str(report)
    text = str(report)
    default = ToyThresholds()
    for metric, bar in cls.toy_world_bars.items():
        origin = f"method's own; default {getattr(default, metric):.2f}"
        assert f"toy world {metric} ≥ {bar:.2f} ({origin})" in report.checks()
        assert f"{method}: toy {metric} bar {bar:.2f} ({origin})" in text


def test_a_method_without_its_own_bars_is_held_to_the_defaults(tmp_path, stats_dir):
    """The same editor as FT, minus the declaration: it fails the kit's default bars."""
    report = check_method("test_ft_undeclared", tiny_types=(), workdir=tmp_path,
                          stats_cache_dir=stats_dir, raise_on_failure=False)
    default = ToyThresholds()
    failed = [r.check for r in report.failures]
    assert f"toy world efficacy ≥ {default.efficacy:.2f}" in failed
    assert f"toy world paraphrase ≥ {default.paraphrase:.2f}" in failed
    assert "method's own" not in str(report)
    bars = next(r for r in report.results if r.check == "toy world bars")
    assert bars.detail == "the kit's defaults"
    # The measurement is FT's: the bars differ, not the edit.
    ft = check_method("ft", tiny_types=(), workdir=tmp_path, stats_cache_dir=stats_dir)
    assert ft.measures == report.measures


def test_malformed_bars_fail_the_kit_by_name(tmp_path, stats_dir):
    report = check_method("test_ft_bad_bars", tiny_types=(), workdir=tmp_path,
                          stats_cache_dir=stats_dir, raise_on_failure=False)
    assert [r.check for r in report.failures] == ["toy world bars"]
    assert "test_ft_bad_bars" in report.failures[0].detail
