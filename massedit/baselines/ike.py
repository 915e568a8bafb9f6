"""IKE: in-context knowledge editing (Zheng et al., 2023), a baseline that changes no weight.

The "edit" is a memory of the new facts. Each prompt the edited model is asked is preceded by
a context chosen for it: ``k`` demonstrations, then the new fact most similar to the prompt,
in IKE's format::

    New Fact: <fact> <new target>\\nPrompt: <a prompt> <its answer>\\n\\n     (k demonstrations)
    New Fact: <the most similar fact> <new target>\\nPrompt: <the prompt asked>

Similarity is the cosine of the model's own sentence embeddings: the mean over a text's tokens of
one block's output, block ``layers[-1]`` (a sentence-embedding model is not available offline; the
model's own states need nothing else; scikit-learn's TF-IDF was the other choice). Facts are
embedded by their prompt without the target, the form a query has. Demonstrations are the next
``ike_demonstrations`` most similar facts of the memory (least similar first, so the closest
stands next to the query), each shown with one of IKE's three kinds of prompt in turn: its own
prompt with the new target (copy), its first paraphrase with the new target (update), its first
neighbourhood prompt with the old target (retain); a fact without a paraphrase or a neighbour is
shown as a copy.

Differences from the paper, on purpose: the paper draws its 32 demonstrations from CounterFact's
training records by a sentence-transformer's similarity to the new fact; here they are the other
edited facts (the memory is the only fact store an edit is given), chosen per prompt asked.

How it appears (docs/design.md §4): a whole editor whose patch holds no weight change; the
memory is in the patch's metadata (``editor_info[i]["in_context"]``, one entry per batch).
:func:`in_context_memory` reads it back; evaluation (``massedit eval --patch``, ``compare``)
prepends each evaluation prompt's context (``massedit.evals.in_context``). Writing the edit into
weights is refused by :func:`refuse_in_context_patch` ("IKE edits live in the prompt; there are
no weights to apply").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from massedit.contracts import EditHparams, EditRequest, WholeEditContext
from massedit.engine.forward import forward_kwargs, model_device
from massedit.engine.tokens import pad_batch, pad_id_of

logger = logging.getLogger(__name__)

MEMORY_KEY = "in_context"  # the key of the memory in each batch's editor_info
NO_WEIGHTS = "IKE edits live in the prompt; there are no weights to apply"


@dataclass(frozen=True)
class IkeHparams(EditHparams):
    """IKE's settings. ``layers``: the last of them is the block whose output, averaged over a
    text's tokens, is the sentence embedding that chooses each prompt's fact and
    demonstrations (nothing is written at any layer)."""

    ike_demonstrations: int = 4  # k: demonstrations before the new fact (0: the fact alone)
    embed_batch: int = 32  # texts per forward pass when embedding
    context_lengths: tuple[tuple[int, int], ...] = ()  # no prefixes: nothing is optimised

    def __post_init__(self) -> None:
        if self.ike_demonstrations < 0 or self.embed_batch < 1:
            raise ValueError("ike needs ike_demonstrations >= 0 and embed_batch >= 1")


@dataclass(frozen=True)
class MemoryFact:
    """One new fact of the memory and the prompts its demonstrations may show."""

    prompt: str  # the request's prompt with the subject filled in, no target
    target_new: str
    target_true: str | None = None
    paraphrase: str | None = None
    neighborhood: str | None = None

    @classmethod
    def of(cls, request: EditRequest) -> MemoryFact:
        return cls(request.text, request.target_new, request.target_true,
                   (request.paraphrases or (None,))[0], (request.neighborhood or (None,))[0])

    @property
    def statement(self) -> str:
        return f"{self.prompt} {self.target_new}"

    def demonstration(self, kind: int) -> str:
        """IKE's demonstration of this fact: kind 0 copy, 1 update, 2 retain (falling back to a
        copy when the fact has no such prompt)."""
        if kind == 1 and self.paraphrase:
            shown = f"{self.paraphrase} {self.target_new}"
        elif kind == 2 and self.neighborhood and self.target_true:
            shown = f"{self.neighborhood} {self.target_true}"
        else:
            shown = self.statement
        return f"New Fact: {self.statement}\nPrompt: {shown}\n\n"


@dataclass(frozen=True)
class InContextMemory:
    """The facts an IKE edit wrote into the prompt, and how contexts are chosen from them."""

    facts: tuple[MemoryFact, ...]
    layer: int
    demonstrations: int = IkeHparams.ike_demonstrations
    embed_batch: int = IkeHparams.embed_batch

    def to_dict(self) -> dict[str, Any]:
        return {"facts": [asdict(f) for f in self.facts], "layer": self.layer,
                "demonstrations": self.demonstrations, "embed_batch": self.embed_batch}

    @classmethod
    def from_dicts(cls, entries: Sequence[Mapping[str, Any]]) -> InContextMemory:
        """One memory from the entries of several batches (their facts in order)."""
        first = entries[0]
        facts = tuple(MemoryFact(**f) for e in entries for f in e["facts"])
        return cls(facts, int(first["layer"]), int(first["demonstrations"]),
                   int(first.get("embed_batch", IkeHparams.embed_batch)))

    def contexts(self, model, tok, prompts: Sequence[str]) -> list[str]:
        """The context to put before each prompt (the prompt follows it directly)."""
        if not prompts:
            return []
        facts = embed_texts(model, tok, [f.prompt for f in self.facts], self.layer,
                            self.embed_batch)  # (n_facts, d)
        queries = embed_texts(model, tok, list(prompts), self.layer, self.embed_batch)  # (q, d)
        similarity = queries @ facts.T  # (q, n_facts) cosines: rows are unit vectors
        order = similarity.argsort(dim=1, descending=True, stable=True)  # (q, n_facts)
        out = []
        for ranked in order.tolist():
            nearest, demos = ranked[0], ranked[1 : 1 + self.demonstrations]
            shown = [self.facts[j].demonstration(i % 3) for i, j in enumerate(demos)]
            out.append("".join(reversed(shown))  # the most similar next to the query
                       + f"New Fact: {self.facts[nearest].statement}\nPrompt: ")
        return out

    def prepend(self, model, tok, prompts: Sequence[str]) -> list[str]:
        """Each prompt with its context before it."""
        return [c + p for c, p in zip(self.contexts(model, tok, prompts), prompts, strict=True)]


@torch.no_grad()
def embed_texts(model, tok, texts: Sequence[str], layer: int, batch: int) -> torch.Tensor:
    """(n, d) fp32 unit vectors: the mean over each text's tokens of block ``layer``'s output
    (hidden state ``layer + 1``; padding excluded and positions corrected, so a text's vector
    does not depend on its batch)."""
    takes_positions, _ = forward_kwargs(model)
    device, pad = model_device(model), pad_id_of(tok)
    out = []
    was_training = model.training
    model.eval()
    try:
        for lo in range(0, len(texts), batch):
            ids = [tok(t)["input_ids"] for t in texts[lo : lo + batch]]
            input_ids, mask, _ = pad_batch(ids, pad, "right", device)  # (b, len) each
            kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask,
                                      "output_hidden_states": True, "use_cache": False}
            if takes_positions:
                kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)  # (b, len)
            hidden = model(**kwargs).hidden_states[layer + 1].float()  # (b, len, d)
            m = mask[..., None].to(hidden.dtype)  # (b, len, 1)
            mean = (hidden * m).sum(1) / m.sum(1)  # (b, d)
            out.append(torch.nn.functional.normalize(mean, dim=-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def in_context_edit(model, tok, requests: Sequence[EditRequest], hparams: EditHparams,
                    context: WholeEditContext) -> None:
    """IKE's ``WholeEditor``: records the batch's facts as in-context memory, writes nothing."""
    k = int(getattr(hparams, "ike_demonstrations", IkeHparams.ike_demonstrations))
    batch = int(getattr(hparams, "embed_batch", IkeHparams.embed_batch))
    memory = InContextMemory(tuple(MemoryFact.of(r) for r in requests), context.layers[-1], k,
                             batch)
    context.info[MEMORY_KEY] = memory.to_dict()
    logger.info("IKE: %d fact(s) kept in context (no weight changed)", len(requests))


def in_context_memory(patch: Any) -> InContextMemory | None:
    """The memory of an IKE patch (every batch's facts), or None for a patch of weights."""
    entries = [e[MEMORY_KEY] for e in patch.metadata.get("editor_info", [])
               if isinstance(e, Mapping) and MEMORY_KEY in e]
    return InContextMemory.from_dicts(entries) if entries else None


def is_in_context_method(spec: Any) -> bool:
    """Whether a ``MethodSpec`` edits in context (IKE): ``massedit edit --save-model`` can refuse
    it before any work, as :func:`refuse_in_context_patch` refuses its patch."""
    return getattr(spec, "editor", None) is in_context_edit


def refuse_in_context_patch(patch: Any) -> None:
    """Raise ``ValueError`` when ``patch`` is an IKE patch: writing it into weights
    (``massedit apply``, ``--save-model``) would silently produce the unedited model."""
    if in_context_memory(patch) is not None:
        method = patch.metadata.get("method", "ike")
        raise ValueError(f"{NO_WEIGHTS} (patch of method {method!r}); evaluate it with "
                         "`massedit eval --patch`, which puts its facts before each prompt")
