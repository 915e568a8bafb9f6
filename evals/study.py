"""``massedit compare``: every method × objective × distribution × batch size × seed on one
benchmark, one result file per combination, a combined table, plots and a Markdown report.

How a combination is run:

- batch mode (default): the cases are cut into batches of B; each batch is edited on the
  unedited model, its cases evaluated, and the edit reverted (MEMIT's mass-editing setting);
- ``sequential``: the batches are written one on top of another and all cases are evaluated on
  the final model (sequential editing).

In both, locality is measured against the unedited model's outputs, computed once before any
edit (``unedited.json``). Sharing: statistics for the union of all edit layers are computed in one
pass before the first edit (and cached on disk); target vectors are shared between combinations
through one ``Editor.target_cache``, per request (same request, prefixes, last layer and target
settings on the same weights), so batch sizes and methods with the same last layer share them,
and through the disk target store (:mod:`massedit.targets.store`, unless ``target_store`` is
off), so an interrupted study, a re-run in another folder or another study on the same model
reads what was already computed. So that times stay comparable, a combination is charged the
original cost of every target it re-used (its share of the call that computed it, kept with the
target on disk too; ``Editor.edit`` tallies them in ``patch.metadata["targets"]``): ``seconds``
= its own edit time + ``seconds_targets_reused``.

A result file is written atomically when its combination ends, finished or failed. A re-run with
the same shared settings skips finished combinations and retries failed ones; other shared
settings (model, data, statistics, overrides, evaluation settings) are refused for that folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from massedit.jobs.runs import RunDir, fingerprint, write_json_atomic

from .evaluation import (
    EvalSettings,
    Reference,
    check_context,
    evaluate,
    library_versions,
    summarize,
    unedited_reference,
)
from .in_context import cases_for_patch
from .readers import EvalCase

logger = logging.getLogger(__name__)

COMMAND = "compare"
RESULTS = "combinations"


@dataclass(frozen=True)
class Combination:
    """One cell of the study grid; ``objective``/``distribution`` None: the method's own."""

    method: str
    batch_size: int
    objective: str | None = None
    distribution: str | None = None
    sequential: bool = False
    seed: int = 0

    @property
    def label(self) -> str:
        """What a plot line is called: the editor and the mode, not the batch size or seed."""
        parts = [p for p in (self.objective, self.distribution) if p]
        name = self.method + (f"[{'+'.join(parts)}]" if parts else "")
        return name + (" sequential" if self.sequential else "")

    @property
    def slug(self) -> str:
        """The result file's name (without ``.json``)."""
        parts = [self.method, self.objective or "-", self.distribution or "-",
                 f"b{self.batch_size}", "seq" if self.sequential else "batch", f"s{self.seed}"]
        return "__".join(parts)


@dataclass(frozen=True)
class StudyOptions:
    """Everything ``massedit compare`` was asked to do."""

    model: str
    dataset: str
    out: Path
    methods: tuple[str, ...] = ("rome", "memit", "emmet")
    objectives: tuple[str, ...] = ()
    distributions: tuple[str, ...] = ()
    batch_sizes: tuple[int, ...] = (1, 10, 100)
    sequential: bool = False
    seeds: tuple[int, ...] = (0,)
    n: int | None = 10
    stats_corpus: str | None = None
    stats_tokens: int | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    settings: EvalSettings = field(default_factory=EvalSettings)
    dtype: str = "float32"
    device_map: str | None = None
    progress: bool = True
    # Targets also from/to the disk store (changes costs' bookkeeping, never a result).
    target_store: bool = True

    def grid(self) -> list[Combination]:
        """Every combination, in the order they run: grouped by editor so targets are shared."""
        out = []
        for seed in self.seeds:
            for batch_size in self.batch_sizes:
                for method in self.methods:
                    for objective in self.objectives or (None,):
                        for distribution in self.distributions or (None,):
                            out.append(Combination(method, batch_size, objective, distribution,
                                                   self.sequential, seed))
        return out

    def shared_arguments(self, n_cases: int, skipped: Sequence[int]) -> dict[str, Any]:
        """What every result in the folder depends on (the grid itself is left out, so a
        re-run may add methods or batch sizes to a study)."""
        from massedit.data.corpus import corpus_id
        from massedit.jobs.edit import model_reference

        return {"model": model_reference(self.model), "dataset": self.dataset,
                "n_cases": n_cases, "skipped": list(skipped),
                "stats_corpus": corpus_id(self.stats_corpus) if self.stats_corpus else None,
                "stats_tokens": self.stats_tokens,
                "overrides": dict(sorted(self.overrides.items())),
                "settings": self.settings.to_dict(), "dtype": self.dtype}


