"""Training a toy-world model, and measuring its recall (see :mod:`massedit.testing.toyworld`)."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from massedit.engine.tokens import encode_target, pad_id_of, pad_right
from massedit.testing.model_cache import reproducible_training
from massedit.testing.tokenizer import build_word_tokenizer

if TYPE_CHECKING:
    from massedit.testing.toyworld import ToyWorld

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSpec:
    """Model shape and optimisation; ``arch`` is a ``config.model_type``."""

    arch: str = "gpt2"
    n_layer: int = 6
    width: int = 64
    mlp_width: int = 256
    heads: int = 4
    steps: int = 1500
    batch_size: int = 32
    seq_len: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 50
    other_token_weight: float = 0.1  # loss weight of non-object tokens (keeps it a language model)
    subject_mask_p: float = 0.5  # see _Batches: routes recall through the subject's last token
    eval_every: int = 100  # stop early once (almost) every fact is recalled with confidence
    seed: int = 0


# One recipe per supported architecture (docs/design.md §10: trained in one to two minutes on one
# CPU thread; the wide gpt2 of toyworld.py in about five).
ARCH_SPECS: dict[str, TrainSpec] = {
    "gpt2": TrainSpec(),
    # Measured: width 128 behaves the same (reads the subject by layer 2) at 3x the training time.
    "llama": TrainSpec(arch="llama", width=64, mlp_width=192, steps=1000),
    # Post-MLP norm (OLMo 2: h + norm(mlp(h)), docs/design.md §5): the llama recipe's shape, on
    # a world with profile lines (toyworld.ARCH_WORLDS) and a longer schedule (slower decay):
    # with 1,000 steps one seed in three left facts out of MLP 0's reach (toyworld.py).
    "olmo2": TrainSpec(arch="olmo2", width=64, mlp_width=192, steps=2000),
}


# ---------------------------------------------------------------------------------------------
# Recall measurement


@torch.no_grad()
def recall(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str], answers: list[str],
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy next-token hits ``(n,)`` bool and the answers' probabilities ``(n,)``."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    device = next(model.parameters()).device
    answer_ids = torch.tensor([encode_target(tok, a)[0] for a in answers], device=device)  # (n,)
    was_training = model.training
    model.eval()
    hits, probs = [], []
    for start in range(0, len(prompts), batch_size):
        ids = [tok(p)["input_ids"] for p in prompts[start : start + batch_size]]
        # Right padding: absolute positions stay those of an unpadded prompt.
        batch = pad_right(ids, pad_id_of(tok), device)
        mask = batch["attention_mask"]  # (b, L)
        logits = model(**batch).logits  # (b, L, V)
        last = logits[torch.arange(len(ids), device=device), mask.sum(1) - 1].float()  # (b, V)
        target = answer_ids[start : start + len(ids)]
        hits.append(last.argmax(-1) == target)
        probs.append(last.softmax(-1).gather(1, target[:, None])[:, 0])
    model.train(was_training)
    return torch.cat(hits).cpu(), torch.cat(probs).cpu()


def toy_accuracy(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str], answers: list[str]
) -> float:
    """Share of prompts whose greedy next token is the first token of ``" " + answer``."""
    hits, _ = recall(model, tok, list(prompts), list(answers))
    return hits.float().mean().item()


# ---------------------------------------------------------------------------------------------
# Training


def _model_config(spec: TrainSpec, tok: PreTrainedTokenizerBase) -> PretrainedConfig:
    common = dict(
        vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    if spec.arch == "gpt2":
        return AutoConfig.for_model(
            "gpt2", n_embd=spec.width, n_layer=spec.n_layer, n_head=spec.heads,
            n_inner=spec.mlp_width, n_positions=max(64, 2 * spec.seq_len),
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common,
        )
    if spec.arch in ("llama", "mistral", "qwen2", "olmo2"):
        return AutoConfig.for_model(
            spec.arch, hidden_size=spec.width, intermediate_size=spec.mlp_width,
            num_hidden_layers=spec.n_layer, num_attention_heads=spec.heads,
            num_key_value_heads=spec.heads, head_dim=spec.width // spec.heads,
            max_position_embeddings=max(64, 2 * spec.seq_len), tie_word_embeddings=False,
            **common,
        )
    raise ValueError(f"no toy-world recipe for arch {spec.arch!r}; known: {', '.join(ARCH_SPECS)}")


class _Batches:
    """Rows of random fact sentences run together; weight 1 on object targets, less elsewhere.

    With probability ``subject_mask_p`` per sentence, later tokens may not attend to the subject's
    non-last tokens (a 4-D attention mask). Without this the model gathers both names at the
    prediction position and looks the fact up there, leaving the subject's last token idle, so a
    causal trace finds nothing at the subject; with it, the reliable route is the one real models
    take: resolve the subject at its last token and read the attributes from there.
    """

    def __init__(self, world: ToyWorld, tok: PreTrainedTokenizerBase, spec: TrainSpec) -> None:
        def token_ids(words) -> set[int]:
            return {tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in words}

        self.sentences = [tok(s, add_special_tokens=False)["input_ids"] for s in world.sentences()]
        # The tokenizer's own special prefix (<bos> for Llama-like), so rows start as prompts do.
        self.prefix = tok("", add_special_tokens=True)["input_ids"]
        # Object and name words occur nowhere else in a sentence, so an id says what a token is.
        self.objects = token_ids(o for objs in world.objects.values() for o in objs)
        self.names = token_ids((*world.spec.first_names, *world.spec.last_names))
        self.spec = spec
        self.rng = random.Random(spec.seed)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(inputs, targets, weights)`` each ``(B, S)`` and an additive mask ``(B, 1, S, S)``."""
        n, size = self.spec.seq_len + 1, self.spec.seq_len
        allowed = torch.ones(size, size, dtype=torch.bool).tril().repeat(self.spec.batch_size, 1, 1)
        rows, flags = [], []
        for b in range(self.spec.batch_size):
            ids, is_obj = list(self.prefix), [False] * len(self.prefix)
            while len(ids) < n:
                sent = self.rng.choice(self.sentences)
                name_pos = [len(ids) + i for i, t in enumerate(sent) if t in self.names]
                if self.rng.random() < self.spec.subject_mask_p:
                    last = name_pos[-1]
                    for pos in name_pos[:-1]:
                        if pos < size:  # the row may end inside this sentence
                            allowed[b, last + 1 :, pos] = False
                ids += sent
                is_obj += [t in self.objects for t in sent]
            rows.append(ids[:n])
            flags.append(is_obj[:n])
        tokens = torch.tensor(rows)  # (B, S + 1)
        obj = torch.tensor(flags)[:, 1:]  # (B, S): is the target at this position an object?
        weight = torch.where(obj, 1.0, self.spec.other_token_weight)  # (B, S)
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
        return tokens[:, :-1], tokens[:, 1:], weight, mask[:, None]  # mask: (B, 1, S, S)


