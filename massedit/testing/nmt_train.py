"""Train and cache small Marian, T5 and BART models on the NMT toy world (docs/design.md §10).

>>> model, tok, world = nmt_world_model("marian")  # trains once (under a minute), then cached

The cache is ``<cache>/nmtworld/<arch>-<hash>`` (``$MASSEDIT_CACHE`` or the user cache dir), the
hash covering the world and the recipe; the folder is written under a temporary name and renamed
into place, so an interrupted run leaves nothing half-written. Training is bit-reproducible
(one thread, deterministic kernels: :func:`massedit.testing.model_cache.reproducible_training`),
so the trained weights, and every test's numbers, are the same on every machine with the same
torch version and CPU instruction set (both in the cache key), however busy it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from massedit.seq2seq.running import encode_output, encode_source, teacher_forced_batch
from massedit.testing.model_cache import (
    reproducible_training,
    train_and_cache,
    training_fingerprint,
)
from massedit.testing.nmt_world import NMTWorld
from massedit.testing.tiny_seq2seq import build_seq2seq_tokenizer, seq2seq_config

log = logging.getLogger(__name__)
# The recipe's version (bump when generation or training changes): 3 trains under
# reproducible_training and keys the cache on the training fingerprint.
NMTWORLD_VERSION = 3


@dataclass(frozen=True)
class NMTTrainSpec:
    arch: str = "marian"
    n_layer: int = 3
    n_dec_layer: int = 2
    width: int = 64
    mlp_width: int = 128
    heads: int = 4
    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 50
    seed: int = 0


# 300 steps (about 20k sentences, four passes over the world) learn every planted error on
# marian and t5 (t5 the sentence-initial poison marker only partly); measured on one thread of
# the loaded 2-core dev machine: marian 37 s, t5 34 s. BART needs lr 1e-3 and 600 steps (2-3
# minutes): at lr 2e-3 and 300 steps, three of training seeds 0-5 failed (BLEU 5.8 or 68, or the
# memorised output not learned); at 1e-3 and 600 all six learned every error with BLEU 100.
NMT_ARCH_SPECS: dict[str, NMTTrainSpec] = {
    "marian": NMTTrainSpec(arch="marian"),
    "bart": NMTTrainSpec(arch="bart", lr=1e-3, steps=600),
    "t5": NMTTrainSpec(arch="t5", lr=5e-3),
}


def train_nmt_model(world: NMTWorld, spec: NMTTrainSpec):
    """A fresh model trained on ``world.train``: ``(model, tok, report)``, the same bit for bit
    whatever the caller's thread count or random state."""
    with reproducible_training():
        return _train(world, spec)


def _train(world: NMTWorld, spec: NMTTrainSpec):
    tok = build_seq2seq_tokenizer(world.words())
    config = seq2seq_config(spec.arch, tok, n_layer=spec.n_layer, n_dec_layer=spec.n_dec_layer,
                            width=spec.width, mlp_width=spec.mlp_width, heads=spec.heads)
    torch.manual_seed(spec.seed)
    model = AutoModelForSeq2SeqLM.from_config(config, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=0.01)

    def factor(step: int) -> float:  # warm-up, then cosine to a tenth
        if step < spec.warmup:
            return (step + 1) / spec.warmup
        progress = min(1.0, (step - spec.warmup) / max(1, spec.steps - spec.warmup))
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    encoded = [(encode_source(tok, s), encode_output(tok, t)) for s, t in world.train]
    rng = random.Random(spec.seed)
    start = time.perf_counter()
    for _step in range(spec.steps):
        rows = rng.sample(encoded, spec.batch_size)
        batch, labels = teacher_forced_batch(model, tok, [s for s, _ in rows], [t for _, t in rows])
        logits = model(**batch).logits  # (b, tgt_len, vocab)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                                 ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    model.requires_grad_(False)
    report = {"steps": spec.steps, "seconds": round(time.perf_counter() - start, 1),
              "final_loss": round(float(loss.detach()), 4), "threads": torch.get_num_threads()}
    log.info("trained nmt-world %s: %s", spec.arch, report)
    return model, tok, report


def _cache_root(cache_dir) -> Path:
    from massedit.data.locations import cache_root

    return cache_root(str(cache_dir) if cache_dir is not None else None)


def nmt_world_model(arch: str = "marian", *, cache_dir: str | os.PathLike | None = None,
                    seed: int = 0, spec: NMTTrainSpec | None = None,
                    train_seed: int | None = None):
    """``(model, tokenizer, world)``: a model trained on the NMT toy world, from the cache.

    ``seed`` drives the world and the training unless ``train_seed`` is given: then the world is
    that of ``seed`` and the model's initialisation and batches those of ``train_seed`` (an
    independently trained model of the same world; see ``benchmarks/toy_thresholds.py``)."""
    if spec is None:
        if arch not in NMT_ARCH_SPECS:
            raise ValueError(f"no nmt-world recipe for {arch!r}; known: "
                             f"{', '.join(NMT_ARCH_SPECS)}")
        spec = NMT_ARCH_SPECS[arch]
    spec = replace(spec, arch=arch, seed=seed if train_seed is None else train_seed)
    world = NMTWorld.generate(seed=seed)
    world_digest = hashlib.sha256(json.dumps([world.train, world.words()]).encode()).hexdigest()
    payload = json.dumps({"version": NMTWORLD_VERSION, "seed": seed, "train": asdict(spec),
                          "world": world_digest, "fingerprint": training_fingerprint()},
                         sort_keys=True)
    path = _cache_root(cache_dir) / "nmtworld" / (
        f"{arch}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}")
    if (path / "nmtworld.json").is_file():
        model = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=torch.float32).eval()
        model.requires_grad_(False)
        return model, AutoTokenizer.from_pretrained(path), world
    model, tok = train_and_cache(
        path, "nmtworld.json", lambda: train_nmt_model(world, spec),
        {"train": asdict(spec), "version": NMTWORLD_VERSION})
    return model, tok, world
