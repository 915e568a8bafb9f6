"""Conformance kit: the checks every objective, distribution and method must pass (docs/design.md
§4).

Plug-in authors run the same checks the built-ins pass::

    from massedit.testing import check_distribution, check_method, check_objective

    check_objective(MyObjective)        # algebra on synthetic problems, instant
    check_distribution(MyDistribution)  # layer choice and residual shares, instant
    check_method("my_method")           # the above + edits of tiny and toy-world models (~10 s)

Each returns a :class:`ConformanceReport` and raises :class:`ConformanceError` listing every
failed check (pass ``raise_on_failure=False`` to inspect the report instead).

An objective declares what else it promises with class attributes, and the kit holds it to them:

- ``exact = True``: with ``mu = 0`` the new keys are written exactly, ``Ŵ K = W K + R``;
- ``normal_equations = True``: ``ΔW (λC + K Kᵀ) = R Kᵀ`` (least squares with λ = mom2_lambda);
- ``preserves_corpus_keys = True``: keys in the range of ``C`` are left unchanged, ``ΔW C = 0``,
  whenever ``C`` is rank-deficient (AlphaEdit's null-space projection);
- ``uses_prior_keys = True``: keys of earlier sequential batches (``problem.prior_keys``) are
  disturbed less than when they are not given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from massedit.engine.hparams import EditHparams
from massedit.engine.problem import Delta, LayerProblem, SecondMoment

logger = logging.getLogger(__name__)

# Synthetic problem sizes: d_in != d_out so a transposed update can never pass a shape check.
D_OUT, D_IN, N_KEYS, CORPUS_RANK = 12, 20, 3, 8


# ---- reports ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckResult:
    check: str
    passed: bool
    detail: str = ""


@dataclass
class ConformanceReport:
    """Every check run on one objective, distribution or method, and the numbers measured."""

    subject: str
    results: list[CheckResult] = field(default_factory=list)
    measures: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def checks(self) -> list[str]:
        return [r.check for r in self.results]

    def include(self, other: ConformanceReport, prefix: str) -> None:
        self.results += [CheckResult(f"{prefix}: {r.check}", r.passed, r.detail)
                         for r in other.results]
        self.measures.update({f"{prefix}: {k}": v for k, v in other.measures.items()})

    def __str__(self) -> str:
        lines = [f"{self.subject}: {len(self.results) - len(self.failures)} of "
                 f"{len(self.results)} checks passed"]
        lines += [f"  {'ok  ' if r.passed else 'FAIL'} {r.check}" + (f" — {r.detail}"
                  if r.detail else "") for r in self.results]
        return "\n".join(lines)

    def raise_for_failures(self) -> ConformanceReport:
        if not self.passed:
            raise ConformanceError(self)
        return self


class ConformanceError(AssertionError):
    """Some conformance checks failed; ``.report`` holds all results."""

    def __init__(self, report: ConformanceReport) -> None:
        failed = "\n".join(f"  - {r.check}: {r.detail}" for r in report.failures)
        super().__init__(f"{report.subject} failed {len(report.failures)} of "
                         f"{len(report.results)} conformance checks:\n{failed}")
        self.report = report


def run_check(report: ConformanceReport, name: str, fn: Callable[[], str | None]) -> None:
    """Run one check; an exception (assertion or any other) is recorded as its failure."""
    try:
        detail = fn() or ""
        report.results.append(CheckResult(name, True, detail))
    except Exception as err:  # the kit reports; it never stops at the first failure
        message = str(err) if isinstance(err, AssertionError) else f"{type(err).__name__}: {err}"
        report.results.append(CheckResult(name, False, message))
        logger.debug("check %r failed", name, exc_info=True)


def default_devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ---- synthetic problems ----------------------------------------------------------------------
def synthetic_problem(hparams: EditHparams, *, seed: int = 0, corpus_rank: int = D_IN,
                      n_prior: int = 0, weight_dtype: torch.dtype = torch.float32,
                      device: str = "cpu") -> LayerProblem:
    """A random layer problem: W (12, 20), K (20, 3), R (12, 3), C from 400 corpus keys spanning
    ``corpus_rank`` directions (rank-deficient below 20), optional prior keys (20, n_prior)."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(D_IN, corpus_rank, generator=g, dtype=torch.float64)
    corpus = directions @ torch.randn(corpus_rank, 400, generator=g, dtype=torch.float64)
    moment = SecondMoment((corpus @ corpus.T).float().to(device), 400)  # (d_in, d_in)
    weight = torch.randn(D_OUT, D_IN, generator=g)
    keys = torch.randn(D_IN, N_KEYS, generator=g)
    residual = torch.randn(D_OUT, N_KEYS, generator=g)
    prior = torch.randn(D_IN, n_prior, generator=g) if n_prior else None
    return LayerProblem(
        weight=weight.to(device, weight_dtype), keys=keys.to(device), moment=moment,
        residual=residual.to(device), hparams=hparams, layer=1,
        prior_keys=None if prior is None else prior.to(device),
    )