def _lr_factor(step: int, spec: TrainSpec) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < spec.warmup:
        return (step + 1) / spec.warmup
    progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_toy_model(
    world: ToyWorld, spec: TrainSpec
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict]:
    """Train a fresh model on ``world``; returns it (eval mode), its tokenizer and a report.

    Bit-reproducible: the same world and spec give the same weights whatever the caller's thread
    count or random state and whatever else runs on the machine (see
    :func:`massedit.testing.model_cache.reproducible_training`)."""
    with reproducible_training():
        return _train(world, spec)


def _train(
    world: ToyWorld, spec: TrainSpec
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict]:
    tok = build_word_tokenizer(world.words(), add_bos=spec.arch != "gpt2")
    config = _model_config(spec, tok)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": spec.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},  # biases and norm gains
        ],
        lr=spec.lr, betas=(0.9, 0.98),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, spec))
    batches = _Batches(world, tok, spec)
    prompts, answers = world.prompts()
    start, step, acc, p_mean = time.perf_counter(), 0, 0.0, 0.0
    for step in range(1, spec.steps + 1):
        x, y, w, mask = batches()
        logits = model(input_ids=x, attention_mask=mask).logits  # (B, S, V)
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        loss = (nll * w.flatten()).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % spec.eval_every == 0 or step == spec.steps:
            hits, probs = recall(model, tok, prompts, answers)
            acc, p_mean = hits.float().mean().item(), probs.mean().item()
            log.debug("step %d loss %.3f recall %.3f p %.3f", step, loss.item(), acc, p_mean)
            # Stop once (almost) every phrasing of every fact is recalled confidently: more
            # steps only sharpen probabilities that edits then have to overcome.
            if acc >= 0.995 and p_mean > 0.95:
                break
    seconds = time.perf_counter() - start
    model.eval()
    report = dict(
        steps=step, seconds=round(seconds, 1), threads=torch.get_num_threads(), accuracy=acc,
        mean_probability=p_mean,
    )
    log.info(
        "trained toy-world %s in %.1f s (%d steps, %d threads): recall %.1f%% of %d prompts, "
        "mean p %.3f", spec.arch, seconds, step, torch.get_num_threads(), 100 * acc, len(prompts),
        p_mean,
    )
    return model, tok, report
