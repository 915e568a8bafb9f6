"""IKE (massedit/baselines/ike.py, evals/in_context.py): the edit changes no weight, its memory
survives the patch, each prompt's context names the fact nearest to it, the contexts reach the
evaluation prompts (``massedit eval --patch``), and writing it into weights is refused."""

from __future__ import annotations

import json

import pytest
import torch

from massedit import Editor, EditRequest
from massedit.baselines.ike import (
    NO_WEIGHTS,
    InContextMemory,
    MemoryFact,
    embed_texts,
    in_context_memory,
    refuse_in_context_patch,
)
from massedit.engine.patch import EditPatch
from massedit.evals.evaluation import EvalSettings, evaluate, unedited_reference
from massedit.evals.in_context import cases_for_patch
from massedit.evals.readers import load_eval_dataset
from massedit.evals.scoring import target_prob
from massedit.testing import check_method, tiny_model
from massedit.testing.conformance_edits import TINY_REQUESTS
from tests.test_cli import invoke
from tests.test_eval_command import counterfact_records

pytestmark = pytest.mark.usefixtures("one_thread")

# Each request with a paraphrase and a neighbour (another request's prompt, its own old answer).
REQUESTS = [EditRequest(r.prompt, r.subject, r.target_new, r.target_true, case_id=i,
                        paraphrases=(f"{r.text} ,",), neighborhood=(TINY_REQUESTS[-1 - i].text,))
            for i, r in enumerate(TINY_REQUESTS)]


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_ike_changes_no_weight_and_its_patch_keeps_the_memory(arch, tmp_path):
    model, tok = tiny_model(arch)
    before = _state(model)
    patch = Editor(model, tok, "ike", progress=False, layers=(2,)).edit(REQUESTS, batch_size=3)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # bit for bit
    assert not patch.deltas and not patch.originals
    memory = in_context_memory(patch)
    assert memory.facts == tuple(MemoryFact.of(r) for r in REQUESTS)  # both batches, in order
    assert memory.layer == 2 and memory.demonstrations == 4
    loaded = EditPatch.load(patch.save(tmp_path / "ike"))
    assert in_context_memory(loaded) == memory
    loaded.apply(model)  # nothing to write: the weights stay as they are
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_embeddings_are_the_mean_hidden_state_of_each_text_alone():
    """Batched, padded embeddings equal each text run alone: mean of block 1's output."""
    model, tok = tiny_model("llama")
    texts = [r.text for r in TINY_REQUESTS] + ["Paris"]
    got = embed_texts(model, tok, texts, layer=1, batch=8)  # (5, d)
    with torch.no_grad():
        for i, text in enumerate(texts):
            ids = torch.tensor([tok(text)["input_ids"]])
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[2][0]
            want = torch.nn.functional.normalize(hidden.mean(0), dim=0)  # (d,)
            torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)


def test_each_prompt_gets_its_nearest_fact_and_demonstrations_in_ikes_format():
    model, tok = tiny_model("gpt2")
    facts = tuple(MemoryFact.of(r) for r in REQUESTS)
    memory = InContextMemory(facts, layer=1, demonstrations=3)
    prompts = [r.text for r in REQUESTS]
    vectors = embed_texts(model, tok, [f.prompt for f in facts], 1, 8)  # (4, d)
    for i, context in enumerate(memory.contexts(model, tok, prompts)):
        # A fact's own prompt is nearest to itself (cosine 1): it is the "New Fact".
        assert context.endswith(f"New Fact: {facts[i].statement}\nPrompt: ")
        # The other three are the demonstrations, least similar first, kinds copy/update/retain
        # from the most similar on.
        others = sorted((j for j in range(4) if j != i),
                        key=lambda j: -float(vectors[i] @ vectors[j]))
        shown = [facts[j].demonstration(kind) for kind, j in enumerate(others)]
        assert context == "".join(reversed(shown)) + f"New Fact: {facts[i].statement}\nPrompt: "
    retain = facts[0].demonstration(2)
    assert retain == (f"New Fact: {facts[0].statement}\nPrompt: {REQUESTS[0].neighborhood[0]} "
                      f"{REQUESTS[0].target_true}\n\n")
    assert facts[0].demonstration(1).endswith(f"{REQUESTS[0].paraphrases[0]} "
                                              f"{REQUESTS[0].target_new}\n\n")


