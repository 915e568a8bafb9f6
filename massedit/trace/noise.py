"""Corruption of the subject's token embeddings with seeded Gaussian noise.

The noise scale is a multiple of the standard deviation of the subjects' token embeddings, as in
ROME (``collect_embedding_std``), measured at the output of the model's embedding module so that
architectures that scale their embeddings (Gemma) are treated alike. ``"3sd"`` (the paper's
setting) means three such deviations; a plain number is an absolute scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from massedit.models.adapters import get_adapter, get_module
from massedit.models.placement import execution_device


def parse_noise(spec: str | float) -> tuple[float, bool]:
    """``(value, relative)``: ``"3sd"`` -> ``(3.0, True)``; ``"0.1"`` -> ``(0.1, False)``."""
    if isinstance(spec, (int, float)):
        value, relative = float(spec), False
    else:
        text = spec.strip().lower()
        relative = text.endswith("sd")
        try:
            value = float(text[:-2] if relative else text)
        except ValueError:
            raise ValueError(
                f"noise {spec!r}: write a multiple of the embeddings' standard deviation "
                "('3sd') or an absolute scale ('0.1')"
            ) from None
    if not value > 0:
        raise ValueError(f"noise {spec!r}: the scale must be positive")
    return value, relative


@torch.no_grad()
def embedding_std(model, tok, subjects: Sequence[str], embed_name: str | None = None) -> float:
    """Standard deviation of the embedding-module outputs of the subjects' tokens (ROME)."""
    ids = sorted({i for s in subjects for i in tok(s, add_special_tokens=False)["input_ids"]})
    if not ids:
        raise ValueError("trace: the subjects have no tokens to measure the noise scale on")
    embed = get_module(model, embed_name or get_adapter(model).embed)
    device = execution_device(embed)  # not its weight's: on meta when offloaded (§12)
    vectors = embed(torch.tensor(ids, device=device))  # (n_ids, d)
    return float(vectors.float().std())


def noise_scale(
    model, tok, spec: str | float, subjects: Sequence[str], embed_name: str | None = None
) -> float:
    """The absolute noise scale that ``spec`` means for this model and these subjects."""
    value, relative = parse_noise(spec)
    return value * embedding_std(model, tok, subjects, embed_name) if relative else value


def draw_noise(samples: int, n_tokens: int, width: int, scale: float, seed: int) -> torch.Tensor:
    """(samples, n_tokens, width) float32 CPU noise, the same for every restoration of a trace."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((samples, n_tokens, width), generator=gen) * scale
