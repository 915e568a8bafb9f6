"""Bad inputs the other tests do not cover (issue 18): each is a clear error naming the file and
what is wrong, and nothing is changed (docs/design.md §12)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from massedit import Editor, StatsSpec
from massedit.engine.patch import EditPatch
from massedit.engine.requests import EditRequest, requests_digest
from massedit.jobs.edit_files import EditFileError, EditSet, load_edits, tokenisation_problems
from massedit.jobs.patch_checks import PatchError
from massedit.jobs.patches import apply_patch, merge_patches
from massedit.jobs.runs import RunDir
from massedit.jobs.sequential import edit_resumably
from massedit.models.adapters import get_module
from massedit.testing import tiny_model
from tests.test_engine_algebra import FAST, REQUESTS

HEADER = "prompt,subject,target_new,target_true\n"


def _file_error(path: Path) -> str:
    with pytest.raises(EditFileError) as info:
        load_edits(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "nothing was edited" in message
    return message


# ---- edit files ------------------------------------------------------------------------------
def test_csv_row_with_more_fields_than_the_header(tmp_path):
    path = tmp_path / "edits.csv"
    path.write_text(HEADER + "The {} is in,Eiffel Tower,Rome,Paris\n"
                    "The {} is in,Big Ben,Berlin,London,extra\n")
    assert ("row 2 (line 3): has 5 values but the header has 4 columns (a separator inside "
            "an unquoted field?)") in _file_error(path)


def test_json_edit_file_that_is_not_a_list(tmp_path):
    path = tmp_path / "edits.json"
    path.write_text(json.dumps({"prompt": "The {} is in", "subject": "Eiffel Tower",
                                "target_new": "Rome"}))
    assert "a JSON edit file must hold a list of objects (one per edit)" in _file_error(path)


@pytest.mark.parametrize("name", ["missing.csv", "missing.json", "missing.jsonl"])
def test_missing_edit_file(tmp_path, name):
    assert "the file does not exist" in _file_error(tmp_path / name)


class _DropsSubject:
    """A tokenizer whose normaliser drops the subject's characters: no token overlaps it."""

    def __init__(self, tok, subject: str) -> None:
        self.tok, self.subject = tok, subject
        self.unk_token_id = tok.unk_token_id

    def __call__(self, text, **kwargs):
        enc = self.tok(text, **kwargs)
        if "offset_mapping" in enc:
            start = text.rfind(self.subject)
            end = start + len(self.subject)
            enc["offset_mapping"] = [(a, a) if a < end and b > start else (a, b)
                                     for a, b in enc["offset_mapping"]]
        return enc

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_subject_that_maps_to_no_token():
    _, tok = tiny_model("gpt2")
    req = EditRequest("The {} is located in", "Eiffel Tower", "Rome", "Paris")
    edits = EditSet("facts.csv", [req], [4])
    problems = tokenisation_problems(edits, _DropsSubject(tok, "Eiffel Tower"))
    assert [str(p) for p in problems] == [
        "row 4: subject 'Eiffel Tower' maps to no token of 'The Eiffel Tower is located in'"]


# ---- checkpoints -----------------------------------------------------------------------------
def test_checkpoint_from_different_requests_is_refused(tmp_path, tiny_corpus, stats_dir):
    model, tok = tiny_model("gpt2")
    before = {n: p.clone() for n, p in model.state_dict().items()}
    run = RunDir.open(tmp_path / "run", "edit", {}, "key")
    other = EditPatch(metadata={"requests_digest": requests_digest([REQUESTS[2]])})
    run.save_checkpoint(other, batches_done=1, requests_done=1)
    editor = Editor(model, tok, "memit", stats=StatsSpec(corpus=str(tiny_corpus),
                                                         cache_dir=str(stats_dir)),
                    progress=False, **{**FAST, "layers": (1, 2)})
    with pytest.raises(RuntimeError, match=rf"the checkpoint in {run.path} does not match these "
                                           "requests"):
        edit_resumably(editor, REQUESTS[:2], 1, run, target_store=False)
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())
    run.close()