def test_the_context_reaches_every_evaluation_prompt(tmp_path):
    model, tok = tiny_model("gpt2")
    (tmp_path / "cases.json").write_text(json.dumps(counterfact_records(REQUESTS)))
    cases = load_eval_dataset(str(tmp_path / "cases.json"), None)
    patch = Editor(model, tok, "ike", progress=False, layers=(1,),
                   ike_demonstrations=0).edit(REQUESTS)
    shown = cases_for_patch(model, tok, cases, patch)
    for case, seen in zip(cases, shown, strict=True):
        for name in ("rewrite_prompts", "paraphrase_prompts", "neighborhood_prompts",
                     "generation_prompts"):
            plain, got = getattr(case, name), getattr(seen, name)
            assert len(got) == len(plain) >= 1
            assert all(g.startswith("New Fact: ") and g.endswith(f"\nPrompt: {p}")
                       for g, p in zip(got, plain, strict=True))
    # A patch of weights leaves the cases as they are (the same object).
    assert cases_for_patch(model, tok, cases, EditPatch()) is cases
    # Scored with contexts: the rewrite prompt's probability is that of the context + prompt.
    settings = EvalSettings(fluency=False)
    reference = unedited_reference(model, tok, cases, settings)
    rows = evaluate(model, tok, shown, settings, reference.locality_tokens)
    direct = target_prob(model, tok, [shown[0].rewrite_prompts[0]], [REQUESTS[0].target_new])
    assert rows[0]["rewrite_prompts_probs"][0]["target_new"] == pytest.approx(
        float(direct[0]), rel=1e-5)


def test_eval_patch_prepends_the_context_and_apply_is_refused(tmp_path):
    model, tok = tiny_model("gpt2")
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    (tmp_path / "cases.json").write_text(json.dumps(counterfact_records(REQUESTS)))
    patch = Editor(model, tok, "ike", progress=False, layers=(1,),
                   ike_demonstrations=0).edit(REQUESTS)
    patch.save(tmp_path / "patch")
    out = tmp_path / "eval"
    result = invoke("eval", "--model", tmp_path / "base", "--patch", tmp_path / "patch",
                    "--dataset", tmp_path / "cases.json", "--n", "all", "--out", out,
                    "--max-new-tokens", "2")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    # With no demonstrations a fact's own prompt gets exactly "New Fact: <it>\nPrompt: ";
    # the patched column is the model asked after that context, computed here directly.
    texts = [f"New Fact: {r.text} {r.target_new}\nPrompt: {r.text}" for r in REQUESTS]
    want = target_prob(model, tok, texts, [r.target_new for r in REQUESTS])
    plain = target_prob(model, tok, [r.text for r in REQUESTS], [r.target_new for r in REQUESTS])
    for row, p, q in zip(rows, want, plain, strict=True):
        post = row["post"]["rewrite_prompts_probs"][0]["target_new"]
        assert post == pytest.approx(float(p), rel=1e-5)
        assert row["pre"]["rewrite_prompts_probs"][0]["target_new"] == pytest.approx(
            float(q), rel=1e-5)
        assert abs(float(p) - float(q)) > 1e-6  # the context changed what the model says
    with pytest.raises(ValueError, match=NO_WEIGHTS):
        refuse_in_context_patch(EditPatch.load(tmp_path / "patch"))
    # The commands that write weights say so before any work (no model folder written).
    applied = invoke("apply", tmp_path / "patch", "--model", tmp_path / "base",
                     "--out", tmp_path / "merged")
    assert applied.exit_code == 1 and NO_WEIGHTS in " ".join(applied.output.split())
    assert not (tmp_path / "merged").exists()
    (tmp_path / "facts.csv").write_text("prompt,subject,target_new\nThe {} is in,Paris,Rome\n")
    saved = invoke("edit", "--model", tmp_path / "base", "--method", "ike", "--edits",
                   tmp_path / "facts.csv", "--out", tmp_path / "run", "--save-model")
    assert saved.exit_code == 1 and NO_WEIGHTS in " ".join(saved.output.split())
    assert not (tmp_path / "run").exists()
    refuse_in_context_patch(EditPatch())  # a patch of weights is not refused
    from massedit.baselines.ike import is_in_context_method
    from massedit.editing.registry import get_method

    assert is_in_context_method(get_method("ike"))
    assert not any(is_in_context_method(get_method(m)) for m in ("rome", "ft", "kn"))


