"""Choosing edit layers from causal traces, for a model without a preset (docs/design.md §8).

ROME edits the MLP where restoring the MLP output at the subject's last token brings back the
most of the answer's probability; MEMIT spreads an edit over a run of layers around that peak.
:func:`suggest_layers` restores only that one state per layer (``depth`` restorations a fact, a
few forward passes), averages the indirect effect over facts the model predicts, and picks:

- ``rome_layer``: the layer with the largest mean effect;
- ``memit_layers``: the ``n_spread`` consecutive layers with the largest summed effect.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from massedit.engine.hparams import EditHparams
from massedit.trace.fact import trace_fact, traced_stack
from massedit.trace.result import FactTrace

logger = logging.getLogger(__name__)

# The keys of a preset file (massedit/presets/<method>/<model>.yaml), in their usual order.
PRESET_KEYS = (
    "layers", "v_lr", "v_num_grad_steps", "kl_factor", "v_weight_decay", "clamp_norm_factor",
    "mom2_lambda", "mu", "context_lengths", "context_source", "stats_tokens_per_width",
)


@dataclass(frozen=True)
class LayerSuggestion:
    effects: tuple[float, ...]  # (n_layers,) mean indirect effect of restoring the MLP there
    window: int  # MLP layers restored together around each layer
    n_facts: int
    rome_layer: int
    memit_layers: tuple[int, ...]

    def preset_yaml(self, method: str, model_label: str = "this model") -> str:
        """A preset file for ``method`` (``rome``/``memit``/``emmet``) with the suggested layers
        and the default values of the other hyper-parameters."""
        layers = (self.rome_layer,) if method == "rome" else self.memit_layers
        values = EditHparams(layers=layers).to_dict()
        lines = [
            f"# {method}, {model_label}",
            f"# layers from `massedit trace --suggest` over {self.n_facts} facts (MLP restored at",
            f"# the subject's last token, window {self.window}); the other values are defaults:",
            "# sweep mom2_lambda for your model (benchmarks/sweep_layers.py).",
        ]
        for key in PRESET_KEYS:
            value = values[key]
            lines.append(f"{key}: {json.dumps(value)}")  # JSON lists and numbers are YAML
        return "\n".join(lines) + "\n"


def default_window(depth: int) -> int:
    """About a fifth of the model (ROME's 10 of GPT-2 XL's 48 layers); 1 for shallow models."""
    return max(1, round(depth / 5))


def best_run(effects: Sequence[float], length: int) -> tuple[int, ...]:
    """The ``length`` consecutive layers with the largest summed effect (all when fewer)."""
    depth = len(effects)
    length = max(1, min(length, depth))
    sums = [sum(effects[s : s + length]) for s in range(depth - length + 1)]
    start = max(range(len(sums)), key=sums.__getitem__)
    return tuple(range(start, start + length))


def suggest_from_traces(traces: Sequence[FactTrace], n_spread: int = 5) -> LayerSuggestion:
    """Pick layers from traces that contain kind ``mlp`` at the subject's last token."""
    if not traces:
        raise ValueError("suggest_layers: no facts to trace (is any fact predicted by the model?)")
    rows = []
    for trace in traces:
        k = trace.kinds.get("mlp")
        if k is None or trace.subject_range[1] - 1 not in k.positions:
            raise ValueError("suggest_layers needs MLP traces at the subject's last token")
        row = k.positions.index(trace.subject_range[1] - 1)
        rows.append(k.scores[row] - trace.corrupted_prob)  # (layers,)
    effects = torch.stack(rows).mean(0)  # (layers,)
    values = tuple(float(e) for e in effects)
    window = traces[0].kinds["mlp"].window
    return LayerSuggestion(
        effects=values, window=window, n_facts=len(traces),
        rome_layer=int(effects.argmax()), memit_layers=best_run(values, n_spread),
    )


def _fact_fields(fact) -> tuple[str, str, str | None]:
    if isinstance(fact, Mapping):
        target = fact.get("attribute", fact.get("target"))
        return fact["prompt"], fact["subject"], target
    if isinstance(fact, (tuple, list)) and len(fact) in (2, 3):
        return fact[0], fact[1], fact[2] if len(fact) == 3 else None
    raise ValueError(f"suggest_layers: a fact is a mapping or (prompt, subject[, target]); "
                     f"got {fact!r}")


def suggest_layers(
    model,
    tok,
    facts: Sequence,
    *,
    n_spread: int = 5,
    window: int | None = None,
    noise: str | float = "3sd",
    samples: int = 10,
    seed: int = 0,
    batch_size: int = 32,
) -> LayerSuggestion:
    """Layers to edit, from MLP restorations at the subject's last token averaged over ``facts``.

    ``facts``: mappings with ``prompt``, ``subject`` and optionally ``attribute``/``target`` (the
    answer; default the model's greedy token), or ``(prompt, subject[, target])`` tuples. Pass
    facts the model gets right (:func:`massedit.trace.known.predicted_facts`). ``window``:
    default :func:`default_window` of the model's depth. The noise scale is measured on all the
    facts' subjects together (ROME).
    """
    fields = [_fact_fields(f) for f in facts]
    if window is None:
        window = default_window(traced_stack(model).adapter.depth(model.config))
    subjects = [s for _, s, _ in fields]
    traces = [
        trace_fact(
            model, tok, prompt, subject, target=target, kinds=("mlp",), window=window,
            noise=noise, noise_subjects=subjects, samples=samples, seed=seed,
            batch_size=batch_size, positions="subject_last",
        )
        for prompt, subject, target in fields
    ]
    return suggest_from_traces(traces, n_spread)