def _with(problem: LayerProblem, **changes: Any) -> LayerProblem:
    fields = dict(problem.__dict__)
    fields.update(changes)
    return LayerProblem(**{k: fields[k] for k in ("weight", "keys", "residual", "moment",
                                                  "hparams", "layer", "prior_keys")})


def _matrix(delta: Delta) -> torch.Tensor:
    """ΔW (d_out, d_in) as the editor writes it (fp32)."""
    assert isinstance(delta, Delta), f"solve returned {type(delta).__name__}, not a Delta"
    return delta.matrix()


def _matrix64(delta: Delta) -> torch.Tensor:
    """ΔW (d_out, d_in) in fp64 from the solver's own factors, for the algebraic identities."""
    assert isinstance(delta, Delta), f"solve returned {type(delta).__name__}, not a Delta"
    if delta.dense is not None:
        return delta.dense.double()
    return delta.u.double() @ delta.v.double().T


# ---- objectives ------------------------------------------------------------------------------
def check_objective(cls: type, *, hparams: EditHparams | None = None,
                    devices: Sequence[str] | None = None,
                    raise_on_failure: bool = True) -> ConformanceReport:
    """Algebraic checks of an objective class on synthetic problems (instant)."""
    report = ConformanceReport(f"objective {getattr(cls, 'name', cls)!r}")
    hp = hparams if hparams is not None else EditHparams()
    objective: list[Any] = []

    def contract() -> str:
        obj = cls()
        assert isinstance(getattr(obj, "name", None), str), "needs a string attribute `name`"
        assert callable(getattr(obj, "solve", None)), "needs a method `solve(problem)`"
        objective.append(obj)
        return ""

    run_check(report, "contract (name, solve, constructible without arguments)", contract)
    if not objective:
        return report.raise_for_failures() if raise_on_failure else report
    obj = objective[0]
    base = synthetic_problem(hp)
    reference: list[torch.Tensor] = []

    def returns_delta() -> str:
        delta = obj.solve(base)
        d = _matrix(delta)
        assert tuple(d.shape) == (D_OUT, D_IN), f"ΔW is {tuple(d.shape)}, want (d_out, d_in)"
        if delta.dense is None:
            assert delta.u.shape[0] == D_OUT and delta.v.shape[0] == D_IN, (
                f"factors U {tuple(delta.u.shape)}, V {tuple(delta.v.shape)}: want (d_out, r), "
                "(d_in, r)")
        for t in (delta.u, delta.v, delta.dense):
            assert t is None or t.is_floating_point(), "delta tensors must be floating point"
        assert torch.isfinite(d).all(), "ΔW has non-finite values"
        reference.append(d)
        return "dense" if delta.dense is not None else f"factors of rank {delta.u.shape[1]}"

    run_check(report, "returns a Delta of shape (d_out, d_in)", returns_delta)
    if not reference:
        return report.raise_for_failures() if raise_on_failure else report
    ref = reference[0]

    def inputs_unchanged() -> None:
        p = synthetic_problem(hp)
        before = [t.clone() for t in (p.weight, p.keys, p.residual, p.moment.total)]
        obj.solve(p)
        after = (p.weight, p.keys, p.residual, p.moment.total)
        assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True)), (
            "solve modified W, K, R or C in place")

    def deterministic() -> None:
        assert torch.equal(_matrix(obj.solve(synthetic_problem(hp))), ref), (
            "two solves of the same problem differ")

    def zero_residual() -> None:
        d = _matrix(obj.solve(_with(base, residual=torch.zeros_like(base.residual))))
        assert float(d.abs().max()) <= 1e-8 * float(ref.abs().max()) + 1e-12, (
            f"R = 0 gave |ΔW|max = {float(d.abs().max()):.3g}: nothing to write must change "
            "nothing")

    run_check(report, "leaves W, K, R and C unchanged", inputs_unchanged)
    run_check(report, "deterministic", deterministic)
    run_check(report, "zero residual gives a zero update", zero_residual)
    for dtype in (torch.bfloat16, torch.float16):
        def low_precision(dtype=dtype) -> str:
            d = _matrix(obj.solve(synthetic_problem(hp, weight_dtype=dtype)))
            assert torch.isfinite(d).all(), f"non-finite ΔW with a {dtype} weight"
            err = _rel(d, ref)
            assert err < 1e-2, f"ΔW with a {dtype} weight differs by {err:.2g} from fp32"
            return f"relative difference {err:.1g}"

        run_check(report, f"model weight in {str(dtype).replace('torch.', '')}", low_precision)
    for device in devices if devices is not None else default_devices():
        def on_device(device=device) -> str:
            delta = obj.solve(synthetic_problem(hp, device=device))
            for t in (delta.u, delta.v, delta.dense):
                assert t is None or t.device.type == torch.device(device).type, (
                    f"a delta tensor is on {t.device}, the problem on {device}")
            err = _rel(_matrix(delta), ref)
            assert err < 1e-4, f"ΔW on {device} differs by {err:.2g} from cpu"
            return f"relative difference {err:.1g}"

        run_check(report, f"runs on {device}", on_device)
    _declared_objective_checks(report, obj, hp)
    return report.raise_for_failures() if raise_on_failure else report


