"""A resumed run continues with the hyper-parameters it started with, whatever the preset says
now (docs/design.md §12): a patch is never half one setting and half another."""

from __future__ import annotations

import json

import pytest
import torch

from massedit import Editor, StatsSpec
from massedit.jobs.runs import RunDir, RunDirError
from massedit.jobs.sequential import edit_resumably
from massedit.testing import tiny_model
from tests.test_engine_algebra import FAST, REQUESTS

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(out, corpus, stats_dir, max_batches=None, **overrides):
    model, tok = tiny_model("gpt2")
    stats = StatsSpec(corpus=str(corpus), cache_dir=str(stats_dir))
    editor = Editor(model, tok, method="memit", stats=stats, progress=False,
                    **{**FAST, **overrides})
    run = RunDir.open(out, "edit", {"test": 1}, "key")
    try:
        return edit_resumably(editor, REQUESTS, 1, run, max_batches=max_batches,
                              progress=False, target_store=False), editor
    finally:
        run.close()


def test_a_resumed_run_keeps_the_settings_it_started_with(tmp_path, tiny_corpus, stats_dir):
    whole, _ = _run(tmp_path / "whole", tiny_corpus, stats_dir)
    recorded = json.loads((tmp_path / "whole" / "run.json").read_text())["hparams"]
    assert recorded["v_num_grad_steps"] == FAST["v_num_grad_steps"]

    part, _ = _run(tmp_path / "parts", tiny_corpus, stats_dir, max_batches=1)
    assert not part.finished
    # The "preset" changed in between: a resumed run still uses the recorded settings ...
    resumed, editor = _run(tmp_path / "parts", tiny_corpus, stats_dir, v_num_grad_steps=9,
                           mom2_lambda=3.0)
    assert resumed.finished and resumed.resumed_from == 1
    assert editor.hparams.v_num_grad_steps == FAST["v_num_grad_steps"]
    assert editor.hparams.mom2_lambda != 3.0
    for a, b in zip(whole.patch.deltas, resumed.patch.deltas, strict=True):
        torch.testing.assert_close(a.delta.matrix(), b.delta.matrix(), rtol=1e-5, atol=1e-7)

    # ... where today's settings would have written another patch.
    other, _ = _run(tmp_path / "other", tiny_corpus, stats_dir, v_num_grad_steps=9,
                    mom2_lambda=3.0)
    gaps = [float((a.delta.matrix() - b.delta.matrix()).norm())
            for a, b in zip(whole.patch.deltas, other.patch.deltas, strict=True)]
    assert max(gaps) > 1e-3


def test_settings_this_version_does_not_know_are_refused(tmp_path, tiny_corpus, stats_dir):
    _run(tmp_path / "run", tiny_corpus, stats_dir, max_batches=1)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    record["hparams"]["a_setting_from_the_future"] = 1
    (tmp_path / "run" / "run.json").write_text(json.dumps(record))
    with pytest.raises(RunDirError, match="a_setting_from_the_future"):
        _run(tmp_path / "run", tiny_corpus, stats_dir)
