"""``massedit eval`` end to end on the toy-world model, with its facts written as CounterFact."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import needs_data
from tests.test_cli import invoke

# Edits of the toy model: layer 2 (one of TOY_EDIT_LAYERS), the default 20 target steps (5 left
# one of the 4 facts unflipped on two of three trained models).
EDIT = dict(layers=[2])
SET = ["--set", "layers=[2]"]
STATS_TOKENS = 3000


def counterfact_records(requests) -> list[dict]:
    """Toy-world requests in ROME's CounterFact schema (one generation prompt each)."""
    return [{
        "case_id": r.case_id,
        "requested_rewrite": {"prompt": r.prompt, "subject": r.subject,
                              "target_new": {"str": r.target_new},
                              "target_true": {"str": r.target_true}},
        "paraphrase_prompts": list(r.paraphrases),
        "neighborhood_prompts": list(r.neighborhood),
        "generation_prompts": [r.paraphrases[0]],
    } for r in requests]


def build_toy_workspace(root: Path, cache: Path, n_cases: int = 4,
                        train_seed: int | None = None) -> dict[str, Path]:
    """The toy model as a folder, its facts as CounterFact JSON, its corpus, and a ROME patch
    of all the cases (made through the Python API). ``train_seed`` picks another independently
    trained toy model (benchmarks/toy_thresholds.py)."""
    from massedit import Editor, StatsSpec
    from massedit.testing import toy_world_model

    torch.manual_seed(0)
    model, tok, world = toy_world_model("gpt2", train_seed=train_seed)
    model.save_pretrained(root / "toy")
    tok.save_pretrained(root / "toy")
    (root / "corpus.txt").write_text(world.corpus_text())
    requests = world.requests(n_cases, seed=1)
    (root / "toy.json").write_text(json.dumps(counterfact_records(requests)))
    editor = Editor(model, tok, "rome", progress=False,
                    stats=StatsSpec(corpus=str(root / "corpus.txt"), tokens=STATS_TOKENS,
                                    cache_dir=str(cache)), **EDIT)
    editor.edit(requests).save(root / "patch")
    return {"root": root, "model": root / "toy", "data": root / "toy.json",
            "corpus": root / "corpus.txt", "patch": root / "patch", "world": world}