def _declared_objective_checks(report: ConformanceReport, obj: Any, hp: EditHparams) -> None:
    if getattr(obj, "exact", False):
        def exact() -> str:
            p = synthetic_problem(hp.replace(mu=0.0))
            d = _matrix64(obj.solve(p))
            err = _rel(d @ p.keys.double(), p.residual.double())
            assert err < 1e-8, f"Ŵ K − W K differs from R by {err:.2g} (relative)"
            return f"relative error {err:.1g}"

        run_check(report, "exact: writes Ŵ K = W K + R (mu = 0)", exact)
    if getattr(obj, "normal_equations", False):
        def normal_equations() -> str:
            p = synthetic_problem(hp)
            d = _matrix64(obj.solve(p))
            k, r = p.keys.double(), p.residual.double()
            a = hp.mom2_lambda * p.moment.regularised(hp.moment_ridge) + k @ k.T
            err = _rel(d @ a, r @ k.T)
            assert err < 1e-8, f"ΔW (λC + K Kᵀ) differs from R Kᵀ by {err:.2g} (relative)"
            return f"relative error {err:.1g}"

        run_check(report, "normal equations: ΔW (λC + K Kᵀ) = R Kᵀ", normal_equations)
    if getattr(obj, "preserves_corpus_keys", False):
        def preserves() -> str:
            p = synthetic_problem(hp, corpus_rank=CORPUS_RANK)
            d = _matrix64(obj.solve(p))
            c = p.moment.mean
            leak = float((d @ c).norm() / (d.norm() * c.norm()).clamp_min(1e-30))
            assert float(d.norm()) > 0, "ΔW = 0: the objective wrote nothing at all"
            assert leak < 1e-6, f"|ΔW C| / (|ΔW| |C|) = {leak:.2g}: corpus keys are changed"
            return f"leak {leak:.1g} with C of rank {CORPUS_RANK} of {D_IN}"

        run_check(report, "preserves corpus keys: ΔW C = 0 for rank-deficient C", preserves)
    if getattr(obj, "uses_prior_keys", False):
        def prior_keys() -> str:
            with_prior = synthetic_problem(hp, corpus_rank=CORPUS_RANK, n_prior=4)
            kp = with_prior.prior_keys.double()
            moved = float((_matrix(obj.solve(with_prior)).double() @ kp).norm())
            free = float((_matrix(obj.solve(_with(with_prior, prior_keys=None))).double()
                          @ kp).norm())
            assert moved < 0.9 * free, (
                f"|ΔW K_p| is {moved:.3g} with prior keys and {free:.3g} without: earlier "
                "batches are not protected")
            return f"|ΔW K_p| {moved:.3g} with, {free:.3g} without"

        run_check(report, "uses prior keys: earlier batches' keys move less", prior_keys)