@dataclass
class StudyResult:
    out: Path
    table: list[dict[str, Any]]
    ran: list[str]  # slugs run (or retried) by this call
    skipped: list[str]  # slugs already finished before it


def check_options(opts: StudyOptions) -> None:
    """Unknown names and bad values fail before the model is loaded."""
    from massedit.editing.registry import get_distribution, get_objective, hparams_class

    if not opts.methods or not opts.batch_sizes or not opts.seeds:
        raise ValueError("compare needs at least one method, batch size and seed")
    settings = [hparams_class(name) for name in opts.methods]  # fails for an unknown method
    for name in opts.objectives:
        get_objective(name)
    for name in opts.distributions:
        get_distribution(name)
    if any(b < 1 for b in opts.batch_sizes):
        raise ValueError(f"batch sizes must be >= 1, got {list(opts.batch_sizes)}")
    for cls in settings:  # a plug-in's own hyper-parameters are known to its class
        cls().replace(**opts.overrides)


def _editor(model, tok, combo: Combination, opts: StudyOptions, target_cache,
            progress: bool = False):
    from massedit.editing.editor import Editor
    from massedit.stats.moments import StatsSpec

    return Editor(model, tok, combo.method, objective=combo.objective,
                  distribution=combo.distribution,
                  stats=StatsSpec(corpus=opts.stats_corpus, tokens=opts.stats_tokens),
                  progress=progress, target_cache=target_cache,
                  target_store=opts.target_store or None,
                  **{**opts.overrides, "seed": str(combo.seed)})


def prepare_statistics(model, tok, combos: Sequence[Combination], opts: StudyOptions) -> None:
    """One pass over the corpus for the union of every combination's edit layers (per token
    budget), so no combination pays for statistics inside its timed edit."""
    from massedit.stats.moments import StatsSpec, get_moments, resolve_corpus

    wanted: dict[tuple[int, StatsSpec], set[int]] = {}
    for combo in {dataclasses.replace(c, batch_size=1, seed=0) for c in combos}:
        editor = _editor(model, tok, combo, opts, None)
        corpus = resolve_corpus(editor.stats_spec, model, tok)
        spec = StatsSpec(**{**editor.stats_spec.__dict__, "corpus": corpus})
        wanted.setdefault((editor.stats_tokens(corpus), spec), set()).update(editor.layers)
    for (tokens, spec), layers in wanted.items():
        get_moments(model, tok, sorted(layers), spec, tokens, opts.progress)


def run_combination(model, tok, cases: Sequence[EvalCase], reference: Reference,
                    combo: Combination, opts: StudyOptions,
                    target_cache: dict) -> dict[str, Any]:
    """Edit and evaluate one combination; the model is left unedited afterwards.
    ``target_cache`` is shared by the study's combinations (``Editor.target_cache``)."""
    settings = dataclasses.replace(opts.settings, seed=combo.seed)
    edit_seconds = 0.0
    targets = {"computed": 0, "reused": 0, "seconds_reused": 0.0}
    if combo.sequential:
        batches = [list(range(len(cases)))]
    else:
        batches = [list(range(lo, min(lo + combo.batch_size, len(cases))))
                   for lo in range(0, len(cases), combo.batch_size)]
    rows: list[dict[str, Any]] = []
    # One batch (the largest size, or a sequential run): the editor's own bars (target steps,
    # sequential batches) are the only sign of progress in a step that can take many minutes.
    single = len(batches) == 1
    for indices in tqdm(batches, desc=combo.label, unit="batch", leave=False,
                        disable=not opts.progress or single):
        # A fresh editor per batch in batch mode: no keys of an earlier (reverted) batch leak in.
        editor = _editor(model, tok, combo, opts, target_cache, opts.progress and single)
        editor.moments()
        editor.prefixes()  # both outside the timed edit
        requests = [cases[i].request for i in indices]
        patch = editor.edit(requests, batch_size=combo.batch_size)
        edit_seconds += float(patch.metadata["seconds"])
        for key, value in patch.metadata.get("targets", {}).items():
            targets[key] += value
        try:
            measured = cases_for_patch(model, tok, [cases[i] for i in indices], patch)
            rows += evaluate(model, tok, measured, settings,
                             reference.subset(indices).locality_tokens)
        finally:
            patch.revert(model)
    reused_seconds = targets["seconds_reused"]
    seconds = edit_seconds + reused_seconds
    return {
        "status": "finished", "summary": summarize(rows), "n_edits": len(cases),
        "seconds_edit": round(edit_seconds, 3),
        "seconds_targets_reused": round(reused_seconds, 3), "seconds": round(seconds, 3),
        "seconds_per_edit": seconds / len(cases), "targets_computed": targets["computed"],
        "targets_reused": targets["reused"],
        "layers": editor.layers, "objective": editor.objective_name,
        "distribution": editor.distribution_name, "preset": editor.preset_source,
        "rows": rows,
    }


