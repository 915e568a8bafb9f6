"""A toy world of generated facts and a small model that has memorised them (DESIGN §10 item 2).

Subjects are two-token names ("Anna Moreau") drawn from a grid of first and last names so that
neither name alone determines a fact: the subject's LAST token must gather the first name through
attention before an MLP can look the fact up, which is how recall works in real models and what
makes a rank-one edit at a middle MLP layer meaningful. Each relation has a few phrasings; the model
is trained on random concatenations of fact sentences (so prompts work after a context prefix too)
and cached with ``save_pretrained``; later calls load it in seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from massedit.requests import EditRequest
from massedit.testing.tokenizer import build_word_tokenizer

log = logging.getLogger(__name__)

TOYWORLD_VERSION = 1  # bump when generation or training changes, to invalidate old caches

FIRST_NAMES = (
    "Anna Boris Clara David Elena Felix Greta Hugo Irene Jonas Karla Lukas Maria Nils Olga Peter "
    "Rosa Simon Tina Viktor"
).split()
LAST_NAMES = (
    "Adler Brandt Costa Dumas Eriksen Fischer Garcia Horvat Ivanov Jansen Keller Larsen Moreau "
    "Novak Olsen Petrov Quinn Rossi Schmidt Tanaka"
).split()


@dataclass(frozen=True)
class Relation:
    name: str
    objects: tuple[str, ...]  # single-token words
    templates: tuple[str, ...]  # "{}" is the subject; the object is the next word


RELATIONS: tuple[Relation, ...] = (
    Relation(
        "lives_in",
        tuple("Paris Rome London Berlin Madrid Tokyo Cairo Athens Vienna Dublin Lisbon Oslo".split()),
        ("{} lives in", "{} resides in", "The home of {} is"),
    ),
    Relation(
        "works_as",
        tuple("doctor lawyer teacher pilot chef painter farmer engineer singer writer".split()),
        ("{} works as", "{} is employed as", "The job of {} is"),
    ),
)


@dataclass(frozen=True)
class WorldSpec:
    """Everything the generated facts depend on (hashed into the cache path)."""

    n_subjects: int = 150
    seed: int = 0
    first_names: tuple[str, ...] = tuple(FIRST_NAMES)
    last_names: tuple[str, ...] = tuple(LAST_NAMES)
    relations: tuple[Relation, ...] = RELATIONS


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
    eval_every: int = 100  # stop early once every fact is recalled with confidence
    seed: int = 0


ARCH_SPECS: dict[str, TrainSpec] = {
    "gpt2": TrainSpec(),
    "llama": TrainSpec(arch="llama", width=128, mlp_width=384, steps=1500, lr=2e-3),
}


@dataclass
class ToyWorld:
    """Generated facts. ``facts[i]`` has subject, first, last, relation, object, templates."""

    facts: list[dict]
    train_templates: dict[str, tuple[str, ...]]
    objects: dict[str, tuple[str, ...]]
    spec: WorldSpec = field(default_factory=WorldSpec)

    @classmethod
    def generate(cls, spec: WorldSpec = WorldSpec()) -> ToyWorld:
        rng = random.Random(spec.seed)
        grid = [(f, s) for f in spec.first_names for s in spec.last_names]
        if spec.n_subjects > len(grid):
            raise ValueError(f"n_subjects={spec.n_subjects} exceeds the {len(grid)} possible names")
        names = rng.sample(grid, spec.n_subjects)
        facts = []
        for first, last in names:
            for rel in spec.relations:
                facts.append(
                    dict(
                        subject=f"{first} {last}", first=first, last=last, relation=rel.name,
                        object=rng.choice(rel.objects), templates=rel.templates,
                    )
                )
        return cls(
            facts=facts,
            train_templates={r.name: r.templates for r in spec.relations},
            objects={r.name: r.objects for r in spec.relations},
            spec=spec,
        )

    def sentences(self) -> list[str]:
        """Every fact in every phrasing, as ``"Anna Moreau lives in Paris ."``."""
        return [
            f"{t.format(f['subject'])} {f['object']} ."
            for f in self.facts
            for t in self.train_templates[f["relation"]]
        ]

    def prompts(self) -> tuple[list[str], list[str]]:
        """``(prompts, answers)`` for every fact and phrasing."""
        pairs = [
            (t.format(f["subject"]), f["object"])
            for f in self.facts
            for t in self.train_templates[f["relation"]]
        ]
        return [p for p, _ in pairs], [a for _, a in pairs]

    def corpus_text(self) -> str:
        """The training text, one sentence a line in a fixed shuffled order (a stats corpus)."""
        lines = self.sentences()
        random.Random(self.spec.seed + 1).shuffle(lines)
        return "\n".join(lines)

    def words(self) -> list[str]:
        out = ["."]
        for rel in self.spec.relations:
            for t in rel.templates:
                out += t.replace("{}", " ").split()
            out += rel.objects
        return out + list(self.spec.first_names) + list(self.spec.last_names)

    def requests(self, n: int, seed: int = 0, n_neighbors: int = 4) -> list[EditRequest]:
        """``n`` distinct facts to rewrite, each to another object of the same relation.

        The prompt is the relation's first phrasing, paraphrases the others. Neighbours are, as in
        CounterFact, other subjects whose true object is the same (so "P(true) > P(new)" is their
        success test), preferring ones that share a first or last name with the edited subject
        (the hardest test of specificity here).
        """
        if n > len(self.facts):
            raise ValueError(f"asked for {n} requests but the world has {len(self.facts)} facts")
        rng = random.Random(seed)
        out = []
        for idx in rng.sample(range(len(self.facts)), n):
            fact = self.facts[idx]
            templates = self.train_templates[fact["relation"]]
            new = rng.choice([o for o in self.objects[fact["relation"]] if o != fact["object"]])
            others = [
                g for g in self.facts
                if g["relation"] == fact["relation"] and g["object"] == fact["object"]
                and g["subject"] != fact["subject"]
            ]
            close = [g for g in others if g["first"] == fact["first"] or g["last"] == fact["last"]]
            rng.shuffle(close)
            rng.shuffle(others)
            chosen = (close + [g for g in others if g not in close])[:n_neighbors]
            out.append(
                EditRequest(
                    prompt=templates[0],
                    subject=fact["subject"],
                    target_new=new,
                    target_true=fact["object"],
                    paraphrases=tuple(t.format(fact["subject"]) for t in templates[1:]),
                    neighborhood=tuple(
                        rng.choice(templates).format(g["subject"]) for g in chosen
                    ),
                    case_id=idx,
                )
            )
        return out


# ---------------------------------------------------------------------------------------------
# Recall measurement


@torch.no_grad()
def _recall(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str], answers: list[str],
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy next-token hits ``(n,)`` bool and the answers' probabilities ``(n,)``."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    answer_ids = torch.tensor(
        [tok(" " + a, add_special_tokens=False)["input_ids"][0] for a in answers], device=device
    )  # (n,)
    was_training = model.training
    model.eval()
    hits, probs = [], []
    for start in range(0, len(prompts), batch_size):
        ids = [tok(p)["input_ids"] for p in prompts[start : start + batch_size]]
        # Right padding by hand: absolute positions stay those of an unpadded prompt.
        x = torch.full((len(ids), max(map(len, ids))), pad, dtype=torch.long)  # (b, L)
        mask = torch.zeros_like(x)
        for i, row in enumerate(ids):
            x[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        x, mask = x.to(device), mask.to(device)
        logits = model(input_ids=x, attention_mask=mask).logits  # (b, L, V)
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
    hits, _ = _recall(model, tok, list(prompts), list(answers))
    return hits.float().mean().item()


# ---------------------------------------------------------------------------------------------
# Training


def _model_config(spec: TrainSpec, tok: PreTrainedTokenizerBase):
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
    if spec.arch in ("llama", "mistral", "qwen2"):
        return AutoConfig.for_model(
            spec.arch, hidden_size=spec.width, intermediate_size=spec.mlp_width,
            num_hidden_layers=spec.n_layer, num_attention_heads=spec.heads,
            num_key_value_heads=spec.heads, head_dim=spec.width // spec.heads,
            max_position_embeddings=max(64, 2 * spec.seq_len), tie_word_embeddings=False,
            **common,
        )
    raise ValueError(f"no toy-world recipe for arch {spec.arch!r}; known: {', '.join(ARCH_SPECS)}")


class _Batches:
    """Rows of random fact sentences run together; weight 1 on object targets, less elsewhere."""

    def __init__(self, world: ToyWorld, tok: PreTrainedTokenizerBase, spec: TrainSpec) -> None:
        self.sentences = [tok(s, add_special_tokens=False)["input_ids"] for s in world.sentences()]
        # The tokenizer's own special prefix (<bos> for Llama-like), so rows start as prompts do.
        self.prefix = tok("", add_special_tokens=True)["input_ids"]
        self.spec = spec
        self.rng = random.Random(spec.seed)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = self.spec.seq_len + 1
        rows, flags = [], []
        for _ in range(self.spec.batch_size):
            ids, is_obj = list(self.prefix), [False] * len(self.prefix)
            while len(ids) < n:
                sent = self.rng.choice(self.sentences)
                ids += sent
                is_obj += [i == len(sent) - 2 for i in range(len(sent))]  # "... object ."
            rows.append(ids[:n])
            flags.append(is_obj[:n])
        tokens = torch.tensor(rows)  # (B, S + 1)
        obj = torch.tensor(flags)[:, 1:]  # (B, S): is the target at this position an object?
        weight = torch.where(obj, 1.0, self.spec.other_token_weight)  # (B, S)
        return tokens[:, :-1], tokens[:, 1:], weight


def _lr_factor(step: int, spec: TrainSpec) -> float:
    import math

    if step < spec.warmup:
        return (step + 1) / spec.warmup
    progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_toy_model(
    world: ToyWorld, spec: TrainSpec
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict]:
    """Train a fresh model on ``world``; returns it (eval mode), its tokenizer and a report."""
    tok = build_word_tokenizer(world.words(), add_bos=spec.arch != "gpt2")
    config = _model_config(spec, tok)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0}],
        lr=spec.lr, betas=(0.9, 0.98),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, spec))
    batches = _Batches(world, tok, spec)
    prompts, answers = world.prompts()
    start, step, acc, p_mean = time.perf_counter(), 0, 0.0, 0.0
    for step in range(1, spec.steps + 1):
        x, y, w = batches()
        logits = model(input_ids=x).logits  # (B, S, V)
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        loss = (nll * w.flatten()).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % spec.eval_every == 0 or step == spec.steps:
            hits, probs = _recall(model, tok, prompts, answers)
            acc, p_mean = hits.float().mean().item(), probs.mean().item()
            log.debug("step %d loss %.3f recall %.3f p %.3f", step, loss.item(), acc, p_mean)
            # Stop once every phrasing of every fact is recalled confidently: more steps only
            # sharpen probabilities that edits then have to overcome.
            if acc == 1.0 and p_mean > 0.95:
                break
    seconds = time.perf_counter() - start
    model.eval()
    report = dict(steps=step, seconds=round(seconds, 1), accuracy=acc, mean_probability=p_mean)
    log.info(
        "trained toy-world %s in %.1f s (%d steps): recall %.1f%% of %d prompts, mean p %.3f",
        spec.arch, seconds, step, 100 * acc, len(prompts), p_mean,
    )
    return model, tok, report


# ---------------------------------------------------------------------------------------------
# Cache


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("MASSEDIT_CACHE"):
        return Path(os.environ["MASSEDIT_CACHE"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("massedit"))


def _spec_hash(world: WorldSpec, train: TrainSpec) -> str:
    payload = json.dumps(
        {"version": TOYWORLD_VERSION, "world": asdict(world), "train": asdict(train)},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def toy_world_model(
    arch: str = "gpt2",
    *,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    spec: TrainSpec | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, ToyWorld]:
    """``(model, tokenizer, world)``: a model that has memorised the toy world, from the cache.

    The cache lives in ``<cache_dir>/toyworld/<arch>-<hash>``, where ``cache_dir`` defaults to
    ``$MASSEDIT_CACHE`` or the user cache directory of "massedit", and the hash covers the world
    and training specifications. A miss trains (about a minute for gpt2 on two CPU cores) and
    writes the model to a temporary folder renamed into place, so an interrupted run leaves no
    half-written cache and concurrent runs agree.
    """
    if spec is None:
        if arch not in ARCH_SPECS:
            raise ValueError(f"no toy-world recipe for {arch!r}; known: {', '.join(ARCH_SPECS)}")
        spec = ARCH_SPECS[arch]
    spec = TrainSpec(**{**asdict(spec), "seed": seed})
    world = ToyWorld.generate(WorldSpec(seed=seed))
    path = _cache_root(cache_dir) / "toyworld" / f"{arch}-{_spec_hash(world.spec, spec)}"
    if (path / "toyworld.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(path)
        log.info("loaded toy-world model from %s", path)
        return model, tok, world

    threads = torch.get_num_threads()
    torch.set_num_threads(_cpu_count())
    try:
        with torch.random.fork_rng(devices=[]):
            model, tok, report = train_toy_model(world, spec)
    finally:
        torch.set_num_threads(threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        meta = {"world": asdict(world.spec), "train": asdict(spec), "report": report}
        (tmp / "toyworld.json").write_text(json.dumps(meta, indent=2))  # written last: marks done
        os.rename(tmp, path)
    except OSError:
        if not (path / "toyworld.json").is_file():
            raise
        log.info("another process cached %s first; using its copy", path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return model, tok, world
