"""What a trace produces, and its table files (JSON with everything, CSV one row per state)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from massedit.jobs.runs import write_json_atomic, write_text_atomic

KINDS: tuple[str, ...] = ("hidden", "mlp", "attn")
KIND_TITLES = {"hidden": "hidden state", "mlp": "MLP output", "attn": "attention output"}


@dataclass
class KindTrace:
    """Restoration effects of one kind of state for one fact."""

    kind: str  # hidden (block output), mlp or attn
    window: int  # layers restored together, centred on each layer (1 for hidden)
    positions: tuple[int, ...]  # token positions that were restored (rows of ``scores``)
    scores: torch.Tensor  # (len(positions), n_layers) P(answer) after restoring (token, layer)


@dataclass
class FactTrace:
    """A causal trace of one fact: clean and corrupted probabilities and every restoration."""

    prompt: str
    subject: str
    answer: str
    answer_ids: tuple[int, ...]
    tokens: tuple[str, ...]  # (T,) decoded prompt tokens
    subject_range: tuple[int, int]  # [first, last + 1) token positions of the subject
    clean_prob: float  # P(answer) on the clean prompt
    corrupted_prob: float  # P(answer) with the subject noised and nothing restored
    answer_predicted: bool  # the clean model's greedy tokens are the answer
    predicted: str  # what the clean model predicts instead (its greedy tokens)
    noise_scale: float
    samples: int
    seed: int
    kinds: dict[str, KindTrace] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return next(iter(self.kinds.values())).scores.shape[1]

    def token_labels(self) -> list[str]:
        """Decoded tokens, subject tokens marked with ``*`` (as ROME's figure 1)."""
        lo, hi = self.subject_range
        return [repr(t)[1:-1] + ("*" if lo <= i < hi else "") for i, t in enumerate(self.tokens)]

    def to_dict(self) -> dict[str, Any]:
        head = {k: v for k, v in self.__dict__.items() if k != "kinds"}
        head["answer_ids"] = list(self.answer_ids)
        head["tokens"] = list(self.tokens)
        head["subject_range"] = list(self.subject_range)
        head["kinds"] = {
            name: {"window": k.window, "positions": list(k.positions), "scores": k.scores.tolist()}
            for name, k in self.kinds.items()
        }
        return head

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FactTrace:
        head = {k: v for k, v in data.items() if k != "kinds"}
        for key in ("answer_ids", "tokens", "subject_range"):
            head[key] = tuple(head[key])
        kinds = {
            name: KindTrace(name, k["window"], tuple(k["positions"]), torch.tensor(k["scores"]))
            for name, k in data["kinds"].items()
        }
        return cls(**head, kinds=kinds)

    def csv_rows(self) -> list[dict[str, Any]]:
        rows = []
        lo, hi = self.subject_range
        for name, k in self.kinds.items():
            for r, pos in enumerate(k.positions):
                for layer in range(k.scores.shape[1]):
                    p = float(k.scores[r, layer])
                    rows.append({
                        "kind": name, "window": k.window, "layer": layer, "position": pos,
                        "token": self.tokens[pos], "is_subject": lo <= pos < hi, "prob": p,
                        "indirect_effect": p - self.corrupted_prob,
                    })
        return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def save_trace(trace: FactTrace, out_dir: str | Path, stem: str = "trace") -> list[Path]:
    """Write ``<stem>.json`` (everything) and ``<stem>.csv`` (one row per restored state)."""
    out_dir = Path(out_dir)
    return [
        write_json_atomic(out_dir / f"{stem}.json", trace.to_dict()),
        write_text_atomic(out_dir / f"{stem}.csv", to_csv(trace.csv_rows())),
    ]
