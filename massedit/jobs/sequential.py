"""Sequential batches that survive interruption: checkpoint after each batch, continue on re-run.

The state an edit leaves after ``b`` batches is exactly the model's weights, which the cumulative
patch records. So continuing means: apply the newest checkpoint to a freshly loaded base model and
edit the remaining requests with the same batch size. The editor's statistics and context prefixes
are taken from the unedited model before the checkpoint is applied, as in an uninterrupted run,
so the final patch equals the uninterrupted one.

Targets go to the disk store (:mod:`massedit.targets.store`) as each group is optimised, and the
checkpoint is applied through :func:`massedit.engine.identity.apply_patch`, which names the
weights as the uninterrupted run named them: a re-run reads every target an interrupted run had
already computed instead of optimising it again (docs/design.md §12).

A run continues with the hyper-parameters it started with (``run.json``'s ``hparams``), even if
the preset changed in between (a new massedit version, a tuned user preset): a patch is never
made half with one set of settings and half with another.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from massedit.editing.editor import Editor
from massedit.engine.identity import apply_patch
from massedit.engine.patch import EditPatch
from massedit.engine.requests import EditRequest, requests_digest
from massedit.jobs.runs import RunDir, RunDirError
from massedit.targets.store import TargetStore

logger = logging.getLogger(__name__)


@dataclass
class SequentialResult:
    patch: EditPatch  # cumulative patch of every batch written so far
    requests_done: int
    resumed_from: int  # requests already done by earlier runs
    finished: bool


def combine(first: EditPatch | None, second: EditPatch,
            requests: Sequence[EditRequest]) -> EditPatch:
    """``second`` (made on top of ``first``) joined to it, with metadata describing ``requests``
    as one uninterrupted run would."""
    if first is None:
        merged = EditPatch(list(second.deltas), second.originals, second.base_digests,
                           dict(second.metadata))
    else:
        merged = first.merge(second)
        merged.metadata = dict(second.metadata)
        merged.metadata["target_nll"] = (first.metadata.get("target_nll", [])
                                         + second.metadata.get("target_nll", []))
        seconds = [p.metadata["seconds"] for p in (first, second) if "seconds" in p.metadata]
        if seconds:
            merged.metadata["seconds"] = round(sum(seconds), 3)
        tallies = [p.metadata["targets"] for p in (first, second) if "targets" in p.metadata]
        if tallies:  # where each part's targets came from (Editor.edit), summed
            merged.metadata["targets"] = {k: round(sum(t.get(k, 0) for t in tallies), 3)
                                          for k in tallies[-1]}
    merged.metadata.pop("layouts", None)  # rewritten by save()
    merged.metadata["n_requests"] = len(requests)
    merged.metadata["requests_digest"] = requests_digest(requests)
    return merged


def pin_hparams(editor: Editor, run: RunDir) -> None:
    """Record the editor's hyper-parameters in a new run; in a resumed one, continue with those
    it started with (logged when they differ from what the editor would use now)."""
    now = json.loads(json.dumps(editor.hparams.to_dict(), default=str))  # tuples as lists
    started = run.record.get("hparams")
    if started is None:
        run.update_record(hparams=now)
        return
    changed = {k: (started.get(k), now.get(k)) for k in sorted(set(started) | set(now))
               if started.get(k) != now.get(k)}
    if not changed:
        return
    try:
        editor.use_hparams(started)
    except ValueError as err:
        raise RunDirError(f"{run.path} was started with settings this massedit cannot use "
                          f"({err}); finish it with the version that started it, or choose "
                          "another --out") from None
    logger.warning("continuing %s with the settings it started with; today's would differ in "
                   "%s", run.path, ", ".join(f"{k} ({a} then, {b} now)"
                                             for k, (a, b) in changed.items()))


def edit_resumably(editor: Editor, requests: Sequence[EditRequest], batch_size: int | None,
                   run: RunDir, *, max_batches: int | None = None,
                   progress: bool = True, target_store: bool = True) -> SequentialResult:
    """Edit ``requests`` in batches, continuing from ``run``'s checkpoint if it has one.

    ``max_batches`` stops after that many batches in this call (the rest waits for a re-run).
    ``target_store``: keep targets on disk (in the editor's cache folder) unless the editor
    already has a store. Batches the objective cannot solve are refused before any work.
    """
    requests = list(requests)
    batch_size = batch_size or len(requests)
    pin_hparams(editor, run)  # before anything reads them
    editor.check_batches(requests, batch_size)  # before statistics and targets
    if target_store and editor.target_store is None:
        editor.target_store = TargetStore.default(editor.stats_spec.cache_dir)
    editor.moments()
    editor.prefixes()  # both from the unedited model, whether or not this run resumes
    done_patch, batches_done, requests_done = run.load_checkpoint()
    if done_patch is not None:
        if done_patch.metadata.get("requests_digest") != requests_digest(
                requests[:requests_done]):
            raise RuntimeError(f"the checkpoint in {run.path} does not match these requests")
        apply_patch(done_patch, editor.model)  # and the weights' identities, as when written
        editor.restore_sequential_state(run.load_checkpoint_state(batches_done))
        logger.info("continuing after %d finished batch(es) (%d of %d requests)", batches_done,
                    requests_done, len(requests))
    remaining = requests[requests_done:]
    if max_batches is not None:
        remaining = remaining[: max_batches * batch_size]
    if not remaining:
        patch = done_patch if done_patch is not None else EditPatch()
        return SequentialResult(patch, requests_done, requests_done, True)

    total = -(-len(requests) // batch_size)
    bar = tqdm(total=total, initial=batches_done, desc="batches", unit="batch", leave=False,
               disable=not progress or total == 1)

    def on_batch_done(index: int, so_far: EditPatch) -> None:
        n_done = requests_done + min((index + 1) * batch_size, len(remaining))
        cumulative = combine(done_patch, so_far, requests[:n_done])
        run.save_checkpoint(cumulative, batches_done + index + 1, n_done,
                            state=editor.sequential_state())
        bar.update(1)

    try:
        new = editor.edit(remaining, batch_size=batch_size, on_batch_done=on_batch_done)
    finally:
        bar.close()
    n_done = requests_done + len(remaining)
    patch = combine(done_patch, new, requests[:n_done])
    return SequentialResult(patch, n_done, requests_done, n_done == len(requests))