# ---- patches ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def patches(tmp_path_factory, tiny_corpus, stats_dir):
    """A tiny Llama saved to disk; patch A on it, patch B on A's result, patch C on the base."""
    root = tmp_path_factory.mktemp("patches")
    model, tok = tiny_model("llama")
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    stats = StatsSpec(corpus=str(tiny_corpus), cache_dir=str(stats_dir))

    def edit(requests, name):
        editor = Editor(model, tok, "memit", stats=stats, progress=False,
                        **{**FAST, "layers": (1, 2)})
        return editor.edit(requests).save(root / name)

    a = edit(REQUESTS[:1], "a")
    b = edit(REQUESTS[1:2], "b")  # on A's result
    EditPatch.load(b).revert(model)
    EditPatch.load(a).revert(model)
    c = edit(REQUESTS[2:], "c")  # on the base, like A
    return {"root": root, "base": root / "base", "a": a, "b": b, "c": c}


def test_merge_of_fewer_than_two_patches(patches, tmp_path):
    with pytest.raises(ValueError, match="merge needs at least two patches, got 1"):
        merge_patches([patches["a"]], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_merge_of_patches_that_do_not_follow_one_another(patches, tmp_path):
    a, b, c = patches["a"], patches["b"], patches["c"]
    with pytest.raises(PatchError, match=rf"{c} does not follow {a}: at 'model.layers.\d.mlp."
                                         r"down_proj' it was not made on the model .* left "
                                         r"\(both were made on the same base model\)"):
        merge_patches([a, c], tmp_path / "ac")
    with pytest.raises(PatchError, match=rf"{a} does not follow {b}"):
        merge_patches([b, a], tmp_path / "ba")
    assert not (tmp_path / "ac").exists() and not (tmp_path / "ba").exists()
    merged = EditPatch.load(merge_patches([a, b], tmp_path / "ab"))  # the right order works
    assert len(merged.deltas) == 4


def _hand_edited(patches, tmp_path, change) -> Path:
    folder = tmp_path / "edited"
    EditPatch.load(patches["a"]).save(folder)
    doc = json.loads((folder / "patch.json").read_text())
    change(doc)
    (folder / "patch.json").write_text(json.dumps(doc))
    return folder


@pytest.mark.parametrize("kind", ["site", "shape"])
def test_hand_edited_patch_metadata_is_refused_before_any_write(patches, tmp_path, kind):
    def change(doc):
        if kind == "site":
            doc["deltas"][0]["site"] = "model.layers.9.mlp.down_proj"
        else:  # a layout that transposes the (96 → 32) weight: the delta no longer fits
            for entry in doc["deltas"]:
                entry["layout"] = "conv1d"

    folder = _hand_edited(patches, tmp_path, change)
    with pytest.raises(PatchError) as info:
        apply_patch(folder, str(patches["base"]), tmp_path / "out")
    message = str(info.value)
    assert message.startswith(f"{folder}: the patch does not fit the model")
    if kind == "site":
        assert "site 'model.layers.9.mlp.down_proj' is not a module of this LlamaForCausalLM" \
            in message
    else:
        assert "is (32, 96) but the weight there is (96, 32) (layout 'conv1d')" in message
    assert not (tmp_path / "out").exists()


def test_a_patch_fits_check_changes_nothing(patches):
    """The checks read the model only: the base's site weights are unchanged after a refusal."""
    from massedit.jobs.patch_checks import check_patch_fits

    model, _ = tiny_model("llama")
    site = "model.layers.1.mlp.down_proj"
    before = get_module(model, site).weight.clone()
    patch = EditPatch.load(patches["a"])
    patch.deltas[0].layout = "conv1d"
    with pytest.raises(PatchError):
        check_patch_fits(patch, model, patches["a"])
    assert torch.equal(get_module(model, site).weight, before)


# ---- pickled weights -------------------------------------------------------------------------
def test_pickled_weights_are_not_loaded_unless_asked(patches, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from massedit.models.loading import ALLOW_PICKLE_ENV, load_model

    folder = tmp_path / "pickled"
    folder.mkdir()
    for item in patches["base"].iterdir():
        if item.suffix != ".safetensors":
            (folder / item.name).write_bytes(item.read_bytes())
    torch.save(load_file(str(patches["base"] / "model.safetensors")),
               folder / "pytorch_model.bin")
    monkeypatch.delenv(ALLOW_PICKLE_ENV, raising=False)
    with pytest.raises(OSError, match="has no safetensors weights; massedit does not load "
                                      r"pickled weights \(.bin\)"):
        load_model(str(folder))
    model, _ = load_model(str(folder), allow_pickle=True)  # the user asked
    monkeypatch.setenv(ALLOW_PICKLE_ENV, "1")
    same, _ = load_model(str(folder))
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight,
                       same.model.layers[1].mlp.down_proj.weight)
