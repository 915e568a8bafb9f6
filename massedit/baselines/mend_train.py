"""Training MEND's hypernetwork, and keeping it in the cache (docs/design.md §4, §12).

**Data**: records in EasyEdit's flat CounterFact form (``prompt``, ``subject``, ``target_new``,
``rephrase_prompt``, ``locality_prompt``), by default the shared training file
(``counterfact_easyedit``, 10,000 records). Records whose ``case_id`` or subject is among the
first ``mend_heldout`` records of the ``counterfact`` data set evaluation reads (the dev records
studies use: the mirror's 216, or the first 2,000 of the full file) are dropped: the training
file holds them all.

**Step** (MEND's Algorithm 1, one edit per step by default as the paper's ``edit_bs = 1``): one
pass on the unedited weights over the edit rows, their rephrasings and the locality prompts
gives the gradient's factors of the edit prompt's NLL and the unedited logits; the network maps
them to ``ΔW`` per site; a pass with ``W + ΔW`` gives ``c_edit · L_edit + c_loc · L_loc``, with
``L_edit`` the NLL of the new target after the edit prompt and its rephrasing, and ``L_loc`` the
KL(unedited ‖ edited) over the locality prompts' tokens; Adam on the network (``mend_lr``) and on
the per-site steps η (``mend_lr_lr``), gradients clipped. The model's weights never change
(``torch.func.functional_call``).

**Cache**: ``cache_root()/mend/<model identity>/<key>.safetensors`` with ``key`` the sha256 of
everything the trained network depends on (:func:`training_settings`); the settings are kept in
the file's metadata and checked on load (another or an unreadable file is reported and trained
again); written atomically by one process while others wait (``massedit.atomic``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from massedit.atomic import entry_lock, write_safetensors_atomic
from massedit.baselines.mend_net import GradientTransform
from massedit.baselines.mend_passes import (
    edit_rows_mask,
    edited_logits,
    gradient_factors,
    locality_kl,
    target_nll,
    token_rows,
)
from massedit.baselines.weights import weight_with_delta
from massedit.data.datasets import DataUnavailable, dataset_file
from massedit.data.download import sha256_file
from massedit.data.locations import cache_root
from massedit.engine.forward import model_device
from massedit.stats.cache import model_identity

logger = logging.getLogger(__name__)

FORMAT = 1  # bump when the network or its training changes meaning


@dataclass(frozen=True)
class TrainingRecord:
    """One training edit: the prompt (subject written in), the new target, and the prompts
    its loss reads besides (a rephrasing; an unrelated one for locality), each optional."""

    prompt: str
    target_new: str
    rephrase: str | None = None
    locality: str | None = None
    subject: str | None = None


def records_file(source: str) -> Path:
    """A named data set (:mod:`massedit.data.datasets`) or a JSON file's path."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    try:
        return dataset_file(source)
    except ValueError:  # not a named data set either
        raise FileNotFoundError(f"MEND's training data {source!r} is neither a file nor a "
                                "named data set") from None


def heldout_keys(n: int) -> tuple[set[str], set[str]]:
    """Case ids and subjects of the first ``n`` records of the ``counterfact`` data set
    (evaluation's), which training must not see; empty, with a warning, when it is absent."""
    if n <= 0:
        return set(), set()
    try:
        records = json.loads(dataset_file("counterfact", allow_download=False).read_text())[:n]
    except DataUnavailable as err:
        logger.warning("MEND: no CounterFact evaluation records to hold out (%s)", err)
        return set(), set()
    return ({str(r["case_id"]) for r in records},
            {r["requested_rewrite"]["subject"] for r in records})


def training_records(source: str, limit: int, heldout: int) -> list[TrainingRecord]:
    """Up to ``limit`` usable records of ``source`` in file order, held-out ones dropped."""
    ids, subjects = heldout_keys(heldout)
    out, dropped = [], 0
    for r in json.loads(records_file(source).read_text(encoding="utf-8")):
        if str(r.get("case_id")) in ids or r.get("subject") in subjects:
            dropped += 1
            continue
        if not str(r.get("prompt", "")).strip() or not str(r.get("target_new", "")).strip():
            continue
        out.append(TrainingRecord(r["prompt"], r["target_new"].strip(),
                                  r.get("rephrase_prompt") or None,
                                  r.get("locality_prompt") or None, r.get("subject")))
        if len(out) == limit:
            break
    if not out:
        raise ValueError(f"MEND: no usable training records in {source!r}")
    logger.info("MEND: %d training records from %s (%d held-out dropped)", len(out), source,
                dropped)
    return out


