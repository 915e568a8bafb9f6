"""``massedit edit``: an edit file -> a run directory with patch, tables, configuration, model.

Order matters for safety: the file is validated, the run directory checked and the tokenizer
consulted before anything is created, so bad input leaves nothing behind but the report.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from massedit.jobs.edit_files import EditFileError, EditSet, load_edits, tokenisation_problems
from massedit.jobs.runs import (
    RunDir,
    check_run_dir,
    fingerprint,
    save_pretrained_atomic,
    tidy_run_dir,
    write_json_atomic,
)
from massedit.models.loading import DEFAULT_MODEL

logger = logging.getLogger(__name__)

COMMAND = "edit"
EXIT_STOPPED = 3  # --max-batches stopped the run before its end; re-run to continue


@dataclass(frozen=True)
class EditOptions:
    """Everything ``massedit edit`` was asked to do."""

    edits: str
    out: Path
    model: str = DEFAULT_MODEL
    method: str = "memit"
    objective: str | None = None
    distribution: str | None = None
    batch_size: int | None = None
    save_model: bool = False
    stats_corpus: str | None = None
    stats_tokens: int | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    mapping: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False
    device_map: str | None = None
    dtype: str = "float32"
    max_batches: int | None = None
    split: str = "train"
    progress: bool = True
    card_facts: bool = False  # the facts' text in the model card (docs/design.md §14)
    push_to_hub: str | None = None  # hub repository for the model (--save-model) or patch
    private: bool = True

    def result_arguments(self, edits: EditSet) -> dict[str, Any]:
        """The arguments that decide the patch: a re-run with the same ones may resume.

        Output choices (--save-model, --max-batches, --device-map) are left out: they do not
        change what is written into the weights."""
        from massedit.data.corpus import corpus_id

        corpus = self.stats_corpus
        return {
            "model": model_reference(self.model), "method": self.method,
            "objective": self.objective, "distribution": self.distribution,
            "batch_size": self.batch_size,
            "stats_corpus": corpus_id(corpus) if corpus else None,
            "stats_tokens": self.stats_tokens, "overrides": dict(sorted(self.overrides.items())),
            "dtype": self.dtype, "requests_digest": edits.digest,
            "n_requests": len(edits.requests),
        }


def model_reference(name_or_path: str) -> str:
    """A local folder by its absolute path (a relative one means nothing elsewhere), else the
    name as given (hub id or the embedded default)."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path


@dataclass
class EditOutcome:
    exit_code: int
    run_dir: Path | None = None
    rows: list[dict[str, Any]] | None = None
    summary: dict | None = None


def _editor_kwargs(opts: EditOptions) -> dict[str, Any]:
    from massedit.stats.moments import StatsSpec

    return dict(objective=opts.objective, distribution=opts.distribution,
                stats=StatsSpec(corpus=opts.stats_corpus, tokens=opts.stats_tokens),
                progress=opts.progress, **opts.overrides)


def check_options(opts: EditOptions) -> None:
    """Unknown methods and malformed ``--set`` values fail before any model is loaded."""
    from massedit.editing.registry import get_distribution, get_objective, hparams_class

    settings = hparams_class(opts.method)  # also fails for an unknown method
    if opts.save_model:
        from massedit.baselines.ike import NO_WEIGHTS, is_in_context_method
        from massedit.editing.registry import get_method

        if is_in_context_method(get_method(opts.method)):
            raise ValueError(f"--save-model with method {opts.method!r}: {NO_WEIGHTS}")
    if opts.objective:
        get_objective(opts.objective)
    if opts.distribution:
        get_distribution(opts.distribution)
    settings().replace(**opts.overrides)  # a plug-in's own hyper-parameters are known here


def run_edit(opts: EditOptions, console) -> EditOutcome:
    """Run (or resume, or dry-run) an edit; raises EditFileError / RunDirError on bad input."""
    if opts.push_to_hub:
        from massedit.hub import check_repo_id

        check_repo_id(opts.push_to_hub)  # a malformed id fails before any work
    edits = load_edits(opts.edits, opts.mapping, opts.split)
    check_options(opts)
    arguments = opts.result_arguments(edits)
    key = fingerprint(arguments)
    previous = check_run_dir(opts.out, COMMAND, key)  # refuses another command's folder
    if opts.dry_run:
        from massedit.jobs.dry_run import show_plan

        show_plan(opts, edits, previous, console, _editor_kwargs(opts))
        return EditOutcome(0)
    if previous and previous.get("status") == "finished" and (
            not opts.save_model or (opts.out / "model").exists()):
        tidy_run_dir(opts.out)  # a process killed as it finished may have left temporaries
        return _already_finished(opts, console)

    from massedit.editing.editor import Editor
    from massedit.models.loading import load_model

    model, tok = load_model(opts.model, dtype=opts.dtype, device_map=opts.device_map)
    problems = tokenisation_problems(edits, tok)
    if problems:
        raise EditFileError(edits.source, problems)
    editor = Editor(model, tok, opts.method, **_editor_kwargs(opts))  # checks layers, preset
    # A batch the objective cannot solve (e.g. EMMET with more facts than d_in) is refused
    # before any scoring, statistics or targets, and before the run folder exists.
    editor.check_batches(edits.requests, opts.batch_size)
    run = RunDir.open(opts.out, COMMAND, arguments, key)
    if run.finished:  # only --save-model is missing
        return _save_model_of_finished(opts, run, model, console)
    try:
        return _edit_and_report(opts, edits, run, editor, console)
    except BaseException as err:
        run.discard_if_empty()  # a run that finished no batch leaves no folder behind
        if isinstance(err, OSError) and run.path.exists():  # e.g. the disk filled up
            _, _, requests_done = run.load_checkpoint()
            logger.error("%s keeps its last complete state (%d of %d requests edited); free "
                         "space and run the same command again to continue", run.path,
                         requests_done, len(edits.requests))
        raise


