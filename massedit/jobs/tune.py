"""``massedit tune``: choose a preset for a model nobody tuned (docs/design.md §4, §8).

1. **Layers** from causal tracing (:func:`massedit.trace.suggest.suggest_layers`) over facts the
   model already predicts: ROME's one layer, or MEMIT/EMMET's run of ``n_spread`` layers.
2. **A short coordinate sweep** on a small set of facts, one stage at a time, each stage keeping
   the best setting so far: the method's strength (λ for MEMIT, μ for EMMET; ROME has none),
   then target steps and learning rate, then the clamp. Every trial edits the sweep facts (ROME
   one at a time, the others in one batch), is scored with the evaluation's ``Score`` (harmonic
   mean of efficacy, paraphrase and neighbourhood success) and reverted. A trial the update
   guard stops scores 0. Targets are shared between trials through one target cache, so the
   strength stage pays for them once.
3. **A held-out set** edited with the chosen settings reports the preset's Score honestly (the
   sweep's best Score is biased upwards by the choice itself).

The result becomes a preset YAML that :func:`massedit.editing.presets.load_preset` finds for
every model of this shape (``cache_root()/presets/<method>/<shape>.yaml`` by default).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from massedit.editing.presets import default_lambda, unknown_model_defaults, user_preset_path
from massedit.engine.requests import EditRequest
from massedit.engine.writing import EditError
from massedit.evals.evaluation import EvalSettings, summarize, unedited_reference
from massedit.evals.readers import EvalCase
from massedit.evals.study import (
    Combination,
    StudyOptions,
    prepare_statistics,
    run_combination,
)
from massedit.jobs.runs import write_json_atomic
from massedit.models.adapters import get_adapter
from massedit.trace.suggest import PRESET_KEYS, LayerSuggestion, suggest_layers

logger = logging.getLogger(__name__)

TUNED_METHODS = ("rome", "memit", "emmet")
SUMMARY_KEYS = ("efficacy_success", "paraphrase_success", "neighborhood_success", "score")
SWEPT = ("mom2_lambda", "mu", "v_num_grad_steps", "v_lr", "clamp_norm_factor")  # in the table


@dataclass(frozen=True)
class TuneGrid:
    """The candidates of each stage; ``None`` derives them from the model (see
    :func:`strength_candidates`). A stage with one candidate costs nothing beyond the start."""

    lambdas: tuple[float, ...] | None = None  # MEMIT's λ
    mus: tuple[float, ...] = (0.0, 0.1, 1.0)  # EMMET's μ (on the scale of Kᵀ(λC')⁻¹K)
    targets: tuple[tuple[int, float], ...] = ((20, 0.5), (40, 0.5), (40, 0.1))  # (steps, lr)
    clamps: tuple[float, ...] = (0.75, 4.0)  # clamp_norm_factor


# A grid for quick checks (tests, a first look): the strength stage only.
QUICK_GRID = TuneGrid(mus=(0.0, 1.0), targets=(), clamps=())


@dataclass
class Trial:
    stage: str
    settings: dict[str, Any]  # the hyper-parameters that differ between trials
    summary: dict[str, float]  # SUMMARY_KEYS, 0-100
    seconds: float
    refused: str | None = None  # the guard's message when it stopped the edit


@dataclass
class TuneResult:
    method: str
    model_label: str
    suggestion: LayerSuggestion
    base: dict[str, Any]  # the preset the sweep started from (all hyper-parameters)
    chosen: dict[str, Any]  # base with the chosen layers and settings
    trials: list[Trial] = field(default_factory=list)
    heldout: dict[str, float] = field(default_factory=dict)  # chosen preset, held-out facts
    heldout_unedited: dict[str, float] = field(default_factory=dict)
    n_sweep: int = 0
    n_heldout: int = 0
    seconds: float = 0.0

    @property
    def best(self) -> Trial:
        return max(self.trials, key=lambda t: t.summary["score"])

    def table(self) -> list[dict[str, Any]]:
        """One row per trial: stage, settings, ES, PS, NS, Score, seconds, refused."""
        return [{"stage": t.stage, **t.settings, **{k: t.summary.get(k) for k in SUMMARY_KEYS},
                 "seconds": round(t.seconds, 1), "refused": t.refused} for t in self.trials]

    def preset_yaml(self) -> str:
        """The chosen preset as a YAML file, what was tried and the held-out Score in comments."""
        sug = self.suggestion
        lines = [
            f"# {self.method}, {self.model_label}: written by `massedit tune`",
            f"# layers from causal tracing over {sug.n_facts} facts the model predicts (mean "
            "effect of restoring the MLP",
            "# at the subject's last token: "
            + ", ".join(f"{i}: {e:.3f}" for i, e in enumerate(sug.effects)) + ")",
            f"# sweep: {len(self.trials)} trials on {self.n_sweep} facts, best Score "
            f"{self.best.summary['score']:.1f}; held-out Score on {self.n_heldout} facts "
            f"{self.heldout.get('score', float('nan')):.1f} (unedited "
            f"{self.heldout_unedited.get('score', float('nan')):.1f})",
        ]
        keys = [k for k in PRESET_KEYS if k in self.chosen]
        keys += [k for k in ("target_rows",) if self.chosen.get(k) is not None]
        for key in keys:
            lines.append(f"{key}: {json.dumps(_plain(self.chosen[key]))}")  # JSON is YAML
        return "\n".join(lines) + "\n"

    def report(self) -> dict[str, Any]:
        return {"method": self.method, "model": self.model_label, "suggestion":
                asdict(self.suggestion), "base": _plain(self.base), "chosen": _plain(self.chosen),
                "trials": self.table(), "heldout": self.heldout,
                "heldout_unedited": self.heldout_unedited, "n_sweep": self.n_sweep,
                "n_heldout": self.n_heldout, "seconds": round(self.seconds, 1)}


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (JSON and YAML round trips)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def cases_from_requests(requests: Sequence[EditRequest]) -> list[EvalCase]:
    """Evaluation cases from edit requests: the prompt, its paraphrases and its neighbours
    (which must keep ``target_true``), scored as CounterFact is."""
    return [EvalCase(request=r, rewrite_prompts=(r.text,), paraphrase_prompts=r.paraphrases,
                     neighborhood_prompts=r.neighborhood, dataset="requests") for r in requests]


def facts_from_cases(cases: Sequence[EvalCase]) -> list[dict[str, str]]:
    """Trace facts (prompt, subject, attribute = the true object) from CounterFact-like cases."""
    return [{"prompt": c.request.text, "subject": c.request.subject,
             "attribute": c.request.target_true} for c in cases if c.request.target_true]


def strength_candidates(method: str, model, grid: TuneGrid) -> tuple[str, tuple[float, ...]]:
    """The strength stage's hyper-parameter and its candidates: MEMIT's λ as powers of ten
    around the shape's default (:func:`default_lambda`, the MLP width), EMMET's μ."""
    if method == "memit":
        if grid.lambdas is not None:
            return "mom2_lambda", grid.lambdas
        base = default_lambda(get_adapter(model).mlp_width(model.config))
        # Largest first: a tie keeps the earlier, the more conservative λ.
        return "mom2_lambda", tuple(base * 10.0 ** k for k in (1, 0, -1, -2))
    if method == "emmet":
        return "mu", grid.mus
    return "", ()


def tune(
    model,
    tok,
    method: str,
    *,
    trace_facts: Sequence[Mapping[str, str]],
    sweep_cases: Sequence[EvalCase],
    heldout_cases: Sequence[EvalCase],
    stats_corpus: str | None = None,
    stats_tokens: int | None = None,
    grid: TuneGrid = TuneGrid(),
    n_spread: int | None = None,
    trace_samples: int = 10,
    model_label: str = "this model",
    progress: bool = True,
    on_trial: Callable[[Trial], None] | None = None,
) -> TuneResult:
    """Choose layers by tracing ``trace_facts``, sweep ``grid`` on ``sweep_cases``, score the
    choice on ``heldout_cases``; the model is left as it was. ``n_spread``: MEMIT/EMMET layers
    (default a sixth of the depth, 1 to 5, as the shape defaults)."""
    if method not in TUNED_METHODS:
        raise ValueError(f"tune knows {', '.join(TUNED_METHODS)}, not {method!r}")
    if not sweep_cases or not heldout_cases:
        raise ValueError("tune needs sweep facts and held-out facts")
    start = time.perf_counter()
    depth = get_adapter(model).depth(model.config)
    spread = max(1, min(5, round(depth / 6))) if n_spread is None else n_spread
    suggestion = suggest_layers(model, tok, list(trace_facts), n_spread=spread,
                                samples=trace_samples)
    layers = (suggestion.rome_layer,) if method == "rome" else suggestion.memit_layers
    logger.info("tune %s: layers %s from tracing %d facts", method, list(layers),
                suggestion.n_facts)

    # The start is what a model without a preset gets (its shape's defaults), whatever presets
    # exist: tune must not borrow a hand-swept preset's numbers. Every trial edits with all of
    # the start's preset keys, so the file written is exactly what was measured.
    base = unknown_model_defaults(method, model, spread=method != "rome").to_dict()
    fixed = {k: base[k] for k in PRESET_KEYS}
    current = {"layers": layers}
    name, strengths = strength_candidates(method, model, grid)
    stages: list[tuple[str, list[dict[str, Any]]]] = []
    if strengths:
        stages.append(("strength", [{name: s} for s in strengths]))
    stages.append(("targets", [{"v_num_grad_steps": s, "v_lr": lr} for s, lr in grid.targets]))
    stages.append(("clamp", [{"clamp_norm_factor": c} for c in grid.clamps]))
    n_trials = 1 + sum(len(c) for _, c in stages)

    settings = EvalSettings(fluency=False)
    sweep_ref = unedited_reference(model, tok, sweep_cases, settings)
    batch = 1 if method == "rome" else len(sweep_cases)
    cache: dict = {}  # targets shared by every trial

    def options(overrides: dict[str, Any]) -> StudyOptions:
        return StudyOptions(model=model_label, dataset="tune", out=Path("."),
                            stats_corpus=stats_corpus, stats_tokens=stats_tokens,
                            overrides={**fixed, **overrides}, settings=settings,
                            progress=False)

    combo = Combination(method, batch)
    result = TuneResult(method, model_label, suggestion, base, {}, n_sweep=len(sweep_cases),
                        n_heldout=len(heldout_cases))
    bar = tqdm(total=n_trials, desc=f"tune {method}", unit="trial", disable=not progress)

    seen: dict[str, Trial] = {}

    def trial(stage: str, overrides: dict[str, Any]) -> Trial:
        t0 = time.perf_counter()
        shown = {k: v for k, v in {**base, **overrides}.items() if k in SWEPT}
        key = json.dumps(_plain({**shown, "layers": overrides["layers"]}), sort_keys=True)
        if key in seen:  # an earlier stage ran these settings already
            bar.update(1)
            return seen[key]
        try:
            run = run_combination(model, tok, sweep_cases, sweep_ref, combo, options(overrides),
                                  cache)
            found = Trial(stage, shown, {k: run["summary"][k] for k in SUMMARY_KEYS},
                          time.perf_counter() - t0)
        except EditError as err:  # the guard stopped it: the model is unchanged
            found = Trial(stage, shown, dict.fromkeys(SUMMARY_KEYS, 0.0),
                          time.perf_counter() - t0, refused=str(err))
        result.trials.append(found)
        seen[key] = found
        bar.update(1)
        bar.set_postfix(score=f"{found.summary['score']:.1f}")
        if on_trial is not None:
            on_trial(found)
        return found

    # Every trial builds editors for a model without a preset (that is why tune runs): one
    # warning about it is enough.
    presets_log = logging.getLogger("massedit.editing.presets")
    level = presets_log.level
    presets_log.setLevel(logging.ERROR)
    try:
        prepare_statistics(model, tok, [combo], options(current))  # once, outside the trials
        best = trial("start", current)
        for stage, candidates in stages:
            for candidate in candidates:
                if all(current.get(k, base.get(k)) == v for k, v in candidate.items()):
                    continue  # the current best already has it
                found = trial(stage, {**current, **candidate})
                if found.summary["score"] > best.summary["score"]:  # ties keep the earlier
                    best, current = found, {**current, **candidate}
        bar.close()

        result.chosen = {**base, **current}
        held_ref = unedited_reference(model, tok, heldout_cases, settings)
        result.heldout_unedited = {k: summarize(held_ref.rows)[k] for k in SUMMARY_KEYS}
        held = run_combination(model, tok, heldout_cases, held_ref,
                               Combination(method, 1 if method == "rome" else len(heldout_cases)),
                               options(current), cache)
    finally:
        presets_log.setLevel(level)
    result.heldout = {k: held["summary"][k] for k in SUMMARY_KEYS}
    result.seconds = time.perf_counter() - start
    logger.info("tune %s: chose %s; held-out Score %.1f (unedited %.1f) in %.0f s", method,
                current, result.heldout["score"], result.heldout_unedited["score"],
                result.seconds)
    return result


def write_preset(result: TuneResult, path: Path) -> Path:
    """Write the preset YAML at ``path`` and the full report beside it (``<stem>.tune.json``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(result.preset_yaml())
    tmp.replace(path)  # a reader never sees half a preset
    write_json_atomic(path.with_suffix(".tune.json"), result.report())
    return path


def default_preset_path(method: str, model) -> Path:
    """Where ``tune`` writes by default: the user preset of the model's shape."""
    return user_preset_path(method, model, by="shape")


# ---------------------------------------------------------------------------------------------
# The command


@dataclass(frozen=True)
class TuneOptions:
    """What ``massedit tune`` was asked to do. Records ``[offset, offset + n_sweep)`` of
    ``dataset`` are the sweep facts, the next ``n_heldout`` the held-out ones; trace facts come
    from ``known`` (ROME's known_1000 schema; default the ``known_1000`` data set) or, when that
    cannot be had, from the data set's records whose true object the model predicts."""

    model: str
    method: str = "memit"
    out: Path | None = None  # default: the user preset of the model's shape
    dataset: str = "counterfact"
    offset: int = 0
    n_sweep: int = 10
    n_heldout: int = 20
    n_trace: int = 20
    known: Path | None = None
    n_spread: int | None = None
    stats_corpus: str | None = None
    stats_tokens: int | None = None
    quick: bool = False  # QUICK_GRID: the strength stage only
    dtype: str = "float32"
    device_map: str | None = None


def _trace_facts(opts: TuneOptions, model, tok, pool: Sequence[EvalCase]) -> list[dict]:
    from massedit.trace.known import load_known, predicted_facts

    path = opts.known
    if path is None:
        from massedit.data.datasets import dataset_file

        try:
            path = dataset_file("known_1000", allow_download=False)
        except (OSError, ValueError):
            logger.info("no known_1000 facts here: tracing the data set's records instead")
    facts = load_known(path) if path is not None else facts_from_cases(pool)
    chosen = predicted_facts(model, tok, facts, n=opts.n_trace)
    if not chosen:
        raise ValueError("tune: the model predicts none of the trace facts; pass --known FILE "
                         "with facts it knows")
    return chosen


def run_tune(opts: TuneOptions, console) -> TuneResult:
    """Load the model and the facts, tune, write the preset and its report, print the table."""
    from massedit.evals.readers import load_eval_dataset
    from massedit.models.loading import load_model

    if opts.method not in TUNED_METHODS:
        raise ValueError(f"tune knows {', '.join(TUNED_METHODS)}, not {opts.method!r}")
    model, tok = load_model(opts.model, dtype=opts.dtype, device_map=opts.device_map)
    needed = opts.offset + opts.n_sweep + opts.n_heldout
    cases = load_eval_dataset(opts.dataset, None, skip_invalid=True)
    if len(cases) < needed:
        raise ValueError(f"tune: {opts.dataset} has {len(cases)} usable records; --offset, "
                         f"--n-sweep and --n-heldout need {needed}")
    sweep = cases[opts.offset : opts.offset + opts.n_sweep]
    heldout = cases[opts.offset + opts.n_sweep : needed]
    facts = _trace_facts(opts, model, tok, cases[needed:] or cases)
    result = tune(model, tok, opts.method, trace_facts=facts, sweep_cases=sweep,
                  heldout_cases=heldout, stats_corpus=opts.stats_corpus,
                  stats_tokens=opts.stats_tokens, grid=QUICK_GRID if opts.quick else TuneGrid(),
                  n_spread=opts.n_spread, model_label=opts.model)
    path = write_preset(result, opts.out or default_preset_path(opts.method, model))
    print_report(result, path, console)
    return result


def print_report(result: TuneResult, path: Path, console) -> None:
    """What was tried (one row per trial, the chosen one marked) and where the preset went."""
    from rich.table import Table

    table = Table(title=f"massedit tune {result.method}: layers "
                  f"{list(result.chosen['layers'])} from tracing {result.suggestion.n_facts} facts")
    rows = result.table()
    settings = [k for k in SWEPT if k in rows[0]]
    for name in ("stage", *settings, "ES", "PS", "NS", "Score", "s"):
        table.add_column(name, justify="left" if name == "stage" else "right")
    best = result.best
    for trial, row in zip(result.trials, rows, strict=True):
        mark = " *" if trial is best else ""
        scores = ["refused" if trial.refused else f"{row[k]:.1f}" for k in SUMMARY_KEYS]
        table.add_row(row["stage"] + mark, *(f"{row[k]:g}" for k in settings), *scores,
                      f"{row['seconds']:.0f}")
    console.print(table)
    held, pre = result.heldout, result.heldout_unedited
    console.print(
        f"held-out ({result.n_heldout} facts): Score {held['score']:.1f} (ES "
        f"{held['efficacy_success']:.1f}, PS {held['paraphrase_success']:.1f}, NS "
        f"{held['neighborhood_success']:.1f}; unedited Score {pre['score']:.1f}) in "
        f"{result.seconds:.0f} s")
    console.print(f"preset written to {path} (report: {path.with_suffix('.tune.json')}); "
                  "Editor uses it for every model of this shape")