def training_settings(model, tok, hp, sites: Sequence[str], shape: tuple[int, int]) -> dict:
    """Everything the trained network depends on (its cache key)."""
    source = str(hp.mend_train_data)
    data: dict[str, Any] = {"source": source, "records": hp.mend_train_records,
                            "heldout": hp.mend_heldout}
    if Path(source).expanduser().is_file():  # a file by its content; a named data set by name,
        # so a cached network serves without the training data at hand
        data.update(source=Path(source).name, sha256=sha256_file(Path(source).expanduser()))
    return {
        "format": FORMAT, "model": model_identity(model), "vocab": len(tok),
        "sites": list(sites), "shape": list(shape), "data": data,
        **{k: getattr(hp, k) for k in (
            "mend_rank", "mend_hidden", "mend_edit_lr", "mend_lr", "mend_lr_lr", "mend_c_edit",
            "mend_c_loc", "mend_train_steps", "mend_train_batch", "mend_grad_clip", "seed")},
    }


def cache_path(settings: dict) -> Path:
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
    model = re.sub(r"[^A-Za-z0-9._-]+", "_", settings["model"])
    return cache_root() / "mend" / model / f"{key}.safetensors"


def new_network(settings: dict) -> GradientTransform:
    """The untrained network for ``settings`` (its random part drawn from ``seed``)."""
    d_out, d_in = settings["shape"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings["seed"])
        return GradientTransform(d_in, d_out, len(settings["sites"]), settings["mend_rank"],
                                 settings["mend_hidden"], settings["mend_edit_lr"])


def load_network(path: Path, settings: dict) -> GradientTransform | None:
    """The cached network, or None (reported) when the file is missing, another or unreadable."""
    if not path.is_file():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            stored = json.loads((f.metadata() or {}).get("settings", "null"))
        if stored != settings:
            logger.warning("MEND: %s was trained with other settings; training again", path)
            return None
        net = new_network(settings)
        net.load_state_dict(load_file(str(path)), strict=True)
    except Exception as err:  # noqa: BLE001 - any unreadable cache entry is recomputed
        logger.warning("MEND: cannot read %s (%s); training again", path, err)
        return None
    return net.eval()


def hypernetwork(model, tok, hp, sites: Sequence[str], weights: dict[str, torch.Tensor],
                 layout: str, progress: bool = True) -> tuple[GradientTransform, Path]:
    """The trained network for these sites and settings: from the cache, else trained on
    ``weights`` (site -> current weight, Linear layout) and cached. Returns it and its file."""
    shape = tuple(next(iter(weights.values())).shape)
    if any(tuple(w.shape) != shape for w in weights.values()):
        raise ValueError("MEND's edit sites must share one shape (one hypernetwork serves them)")
    settings = training_settings(model, tok, hp, sites, shape)
    path = cache_path(settings)
    net = load_network(path, settings)
    if net is None:
        with entry_lock(path, what=f"MEND training for {settings['model']}"):
            net = load_network(path, settings)
            if net is None:
                net, report = train_network(model, tok, hp, sites, weights, layout, settings,
                                            progress)
                write_safetensors_atomic(path, net.state_dict(), metadata={
                    "settings": json.dumps(settings, sort_keys=True),
                    "training": json.dumps(report)})
                logger.info("MEND: hypernetwork saved to %s", path)
    return net.to(model_device(model)).eval(), path  # a cached one is read onto the CPU