def _edit_and_report(opts: EditOptions, edits: EditSet, run: RunDir, editor,
                     console) -> EditOutcome:
    from massedit.jobs.report import comparison_rows, measure, render, summarise, write_tables
    from massedit.jobs.sequential import edit_resumably

    model, tok = editor.model, editor.tok
    logger.info("editing %d request(s) with %s (objective %s, distribution %s) at layers %s",
                len(edits.requests), opts.method, editor.objective_name,
                editor.distribution_name, editor.layers)
    before = measure(model, tok, edits.requests, desc="before", progress=opts.progress)
    result = edit_resumably(editor, edits.requests, opts.batch_size, run,
                            max_batches=opts.max_batches, progress=opts.progress)
    if not result.finished:
        console.print(f"stopped after {result.requests_done} of {len(edits.requests)} requests "
                      f"as asked (--max-batches); run the same command again to continue")
        return EditOutcome(EXIT_STOPPED, run.path)
    after = measure(model, tok, edits.requests, desc="after", progress=opts.progress)
    rows = comparison_rows(edits, before, after)
    summary = summarise(edits, before, after)
    result.patch.save(run.path / "patch")
    write_tables(run.path, rows, summary)
    write_json_atomic(run.path / "config.json", _config(opts, edits, editor, result.patch))
    if opts.save_model:
        _save_model(opts, model, run.path / "model", result.patch, summary, rows)
    run.mark_finished(summary=summary)
    render(console, rows, summary)
    console.print(f"results in {run.path}")
    _push(opts, run.path, result.patch, summary, rows, console)
    return EditOutcome(0, run.path, rows, summary)


def _push(opts: EditOptions, run_path: Path, patch, summary, rows, console) -> None:
    """``--push-to-hub``: the merged model with ``--save-model``, else the patch (with its
    card either way)."""
    if not opts.push_to_hub:
        return
    from massedit.jobs.cards import patch_card

    if opts.save_model:
        from massedit.hub import push_folder

        url = push_folder(run_path / "model", opts.push_to_hub, private=opts.private,
                          commit_message="massedit edited model")
    else:
        card = patch_card(patch, kind="patch", card_facts=opts.card_facts, summary=summary,
                          rows=rows)
        url = patch.push_to_hub(opts.push_to_hub, private=opts.private, card=card)
    console.print(f"pushed to {url}")


def _config(opts: EditOptions, edits: EditSet, editor, patch) -> dict[str, Any]:
    """The effective configuration: enough to understand and repeat the run."""
    from massedit.models.loading import resolve_model_path

    meta = patch.metadata
    return {
        "command": COMMAND,
        "model": {"name": opts.model, "path": model_reference(resolve_model_path(opts.model)),
                  "model_type": editor.model.config.model_type, "dtype": opts.dtype,
                  "device_map": opts.device_map},
        "method": opts.method, "objective": editor.objective_name,
        "distribution": editor.distribution_name, "preset": editor.preset_source,
        "layers": editor.layers, "hparams": editor.hparams.to_dict(),
        "overrides": opts.overrides, "batch_size": opts.batch_size or len(edits.requests),
        "stats": {"spec": asdict(editor.stats_spec), "record": meta.get("stats")},
        "edits": {"source": edits.source, "mapping": opts.mapping, "split": opts.split,
                  "n_requests": len(edits.requests), "requests_digest": edits.digest},
        "prefixes": meta.get("prefixes"),
        "versions": meta.get("versions"),
    }


def _save_model(opts: EditOptions, model, path: Path, patch, summary=None, rows=None) -> None:
    """The merged model with plain ``save_pretrained``, the tokenizer as it was loaded (not
    the padding settings massedit gives it for editing) and a model card (§14)."""
    from transformers import AutoTokenizer

    from massedit.jobs.cards import patch_card
    from massedit.models.loading import resolve_model_path

    if path.exists():  # a complete folder from an interrupted finish of this same run
        return
    card = patch_card(patch, kind="model", run=path.parent, card_facts=opts.card_facts,
                      summary=summary, rows=rows)
    tok = AutoTokenizer.from_pretrained(resolve_model_path(opts.model))
    save_pretrained_atomic(model, tok, path, card=card)
    logger.info("saved the edited model to %s", path)


def _already_finished(opts: EditOptions, console) -> EditOutcome:
    import json

    from massedit.jobs.report import render

    console.print(f"{opts.out} already holds this finished run; nothing to do")
    results = json.loads((opts.out / "results.json").read_text(encoding="utf-8"))
    render(console, results["rows"], results["summary"])
    if opts.push_to_hub:  # a finished run can still be pushed
        from massedit.engine.patch import EditPatch

        _push(opts, opts.out, EditPatch.load(opts.out / "patch"), results["summary"],
              results["rows"], console)
    return EditOutcome(0, opts.out, results["rows"], results["summary"])


def _save_model_of_finished(opts: EditOptions, run: RunDir, model, console) -> EditOutcome:
    from massedit.engine.patch import EditPatch

    patch = EditPatch.load(run.path / "patch")
    patch.apply(model)
    _save_model(opts, model, run.path / "model", patch)
    _push(opts, run.path, patch, None, None, console)
    return EditOutcome(0, run.path)


__all__ = ["EXIT_STOPPED", "EditOptions", "EditOutcome", "run_edit"]