def test_the_conformance_kit_checks_ike_without_weights(tmp_path):
    report = check_method("ike", toy_arch=None, workdir=tmp_path)
    assert report.passed, str(report)
    tiny = [r for r in report.results if r.check.startswith("tiny ")]
    assert len(tiny) == 2 and all("no weight changed; 4 facts" in r.detail for r in tiny)


def test_presets_and_settings():
    from importlib import resources

    import yaml

    from massedit.baselines.ike import IkeHparams

    root = resources.files("massedit") / "presets" / "ike"
    for name in ("smollm2-135m.yaml", "default.yaml"):
        hp = IkeHparams().replace(**yaml.safe_load((root / name).read_text()))
        assert hp.layers == (0,) and hp.ike_demonstrations == 4 and hp.context_lengths == ()
    with pytest.raises(ValueError, match="ike needs"):
        IkeHparams(ike_demonstrations=-1)


def test_compare_scores_ike_with_its_contexts(tmp_path, stats_dir, monkeypatch):
    import csv

    from massedit.evals.evaluation import summarize

    monkeypatch.setenv("MASSEDIT_CACHE", str(stats_dir))
    model, tok = tiny_model("gpt2")
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    (tmp_path / "cases.json").write_text(json.dumps(counterfact_records(REQUESTS)))
    (tmp_path / "corpus.txt").write_text(" ".join(r.text for r in REQUESTS * 50))
    result = invoke("compare", "--model", tmp_path / "base", "--dataset", tmp_path / "cases.json",
                    "--n", "all", "--methods", "ike", "--batch-sizes", "4", "--set",
                    "ike_demonstrations=1", "--set", "layers=[1]", "--stats-corpus",
                    tmp_path / "corpus.txt", "--stats-tokens", "500", "--max-new-tokens", "2",
                    "--out", tmp_path / "study")
    assert result.exit_code == 0, result.output
    with (tmp_path / "study" / "results.csv").open() as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    # The same numbers as scoring the cases with the edit's contexts directly.
    cases = load_eval_dataset(str(tmp_path / "cases.json"), None)
    patch = Editor(model, tok, "ike", progress=False, layers=(1,),
                   ike_demonstrations=1).edit(REQUESTS)
    settings = EvalSettings(fluency=False)
    reference = unedited_reference(model, tok, cases, settings)
    want = summarize(evaluate(model, tok, cases_for_patch(model, tok, cases, patch), settings,
                              reference.locality_tokens))
    for name in ("efficacy_magnitude", "paraphrase_magnitude", "neighborhood_magnitude",
                 "locality"):
        assert float(rows["ike"][name]) == pytest.approx(want[name], rel=1e-5, abs=1e-9)
    assert float(rows["ike"]["efficacy_magnitude"]) != pytest.approx(
        float(rows["unedited"]["efficacy_magnitude"]), rel=1e-3)
