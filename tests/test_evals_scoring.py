"""Batched teacher-forced scoring equals unbatched hand computations, whatever the padding."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from massedit.evals import (
    encode_prompt_target,
    greedy_continuation,
    score_targets,
    target_argmax,
    target_nll,
    target_prob,
    target_token_hits,
)
from massedit.evals.scoring import target_token_ids
from massedit.testing import build_word_tokenizer

WORDS = (
    "the eiffel tower is in paris rome city of new york danny green plays for toronto raptors "
    "a b c d e f g h what language does speak french english located capital"
).split()
BOS_ID, EOS_ID = 2, 3

PROMPTS = [
    "the eiffel tower is in",
    "danny green plays for the",
    "what",
    "the capital city of the new york is located in the",
    "a b",
]
TARGETS = ["paris", "toronto raptors", "language does speak", "rome", "c d e f"]


def word_tokenizer(bos: bool = False, padding_side: str = "right") -> PreTrainedTokenizerFast:
    return build_word_tokenizer(WORDS, add_bos=bos, padding_side=padding_side)


def tiny_model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    vocab = len(word_tokenizer())
    special = {"pad_token_id": 0, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID}
    if kind == "gpt2":
        config = GPT2Config(
            n_layer=2, n_embd=32, n_head=4, vocab_size=vocab, n_positions=64, **special
        )
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=vocab,
            max_position_embeddings=64,
            **special,
        )
        model = LlamaForCausalLM(config)
    return model.eval()


def hand_scores(model, tok, prompt: str, target: str) -> tuple[float, torch.Tensor, torch.Tensor]:
    """One unpadded forward pass: mean NLL, argmax and ids of the target tokens."""
    p_ids = tok(prompt)["input_ids"]
    t_ids = tok(" " + target, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + t_ids])  # (1, seq)
    with torch.no_grad():
        logits = model(ids).logits[0]  # (seq, vocab)
    pred = logits[len(p_ids) - 1 : -1]  # (t, vocab): position p predicts token p + 1
    logp = pred.log_softmax(-1)
    t = torch.tensor(t_ids)
    nll = -logp[torch.arange(len(t_ids)), t].mean()
    return float(nll), pred.argmax(-1), t


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
    return tiny_model(request.param)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("bos", [False, True])
def test_target_nll_matches_unbatched_forward(model, side: str, bos: bool) -> None:
    tok = word_tokenizer(bos=bos)
    expected = torch.tensor(
        [hand_scores(model, tok, p, t)[0] for p, t in zip(PROMPTS, TARGETS, strict=True)]
    )
    # batch_size 3 mixes lengths within a batch, so padding is exercised on every row
    got = target_nll(model, tok, PROMPTS, TARGETS, batch_size=3, padding_side=side)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # one batch holding every length, and the default side, give the same numbers
    again = target_nll(model, tok, PROMPTS, TARGETS, batch_size=5)
    torch.testing.assert_close(again, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(target_prob(model, tok, PROMPTS, TARGETS), torch.exp(-got))


@pytest.mark.parametrize("bos", [False, True])
def test_token_hits_and_argmax_match_unbatched_forward(model, bos: bool) -> None:
    tok = word_tokenizer(bos=bos)
    hits = target_token_hits(model, tok, PROMPTS, TARGETS, batch_size=2, padding_side="right")
    argmax = target_argmax(model, tok, PROMPTS, TARGETS, batch_size=4)
    for i, (p, t) in enumerate(zip(PROMPTS, TARGETS, strict=True)):
        _, hand_argmax, ids = hand_scores(model, tok, p, t)
        assert torch.equal(argmax[i], hand_argmax)
        assert torch.equal(hits[i], hand_argmax == ids)


def test_bos_appears_once_at_the_start() -> None:
    tok = word_tokenizer(bos=True)
    ids, n_prompt = encode_prompt_target(tok, "danny green plays for the", "toronto raptors")
    assert ids[0] == BOS_ID and ids.count(BOS_ID) == 1
    assert n_prompt == 6 and len(ids) == 8
    [score] = score_targets(tiny_model("llama"), tok, ["what"], ["language does speak"])
    assert score.target_ids.tolist() == ids_of(tok, "language does speak")
    assert score.token_nll.shape == (3,)


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_dummy_prefix_space_token_is_dropped() -> None:
    class DummyPrefixTokenizer:
        """Mimics SentencePiece: " paris" becomes a lone "▁" (id 5) then "▁paris" (id 7)."""

        def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
            return {"input_ids": [5, 7] if text.startswith(" ") else [7]}

        def decode(self, ids: list[int]) -> str:
            return "".join({5: " ", 7: " paris"}[i] for i in ids)

    assert target_token_ids(DummyPrefixTokenizer(), "paris") == [7]


def test_errors_name_the_pair() -> None:
    tok = word_tokenizer()
    model = tiny_model("gpt2")
    with pytest.raises(ValueError, match="pair 1: target"):
        target_nll(model, tok, ["the city", "the city"], ["paris", "   "])
    with pytest.raises(ValueError, match="pair 0: prompt"):
        target_nll(model, tok, [""], ["paris"])
    with pytest.raises(ValueError, match="2 prompts but 1 targets"):
        target_nll(model, tok, ["a", "b"], ["c"])


def test_scoring_uses_eval_mode_and_restores_training_flag() -> None:
    model = tiny_model("gpt2").train()  # dropout on: scores would be random
    tok = word_tokenizer()
    first = target_nll(model, tok, PROMPTS, TARGETS)
    second = target_nll(model, tok, PROMPTS, TARGETS)
    assert torch.equal(first, second)
    assert model.training


def hand_greedy(model, tok, prompt: str, steps: int) -> str:
    start = tok(prompt)["input_ids"]
    ids = list(start)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] == EOS_ID:  # generate stops a row at EOS
                break
    return tok.decode(ids[len(start) :], skip_special_tokens=True)


@pytest.mark.parametrize("bos", [False, True])
def test_greedy_continuation_matches_unbatched_greedy(model, bos: bool) -> None:
    tok = word_tokenizer(bos=bos, padding_side="right")  # batched generation left-pads anyway
    got = greedy_continuation(model, tok, PROMPTS, max_new_tokens=4, batch_size=3)
    assert got == [hand_greedy(model, tok, p, 4) for p in PROMPTS]