def _load_reference(path: Path, model, tok, cases, settings: EvalSettings) -> Reference:
    """The unedited model's results, computed once per study folder and kept in it."""
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        return Reference(data["rows"], data["locality_tokens"])
    reference = unedited_reference(model, tok, cases, settings)
    write_json_atomic(path, {"summary": summarize(reference.rows), "rows": reference.rows,
                             "locality_tokens": reference.locality_tokens})
    return reference


def run_study(opts: StudyOptions, console, combos: Sequence[Combination] | None = None
              ) -> StudyResult:
    """Run every combination not yet finished in ``opts.out``; write table, plots, report."""
    from massedit.models.loading import load_model

    from .eval_job import load_cases
    from .study_report import write_study_outputs

    check_options(opts)
    combos = list(combos) if combos is not None else opts.grid()
    cases, skipped = load_cases(opts.dataset, opts.n)
    if any(b > len(cases) for b in {c.batch_size for c in combos}):
        logger.warning("batch sizes above %d cases edit all of them in one batch", len(cases))
    arguments = opts.shared_arguments(len(cases), skipped)
    run = RunDir.open(opts.out, COMMAND, arguments, fingerprint(arguments))
    results_dir = run.path / RESULTS
    done = {c.slug for c in combos if _status(results_dir / f"{c.slug}.json") == "finished"}
    todo = [c for c in combos if c.slug not in done]
    if done:
        console.print(f"{len(done)} finished combination(s) kept; {len(todo)} to run")

    model = tok = None
    if todo or not (run.path / "unedited.json").exists():
        model, tok = load_model(opts.model, dtype=opts.dtype, device_map=opts.device_map)
        check_context(model, tok, cases, opts.settings)
        reference = _load_reference(run.path / "unedited.json", model, tok, cases, opts.settings)
    if todo:
        prepare_statistics(model, tok, todo, opts)
        cache: dict = {}
        for combo in tqdm(todo, desc="combinations", unit="combo", disable=not opts.progress):
            record = {"combination": dataclasses.asdict(combo), "label": combo.label,
                      "slug": combo.slug}
            try:
                record.update(run_combination(model, tok, cases, reference, combo, opts, cache))
            except Exception as err:  # a failed combination is a result; the others go on
                logger.warning("%s failed: %s", combo.slug, err)
                record.update(status="error", error=f"{type(err).__name__}: {err}",
                              traceback=traceback.format_exc(limit=8))
            write_json_atomic(results_dir / f"{combo.slug}.json", record)
    unedited = json.loads((run.path / "unedited.json").read_text(encoding="utf-8"))
    records = [json.loads((results_dir / f"{c.slug}.json").read_text(encoding="utf-8"))
               for c in combos]
    study = {"command": COMMAND, "arguments": arguments,
             "grid": [dataclasses.asdict(c) for c in combos], "versions": library_versions()}
    table = write_study_outputs(run.path, unedited["summary"], records, study)
    if all(r["status"] == "finished" for r in records):
        run.mark_finished()
    return StudyResult(run.path, table, [c.slug for c in todo], sorted(done))


def _status(path: Path) -> str | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("status")
    except (OSError, json.JSONDecodeError):
        return None  # unreadable: run again
