"""CounterFact, EasyEdit/zsRE and fluency metrics against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from massedit.engine.requests import EditRequest
from massedit.evals import (
    EvalCase,
    counterfact_scores,
    generate_fluency_texts,
    locality_reference_tokens,
    ngram_entropy,
    summarize_counterfact,
    summarize_token_accuracy,
    target_nll,
    target_token_hits,
    text_ngram_entropy,
    tfidf_consistency,
    token_accuracy_scores,
    zsre_scores,
)
from massedit.testing import build_word_tokenizer

WORDS = "the eiffel tower is in paris rome located city of a b c d where louvre".split()


def word_tokenizer() -> PreTrainedTokenizerFast:
    return build_word_tokenizer(WORDS)


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return word_tokenizer()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=len(word_tokenizer()), n_positions=64,
        bos_token_id=2, eos_token_id=3, pad_token_id=0,
    )  # fmt: skip
    return GPT2LMHeadModel(config).eval()


def case(case_id: int = 0, **fields) -> EvalCase:
    request = EditRequest("the {} is in", "eiffel tower", "rome", "paris", case_id=case_id)
    defaults = {
        "rewrite_prompts": (request.text,),
        "paraphrase_prompts": ("the eiffel tower is located in", "where is the eiffel tower"),
        "neighborhood_prompts": ("the louvre is in",),
        "generation_prompts": ("the eiffel tower is", "a b"),
    }
    return EvalCase(request=request, case_id=case_id, **{**defaults, **fields})


def pairs(*values: tuple[float, float]) -> list[dict[str, float]]:
    return [{"target_new": new, "target_true": true} for new, true in values]


def test_summarize_counterfact_hand_numbers() -> None:
    rows = [
        {
            "rewrite_prompts_probs": pairs((0.6, 0.2)),
            "paraphrase_prompts_probs": pairs((0.3, 0.4), (0.5, 0.1)),
            "neighborhood_prompts_probs": pairs((0.1, 0.5), (0.2, 0.1)),
        },
        {
            "rewrite_prompts_probs": pairs((0.1, 0.3)),
            "paraphrase_prompts_probs": pairs((0.7, 0.2), (0.6, 0.3)),
            "neighborhood_prompts_probs": pairs((0.05, 0.6), (0.1, 0.3)),
            "ngram_entropy": 6.0,
        },
    ]
    got = summarize_counterfact(rows)
    # per case first, then over cases, as ROME's summarize.py
    expected = {
        "n_cases": 2.0,
        "efficacy_success": 50.0,  # (1 + 0) / 2
        "efficacy_magnitude": 10.0,  # (0.4 - 0.2) / 2
        "paraphrase_success": 75.0,  # (1/2 + 1) / 2
        "paraphrase_magnitude": 27.5,  # (0.15 + 0.4) / 2
        "neighborhood_success": 75.0,  # (1/2 + 1) / 2
        "neighborhood_magnitude": 26.25,  # (0.15 + 0.375) / 2
        "score": 3 / (1 / 50 + 1 / 75 + 1 / 75),
        "fluency": 600.0,
    }
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def test_summarize_counterfact_zero_success_and_missing_family() -> None:
    rows = [{"rewrite_prompts_probs": pairs((0.1, 0.2)), "paraphrase_prompts_probs": []}]
    got = summarize_counterfact(rows)
    assert got["efficacy_success"] == 0.0
    assert "paraphrase_success" not in got and "score" not in got
    full = rows[0] | {
        "paraphrase_prompts_probs": pairs((0.3, 0.2)),
        "neighborhood_prompts_probs": pairs((0.3, 0.2)),
    }
    assert summarize_counterfact([full])["score"] == 0.0  # harmonic mean with a zero


def test_counterfact_scores_are_probabilities_of_each_target(model, tok) -> None:
    cases = [case(0), case(1, paraphrase_prompts=())]
    rows = counterfact_scores(model, tok, cases, batch_size=3)
    assert [r["case_id"] for r in rows] == [0, 1]
    for c, row in zip(cases, rows, strict=True):
        for family in ("rewrite_prompts", "paraphrase_prompts", "neighborhood_prompts"):
            prompts = list(getattr(c, family))
            assert len(row[f"{family}_probs"]) == len(prompts)
            if not prompts:
                continue
            p_new = torch.exp(-target_nll(model, tok, prompts, ["rome"] * len(prompts)))
            p_true = torch.exp(-target_nll(model, tok, prompts, ["paris"] * len(prompts)))
            got = torch.tensor(
                [[p["target_new"], p["target_true"]] for p in row[f"{family}_probs"]]
            )
            torch.testing.assert_close(got, torch.stack([p_new, p_true], 1), atol=1e-6, rtol=0)


def test_counterfact_scores_with_generation(model, tok) -> None:
    rows = counterfact_scores(
        model, tok, [case(7)], generation=True, max_new_tokens=5, references={7: ["rome city"]}
    )
    row = rows[0]
    assert len(row["generated_texts"]) == 2
    assert row["ngram_entropy"] == pytest.approx(ngram_entropy(row["generated_texts"]))
    assert 0.0 <= row["consistency_tfidf"] <= 1.0
    assert "fluency" in summarize_counterfact(rows) and "consistency" in summarize_counterfact(rows)


def test_counterfact_scores_need_target_true(model, tok) -> None:
    request = EditRequest("the {} is in", "eiffel tower", "rome", case_id="x")
    with pytest.raises(ValueError, match=r"case 0 \(case_id 'x'\).*target_true"):
        counterfact_scores(model, tok, [EvalCase(request, ("the eiffel tower is in",))])


def test_token_accuracy_reliability_and_locality(model, tok) -> None:
    cases = [case(0), case(1, loc_prompt="where is the louvre", loc_answer="in paris")]
    reference = locality_reference_tokens(model, tok, cases)
    assert [len(r) for r in reference] == [1, 1]  # neighbour prompt; loc prompt takes precedence
    assert len(reference[1][0]) == 2  # " in paris" is two tokens
    rows = token_accuracy_scores(model, tok, cases, reference)
    hits = target_token_hits(model, tok, list(cases[0].paraphrase_prompts), ["rome", "rome"])
    generalization = sum(float(h.float().mean()) for h in hits) / 2
    assert rows[0]["generalization"] == pytest.approx(generalization)
    [rewrite_hits] = target_token_hits(model, tok, [cases[0].rewrite_prompts[0]], ["rome"])
    assert rows[0]["reliability"] == float(rewrite_hits.float().mean())
    # the model is unchanged, so it reproduces its own reference exactly
    assert [r["locality"] for r in rows] == [1.0, 1.0]
    # a reference that disagrees everywhere gives 0
    flipped = [[[t + 1 for t in ref] for ref in refs] for refs in reference]
    assert [r["locality"] for r in token_accuracy_scores(model, tok, cases, flipped)] == [0.0, 0.0]
    assert token_accuracy_scores(model, tok, cases)[0]["locality"] is None
    summary = summarize_token_accuracy(rows)
    assert summary["locality"] == 100.0 and summary["n_cases"] == 2.0


def test_token_accuracy_reference_mismatch_names_case(model, tok) -> None:
    with pytest.raises(ValueError, match=r"case 0 .*reference has 2 locality prompts"):
        token_accuracy_scores(model, tok, [case(0)], [[[1], [2]]])


def test_zsre_scores_need_loc(model, tok) -> None:
    with pytest.raises(ValueError, match="case 0 .*loc_prompt"):
        zsre_scores(model, tok, [case(0)])
    zcase = case(3, loc_prompt="where is the louvre", loc_answer="paris")
    ref = locality_reference_tokens(model, tok, [zcase])
    assert zsre_scores(model, tok, [zcase], ref)[0]["locality"] == 1.0


def test_ngram_entropy_hand_example() -> None:
    # "a b a b": bigrams ab, ba, ab -> H2 = H(2/3, 1/3); trigrams aba, bab -> H3 = 1 bit
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    expected = (2 / 3 * h2 + 4 / 3 * 1.0) / 2
    assert text_ngram_entropy("a b a b") == pytest.approx(expected)
    assert text_ngram_entropy("a") == 0.0
    # punctuation is its own word: "a, a" is [a , a] -> bigrams a, / ,a: 1 bit; one trigram: 0
    assert text_ngram_entropy("a, a") == pytest.approx(2 / 3 * 1.0 / 2)
    assert ngram_entropy(["a b a b", "a"]) == pytest.approx(expected / 2)


def test_tfidf_consistency() -> None:
    assert tfidf_consistency(["paris is big"], ["paris is big"]) == pytest.approx(1.0)
    assert tfidf_consistency(["paris is big"], ["rome was small"]) == 0.0
    partial = tfidf_consistency(["paris is big", "and old"], "paris was small")
    assert 0.0 < partial < 1.0
    assert tfidf_consistency(["!!"], ["?"]) == 0.0


def test_fluency_texts_are_seeded_and_leave_global_rng_alone(model, tok) -> None:
    prompts = ["the eiffel tower is", "a b", "where is"]
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = generate_fluency_texts(model, tok, prompts, max_new_tokens=6, seed=1, batch_size=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert first == generate_fluency_texts(
        model, tok, prompts, max_new_tokens=6, seed=1, batch_size=2
    )
    # the prompt is part of the text, as in ROME's generate_fast
    assert all(text.startswith(p) for text, p in zip(first, prompts, strict=True))