# ---- distributions ---------------------------------------------------------------------------
PRESET_LAYERS: tuple[tuple[int, ...], ...] = ((5,), (2, 3, 4), (1, 3, 6, 7))


def check_distribution(cls: type, *, devices: Sequence[str] | None = None,
                       raise_on_failure: bool = True) -> ConformanceReport:
    """Checks of a distribution class: the layers it picks and the shares it hands out."""
    report = ConformanceReport(f"distribution {getattr(cls, 'name', cls)!r}")
    made: list[Any] = []

    def contract() -> None:
        obj = cls()
        assert isinstance(getattr(obj, "name", None), str), "needs a string attribute `name`"
        for member in ("layers", "share"):
            assert callable(getattr(obj, member, None)), f"needs a method `{member}`"
        made.append(obj)

    run_check(report, "contract (name, layers, share, constructible without arguments)",
              contract)
    if not made:
        return report.raise_for_failures() if raise_on_failure else report
    for preset in PRESET_LAYERS:
        def layers(preset=preset) -> str:
            chosen = list(cls().layers(preset))
            assert chosen, "chose no layer"
            assert all(isinstance(x, int) and x in preset for x in chosen), (
                f"chose {chosen}, not a subset of the preset's {list(preset)}")
            assert chosen == sorted(set(chosen)), f"layers {chosen} are not strictly increasing"
            return f"{list(preset)} -> {chosen}"

        run_check(report, f"layers from preset {list(preset)}", layers)
    for device in devices if devices is not None else default_devices():
        for preset in PRESET_LAYERS:
            def walk(preset=preset, device=device) -> str:
                return _walk_shares(cls(), preset, device)

            run_check(report, f"shares add up to the residual over {list(preset)} on {device}",
                      walk)
    return report.raise_for_failures() if raise_on_failure else report


def _walk_shares(dist: Any, preset: Sequence[int], device: str) -> str:
    """Walk the layers as the editor does, with every layer writing its share exactly, so the
    residual left after the last layer must be zero (nothing lost, nothing written twice)."""
    layers = list(dist.layers(preset))
    total = torch.randn(N_KEYS, D_OUT, generator=torch.Generator().manual_seed(1)).to(device)
    left, fractions = total.clone(), []
    for step in range(len(layers)):
        seen = left.clone()
        share = dist.share(left, step, len(layers) - step)
        assert torch.equal(left, seen), "share() modified the residual in place"
        assert isinstance(share, torch.Tensor) and share.shape == left.shape, (
            f"share has shape {tuple(getattr(share, 'shape', ()))}, want {tuple(left.shape)}")
        assert share.dtype == left.dtype and share.device == left.device, (
            f"share is {share.dtype} on {share.device}, residual {left.dtype} on {left.device}")
        assert torch.isfinite(share).all(), "share has non-finite values"
        fractions.append(float((share * total).sum() / (total * total).sum()))
        left = left - share
    rest = float(left.norm() / total.norm())
    assert rest < 1e-6, f"{rest:.2g} of the residual is never written (shares {fractions})"
    return "fractions " + ", ".join(f"{f:.2f}" for f in fractions)


__all__ = [
    "CheckResult", "ConformanceError", "ConformanceReport", "check_distribution",
    "check_objective", "default_devices", "run_check", "synthetic_problem",
]
