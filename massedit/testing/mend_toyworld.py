"""MEND on the conformance kit's toy world: training records written from the toy world's own
facts (MEND's network must be trained on edits in the model's language; CounterFact's text is
not in the toy vocabulary), leaving out every subject the kit edits or measures.

>>> path = write_training_records(world, "mend-toy.json")      # doctest: +SKIP
>>> check_method("mend", overrides={**MEND_TOY, "mend_train_data": str(path)})  # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from massedit.testing.conformance_edits import N_TOY_EDITS, N_UNRELATED
from massedit.testing.toyworld import ToyWorld

# MEND's toy-world setting, as a preset holds one for a real model: the last three of the toy
# model's six layers (the paper's choice), a network of the toy model's scale, and as many
# training edits as the world has facts left for it (about 180, seen twice).
MEND_TOY: dict[str, Any] = dict(
    layers=(3, 4, 5), mend_rank=64, mend_train_steps=360, mend_lr=1e-3, mend_lr_lr=1e-3,
    mend_heldout=0)


def kit_subjects(world: ToyWorld, n_edits: int = N_TOY_EDITS, seed: int = 1) -> set[str]:
    """Subjects the kit's toy-world check edits (``world.requests(n_edits, seed)``) or reads
    for locality (the first :data:`N_UNRELATED` other facts), as ``toy_world_edit`` picks them."""
    edited = {r.subject for r in world.requests(n_edits, seed=seed)}
    others = [f for f in world.facts if f["subject"] not in edited][:N_UNRELATED]
    return edited | {f["subject"] for f in others}


def write_training_records(world: ToyWorld, path: str | Path, seed: int = 0) -> Path:
    """The world's other facts as MEND training edits in EasyEdit's form (``prompt``,
    ``subject``, ``target_new`` another object of the relation, ``rephrase_prompt`` another
    phrasing, ``locality_prompt`` another training fact's prompt), written to ``path``."""
    rng = random.Random(seed)
    skip = kit_subjects(world)
    facts = [f for f in world.facts if f["subject"] not in skip]
    records = []
    for i, fact in enumerate(facts):
        templates = fact["templates"]
        other = facts[(i + 1 + rng.randrange(len(facts) - 1)) % len(facts)]
        records.append({
            "case_id": f"toy-{i}", "subject": fact["subject"],
            "prompt": templates[0].format(fact["subject"]),
            "target_new": rng.choice([o for o in world.objects[fact["relation"]]
                                      if o != fact["object"]]),
            "rephrase_prompt": rng.choice(templates[1:]).format(fact["subject"]),
            "locality_prompt": other["templates"][0].format(other["subject"]),
        })
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1))
    return path