def training_report(path: Path) -> dict[str, Any]:
    """What the cached file's training measured (time, losses)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("training", "{}"))


def train_network(model, tok, hp, sites: Sequence[str], weights: dict[str, torch.Tensor],
                  layout: str, settings: dict, progress: bool = True
                  ) -> tuple[GradientTransform, dict[str, Any]]:
    """Train a new network (module docstring); returns it and a report of time and losses."""
    from tqdm.auto import tqdm

    records = training_records(hp.mend_train_data, hp.mend_train_records, hp.mend_heldout)
    order = list(range(len(records)))
    random.Random(hp.seed).shuffle(order)
    net = new_network(settings).to(model_device(model)).train()
    edit_lr = [net.edit_lr]
    others = [p for n, p in net.named_parameters() if n != "edit_lr"]
    opt = torch.optim.Adam([{"params": others, "lr": hp.mend_lr},
                            {"params": edit_lr, "lr": hp.mend_lr_lr}])
    steps, batch = hp.mend_train_steps, hp.mend_train_batch
    history: list[tuple[float, float]] = []  # (edit NLL before the edit, after it)
    kl_history: list[float] = []
    start = time.perf_counter()
    bar = tqdm(total=steps, desc="training MEND", unit="step", disable=not progress)
    for step in range(steps):
        picked = [records[order[(step * batch + i) % len(records)]] for i in range(batch)]
        with torch.enable_grad():  # callers may run under no_grad (the Editor's batches)
            before, after, kl = train_step(model, tok, net, opt, sites, weights, layout,
                                           picked, hp)
        history.append((before, after))
        kl_history.append(kl)
        bar.update(1)
        bar.set_postfix(nll=f"{before:.2f}->{after:.2f}", kl=f"{kl:.3f}")
        if (step + 1) % 50 == 0 or step + 1 == steps:
            recent = history[-50:]
            logger.info("MEND step %d/%d: edit NLL %.3f -> %.3f, locality KL %.4f", step + 1,
                        steps, sum(b for b, _ in recent) / len(recent),
                        sum(a for _, a in recent) / len(recent),
                        sum(kl_history[-50:]) / len(kl_history[-50:]))
    bar.close()
    tenth = max(1, steps // 10)

    def mean(xs):
        return round(sum(xs) / max(1, len(xs)), 4)

    report = {
        "seconds": round(time.perf_counter() - start, 1), "steps": steps,
        "records": len(records), "threads": torch.get_num_threads(),
        "first_tenth": {"nll_before": mean([b for b, _ in history[:tenth]]),
                        "nll_after": mean([a for _, a in history[:tenth]]),
                        "kl": mean(kl_history[:tenth])},
        "last_tenth": {"nll_before": mean([b for b, _ in history[-tenth:]]),
                       "nll_after": mean([a for _, a in history[-tenth:]]),
                       "kl": mean(kl_history[-tenth:])},
        "edit_lr": [float(x) for x in net.edit_lr.detach()],
    }
    logger.info("MEND trained in %.0f s: %s", report["seconds"], report)
    return net, report


def train_step(model, tok, net: GradientTransform, opt, sites: Sequence[str],
               weights: dict[str, torch.Tensor], layout: str,
               records: Sequence[TrainingRecord], hp) -> tuple[float, float, float]:
    """One outer step; returns the edit prompts' NLL before and after the edit, and the KL."""
    device = model_device(model)
    edit = [(r.prompt, r.target_new) for r in records]
    rephrase = [(r.rephrase, r.target_new) for r in records if r.rephrase]
    locality = [(r.locality, None) for r in records if r.locality]
    pairs = edit + rephrase + locality
    rows = token_rows(tok, [p for p, _ in pairs], [t for _, t in pairs], device)
    n_edit, n_target = len(edit), len(edit) + len(rephrase)
    inner = edit_rows_mask(rows, n_edit)  # the gradient is of the edit prompts' loss only
    factors, base_logits = gradient_factors(model, sites, inner)
    for x, d in factors.values():
        net.observe(x, d)  # MEND updates its normalisation while it trains
    params = {}
    for i, site in enumerate(sites):
        x, d = factors[site]
        params[f"{site}.weight"] = weight_with_delta(weights[site], net.update(x, d, i), layout)
    logits = edited_logits(model, rows, params)  # (rows, len, vocab)
    l_edit = target_nll(logits, edit_rows_mask(rows, n_target))
    loss = hp.mend_c_edit * l_edit
    kl = torch.zeros(())
    if locality:
        mask = rows.batch["attention_mask"].bool().clone()  # (rows, len)
        mask[:n_target] = False
        kl = locality_kl(base_logits, logits, mask)
        loss = loss + hp.mend_c_loc * kl
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), hp.mend_grad_clip)
    opt.step()
    with torch.no_grad():
        before = float(target_nll(base_logits, edit_rows_mask(rows, n_edit)))
        after = float(target_nll(logits, edit_rows_mask(rows, n_edit)))
    return before, after, float(kl.detach())
