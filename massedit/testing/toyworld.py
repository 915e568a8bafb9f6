"""A toy world of generated facts and a small model that has memorised them (docs/design.md §10
item 2).

Subjects are two-token names ("Anna Moreau") drawn from a grid of first and last names so that
neither name alone determines a fact: the subject's LAST token must gather the first name through
attention, as in real models. Each relation has three phrasings; the model is trained on random
concatenations of fact sentences (so prompts also work after a context prefix) with a training-only
attention mask that makes the subject's last token the reliable route to the subject (see
``toytrain._Batches``). The model is cached with ``save_pretrained``; later calls load it in
seconds.

Where the facts live (causal trace: both subject tokens noised, one state restored at the subject's
last token; measured on the models of training seeds 0, 1 and 2):

- gpt2 (6 layers): MLP 0 resolves the name (restoring it alone brings back 0.45-1.0 of the
  answer's probability); restoring the block output at layers 0-2 brings back 0.34-1.0 of it on
  every fact of every model, at layer 3 only 0.0-0.3 on the facts of seed 2 (0.35-0.96 on the
  others'): by then the prompt's last token has read the subject. Rank-one edits (ROME, 80
  target steps) at layer 1 or 2 flip 4/4 facts on all three models.
- llama (6 layers): the prompt's last token reads the subject already at layers 1-2, so edits work
  at layers 0-1 (10/10, 19-20/20 paraphrases, 39-40/40 neighbours) and fail from layer 2 on
  (measured on an earlier model, before training was made bit-reproducible).
- olmo2 (6 layers, a norm after each MLP; tests/test_post_norm_toyworld.py), on a world with
  profile lines (``ARCH_WORLDS``: "Anna Adler Paris doctor ." 10x) and a 2,000-step schedule.
  Without them the facts were not recalled through the subject's MLPs: over 8 facts of seed 0,
  restoring the MLP output at the subject's last token brought back at most 0.04 of the
  answer's probability (llama: 0.77 at MLP 0), while the prompt's last token carried it from
  layer 3 on; edits at layer 0 flipped 0.6-0.9 of 10 facts across seeds 0-2, and some facts
  stayed out of MLP 0's reach at any step count (target NLL 2.6-7.7 after 200 steps). Profile
  lines make the subject's last token predict its attributes, so the facts are looked up there.
  With 1,000 steps they lifted seeds 0-1 to 0.9-1.0 but left seed 2 at 0.7-0.8; with 2,000
  steps (a slower decay) ROME, MEMIT and EMMET at layer 0 flip 0.9-1.0 of the facts and keep
  0.955-0.998 of the others on seeds 0-2. subject_mask_p 1.0 or MLP width 768 (with or
  without profile lines) did not help.

:data:`TOY_EDIT_LAYERS` records those layers for tests.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from massedit.engine.requests import EditRequest
from massedit.testing.model_cache import train_and_cache, training_fingerprint
from massedit.testing.toytrain import (
    ARCH_SPECS,
    TrainSpec,
    recall,
    toy_accuracy,
    train_toy_model,
)

__all__ = [
    "ARCH_SPECS", "ARCH_WORLDS", "TOY_EDIT_LAYERS", "WIDE_GPT2_EDIT_LAYERS", "WIDE_GPT2_SPEC",
    "Relation", "ToyWorld", "TrainSpec", "WorldSpec", "recall", "toy_accuracy", "toy_world_model",
    "train_toy_model",
]

log = logging.getLogger(__name__)

# The recipe's version: bump when generation or training changes, to invalidate old caches.
# 2: training is bit-reproducible (one thread, deterministic kernels; see model_cache).
TOYWORLD_VERSION = 2

# Layers where a rank-one edit at the subject's last token works on the default models (above).
# For olmo2 layer 0, where its profile lines make the subject look its facts up (above).
TOY_EDIT_LAYERS: dict[str, tuple[int, ...]] = {"gpt2": (1, 2), "llama": (0, 1), "olmo2": (0,)}

# The model batch edits are judged on. In the default gpt2 model (MLP width 256) the subjects'
# last-token keys stay alike after whitening by C (mean cosine 0.19 between subjects at layer 2),
# so any update that writes 10 facts leaks into the others: MEMIT and EMMET flip all 10 but
# change 50-70% of 600 other facts' answers, whatever the layers, λ or step size. With 1024 MLP
# units the cosine falls to 0.09, the facts are written at layer 0, and a batch of 10 keeps ≥ 90%
# of the other facts (measured in tests/test_toyworld_edits.py).
WIDE_GPT2_SPEC = TrainSpec(mlp_width=1024)
WIDE_GPT2_EDIT_LAYERS: tuple[int, ...] = (0,)

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
        tuple(
            "Paris Rome London Berlin Madrid Tokyo Cairo Athens Vienna Dublin Lisbon Oslo".split()
        ),
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
    # Extra training lines "Anna Adler Paris doctor ." (a subject, then its objects), repeated:
    # the subject's last token must predict its attributes, so the facts are looked up there,
    # as in real models. The post-norm toy needs them (module docstring); 0 elsewhere.
    profile_repeats: int = 0


# World options per architecture (the recipes of ARCH_SPECS train on these worlds).
ARCH_WORLDS: dict[str, dict] = {"olmo2": {"profile_repeats": 10}}


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
        grid = [(f, s) for f in spec.first_names for s in spec.last_names if f != s]
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
        lines = [
            f"{t.format(f['subject'])} {f['object']} ."
            for f in self.facts
            for t in self.train_templates[f["relation"]]
        ]
        objects: dict[str, list[str]] = {}
        for f in self.facts:
            objects.setdefault(f["subject"], []).append(f["object"])
        profiles = [f"{subject} {' '.join(objs)} ." for subject, objs in objects.items()]
        return lines + profiles * self.spec.profile_repeats

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
        """The world's vocabulary (each word once, in a fixed order)."""
        out = ["."]
        for rel in self.spec.relations:
            for t in rel.templates:
                out += t.replace("{}", " ").split()
            out += rel.objects
        out += [*self.spec.first_names, *self.spec.last_names]
        return list(dict.fromkeys(out))

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
        {"version": TOYWORLD_VERSION, "world": asdict(world), "train": asdict(train),
         "fingerprint": training_fingerprint()},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def toy_world_model(
    arch: str = "gpt2",
    *,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    spec: TrainSpec | None = None,
    train_seed: int | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, ToyWorld]:
    """``(model, tokenizer, world)``: a model that has memorised the toy world, from the cache.

    The cache lives in ``<cache_dir>/toyworld/<arch>-<hash>``, where ``cache_dir`` defaults to
    ``$MASSEDIT_CACHE`` or the user cache directory of "massedit", and the hash covers the world
    and training specifications and :func:`~massedit.testing.model_cache.training_fingerprint`.
    A miss trains (one to two minutes for gpt2 on one CPU thread: bit-reproducible, so the same
    model on every machine with the same torch and CPU instruction set) and writes the model to a
    temporary folder renamed into place, so an interrupted run leaves no half-written cache and
    concurrent runs agree. ``seed`` drives both the world and the training (it replaces
    ``spec.seed``) unless ``train_seed`` is given: then the world is that of ``seed`` and the
    model's initialisation and data order that of ``train_seed`` (an independently trained model
    of the same facts, as ``benchmarks/toy_thresholds.py`` uses to measure how test results
    spread); ``spec`` overrides the recipe of :data:`ARCH_SPECS`.
    """
    if spec is None:
        if arch not in ARCH_SPECS:
            raise ValueError(f"no toy-world recipe for {arch!r}; known: {', '.join(ARCH_SPECS)}")
        spec = ARCH_SPECS[arch]
    elif spec.arch != arch:
        raise ValueError(f"spec.arch={spec.arch!r} but arch={arch!r}; pass the same architecture")
    spec = TrainSpec(**{**asdict(spec), "seed": seed if train_seed is None else train_seed})
    world = ToyWorld.generate(WorldSpec(seed=seed, **ARCH_WORLDS.get(arch, {})))
    path = _cache_root(cache_dir) / "toyworld" / f"{arch}-{_spec_hash(world.spec, spec)}"
    if (path / "toyworld.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(path)
        log.info("loaded toy-world model from %s", path)
        return model, tok, world

    model, tok = train_and_cache(
        path, "toyworld.json", lambda: train_toy_model(world, spec),
        {"version": TOYWORLD_VERSION, "world": asdict(world.spec), "train": asdict(spec)})
    return model, tok, world