def toy_workspace_with_cache(tmp_path_factory, stats_dir, name: str):
    """The toy workspace, with ``MASSEDIT_CACHE`` pointed at the session's statistics while the
    module's tests run. Built before the variable moves, so the trained toy model stays in the
    user's cache."""
    workspace = build_toy_workspace(tmp_path_factory.mktemp(name), stats_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MASSEDIT_CACHE", str(stats_dir))
        yield workspace


@pytest.fixture(scope="module")
def toy(tmp_path_factory, stats_dir):
    yield from toy_workspace_with_cache(tmp_path_factory, stats_dir, "eval")


QUICK = ["--max-new-tokens", "4", "--score-batch", "5"]


def evaluate_patch(toy, out: Path):
    """``massedit eval`` of the workspace's patch on all its cases; returns the console output
    (the summary is ``out/summary.json``)."""
    result = invoke("eval", "--model", toy["model"], "--patch", toy["patch"], "--dataset",
                    toy["data"], "--n", "all", "--out", out, *QUICK)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def evaluated(toy):
    out = toy["root"] / "eval"
    return out, evaluate_patch(toy, out)


def test_eval_writes_rows_summary_and_config(evaluated, toy) -> None:
    out, output = evaluated
    rows = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert len(rows) == 4 and summary["n_cases"] == {"pre": 4.0, "post": 4.0}
    # The summary is the mean of the per-case rows, for both metric families and both stages.
    for stage in ("pre", "post"):
        for name in ("efficacy_success", "paraphrase_success", "neighborhood_magnitude",
                     "reliability", "locality", "fluency"):
            mean = sum(r[stage][name] for r in rows) / len(rows)
            assert summary[name][stage] == pytest.approx(mean), (stage, name)
    # The toy model knows its facts; the patch writes the new ones. Over training seeds 0, 1, 2
    # (benchmarks/toy_thresholds.py eval): post efficacy 100 on each (bar: one fact below),
    # locality 44-56.
    assert summary["efficacy_success"]["pre"] == 0.0
    assert summary["efficacy_success"]["post"] >= 75.0
    assert summary["locality"]["pre"] == 100.0  # the unedited model against itself
    assert summary["locality"]["post"] < 100.0  # a rank-one edit moves some neighbours' tokens
    assert all(len(r["post"]["generated_texts"]) == 1 for r in rows)
    # The CSV holds the same numbers.
    with (out / "summary.csv").open() as fh:
        table = {r["metric"]: r for r in csv.DictReader(fh)}
    assert float(table["score"]["post"]) == pytest.approx(summary["score"]["post"])
    config = json.loads((out / "config.json").read_text())
    assert config["patch"]["method"] == "rome" and config["dataset"]["skipped"] == []
    assert {"torch", "transformers", "massedit-lm"} <= set(config["versions"])
    assert "efficacy_success" in output and "patched" in output


def test_eval_rows_hold_the_models_probabilities(evaluated, toy) -> None:
    """Post rows are probabilities of the patched model, pre rows of the unedited one."""
    from massedit import EditPatch, load_model
    from massedit.evals.scoring import target_prob

    out, _ = evaluated
    row = json.loads((out / "cases.jsonl").read_text().splitlines()[0])
    model, tok = load_model(str(toy["model"]))
    prompt, new = row["prompt"], row["target_new"]
    before = float(target_prob(model, tok, [prompt], [new])[0])
    EditPatch.load(toy["patch"]).apply(model)
    after = float(target_prob(model, tok, [prompt], [new])[0])
    assert row["pre"]["rewrite_prompts_probs"][0]["target_new"] == pytest.approx(before, rel=1e-5)
    assert row["post"]["rewrite_prompts_probs"][0]["target_new"] == pytest.approx(after, rel=1e-5)


def test_eval_without_patch_or_out_prints_only(toy, tmp_path) -> None:
    result = invoke("eval", "--model", toy["model"], "--dataset", toy["data"], "--n", "2",
                    "--no-fluency", *QUICK)
    assert result.exit_code == 0, result.output
    assert "2 case(s)" in result.output and "patched" not in result.output
    assert "fluency" not in result.output


def _write(path: Path, records) -> Path:
    path.write_text(json.dumps(records))
    return path


def test_zsre_record_without_new_target_is_skipped_and_listed(toy, tmp_path) -> None:
    """Like record 534 of the shared zsRE dev file: an empty ``alt`` cannot be edited."""
    world = toy["world"]
    facts = world.facts[:3]
    records = [{"subject": f["subject"], "src": f["templates"][0].format(f["subject"]),
                "rephrase": f["templates"][1].format(f["subject"]),
                "alt": "" if i == 1 else next(o for o in world.objects[f["relation"]]
                                             if o != f["object"]),
                "answers": [f["object"]], "loc": world.facts[10]["templates"][0].format(
                    world.facts[10]["subject"]), "loc_ans": world.facts[10]["object"]}
               for i, f in enumerate(facts)]
    out = tmp_path / "zsre"
    result = invoke("eval", "--model", toy["model"], "--dataset",
                    _write(tmp_path / "zsre.json", records), "--out", out, *QUICK)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"]["skipped"] == [1] and config["dataset"]["n_cases"] == 2
    summary = json.loads((out / "summary.json").read_text())
    # zsRE gets token accuracy only: no CounterFact probabilities under its name.
    assert "reliability" in summary and "efficacy_success" not in summary
    assert summary["reliability"]["pre"] == 0.0  # the model answers its own (true) object


@needs_data("zsre/zsre_dev.json")
def test_shared_zsre_dev_skips_only_record_534() -> None:
    from massedit.evals.eval_job import load_cases

    cases, skipped = load_cases("zsre", None)
    assert skipped == [534] and len(cases) == 699


@pytest.mark.parametrize("case", ["unknown", "missing_field", "too_many", "bad_n", "too_long",
                                  "out_exists"])
def test_bad_input_is_a_clear_error(toy, tmp_path, case) -> None:
    records = json.loads(toy["data"].read_text())
    args = ["--dataset", toy["data"]]
    if case == "unknown":
        args, expected = ["--dataset", "counterfactual"], "unknown data set 'counterfactual'"
    elif case == "missing_field":
        del records[1]["requested_rewrite"]["subject"]
        args = ["--dataset", _write(tmp_path / "bad.json", records)]
        expected = "record 1 requested_rewrite: missing field 'subject'"
    elif case == "too_many":
        args += ["--n", "5"]
        expected = "n=5 cases but the file has 4 records"
    elif case == "bad_n":
        args += ["--n", "some"]
        expected = "--n must be a positive number or 'all'"
    elif case == "too_long":
        records[2]["paraphrase_prompts"][0] = " ".join(["Anna"] * 80) + " lives in"
        args = ["--dataset", _write(tmp_path / "long.json", records)]
        expected = "case 2 (case_id"
    else:
        (tmp_path / "taken").mkdir()
        (tmp_path / "taken" / "file.txt").write_text("mine")
        args += ["--out", tmp_path / "taken"]
        expected = "already exists"
    result = invoke("eval", "--model", toy["model"], *args, *QUICK)
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert expected in message, message
    if case == "too_long":
        assert "longer than the model's context of 64" in message
    if case == "too_many":
        assert "--n all" in message


def test_metric_families_share_one_scoring_pass(toy) -> None:
    """With a shared cache, token accuracy and the locality reference score nothing new on
    CounterFact cases, and every number equals the uncached one."""
    from massedit import load_model
    from massedit.evals import metrics
    from massedit.evals.readers import load_eval_dataset

    model, tok = load_model(str(toy["model"]))
    cases = load_eval_dataset(toy["data"])
    cache: dict = {}
    shared = metrics.counterfact_scores(model, tok, cases, cache=cache)
    n_pairs = len(cache)
    reference = metrics.locality_reference_tokens(model, tok, cases, cache=cache)
    accuracy = metrics.token_accuracy_scores(model, tok, cases, reference, cache=cache)
    assert len(cache) == n_pairs == len({
        (p, t) for c in cases
        for p in (*c.rewrite_prompts, *c.paraphrase_prompts, *c.neighborhood_prompts)
        for t in (c.target_new, c.target_true)})
    assert shared == metrics.counterfact_scores(model, tok, cases)
    assert reference == metrics.locality_reference_tokens(model, tok, cases)
    assert accuracy == metrics.token_accuracy_scores(model, tok, cases, reference)
