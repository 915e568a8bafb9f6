"""Edits through a norm or scale after the MLP, with and without the stream-to-site map
(docs/design.md §5, "Edits through a norm after the MLP"), on tiny random models.

For each model type and method, the optimised targets ``z`` are written with the map (the
library's behaviour) and with the stream residual written into the site's output unchanged (what
massedit did before). Reported per run: how far block L's output ends from its target,
``‖h_after − z‖ / ‖z − h‖`` (0: reached), and each layer's ``‖ΔW‖ / ‖W‖``. Tiny random models
know no facts and their MLP outputs are small against the norms' ε, so these figures show the
mechanism, not the quality of edits on a trained model.

    .venv/bin/python benchmarks/post_norm_edits.py [--types gemma2 olmo2 granite]
        [--methods rome emmet memit] [--steps 10]
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import torch

import massedit.editing.editor as editor_module
from massedit import Editor, EditRequest, StatsSpec
from massedit.engine.keys import Read, subject_states
from massedit.models.adapters import get_adapter
from massedit.testing import TINY_WORDS, tiny_model

REQUESTS = [
    EditRequest("The {} is located in", "Eiffel Tower", "Rome", "Paris"),
    EditRequest("{} plays", "Michael Jordan", "football", "basketball"),
    EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English", "French"),
]
LAYERS = {"rome": (2,), "emmet": (2,), "memit": (0, 1, 2)}


def _corpus(folder: Path) -> Path:
    rng, words = random.Random(0), list(TINY_WORDS)
    path = folder / "corpus.txt"
    path.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(8, 20)))
                                + " ." for _ in range(600)))
    return path


def run(model_type: str, method: str, mapped: bool, folder: Path, steps: int) -> dict:
    real = editor_module.site_residual
    if not mapped:  # the old behaviour: the stream residual written as the site's output
        editor_module.site_residual = lambda *args: args[5]
    try:
        model, tok = tiny_model(model_type)
        layers = LAYERS[method]
        reqs = REQUESTS[:1] if method == "rome" else REQUESTS
        editor = Editor(model, tok, method=method, layers=layers, context_lengths=(),
                        keep_problems=True, progress=False, v_num_grad_steps=steps,
                        stats=StatsSpec(corpus=str(_corpus(folder)), cache_dir=str(folder)),
                        stats_tokens_per_width=30, max_update_ratio=1e9)
        editor.edit(reqs)
    finally:
        editor_module.site_residual = real
    block = get_adapter(model).block_name(layers[-1])
    (after,) = subject_states(model, tok, reqs, [""], [Read(block, False, False)], stop_at=block)
    z = torch.stack([t.z for t in editor.target_cache.values()])  # (n, d)
    h = torch.stack([t.h for t in editor.target_cache.values()])
    return {"miss": float((after - z).norm() / (z - h).norm()),
            "updates": [float(d.matrix().norm() / p.weight.float().norm())
                        for p, d in editor.solved]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", nargs="+", default=["gemma2", "olmo2", "granite"])
    parser.add_argument("--methods", nargs="+", default=["rome", "emmet", "memit"])
    parser.add_argument("--steps", type=int, default=10, help="target optimisation steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| type | method | map | ‖h_after − z‖ / ‖z − h‖ | ‖ΔW‖ / ‖W‖ per layer |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model_type in args.types:
            for method in args.methods:
                for mapped in (True, False):
                    out = run(model_type, method, mapped, Path(tmp), args.steps)
                    updates = ", ".join(f"{u:.3g}" for u in out["updates"])
                    print(f"| {model_type} | {method} | {'on' if mapped else 'off'} "
                          f"| {out['miss']:.3f} | {updates} |", flush=True)


if __name__ == "__main__":
    main()
