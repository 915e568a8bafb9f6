"""Second moments ``C = E[k kᵀ]`` of edit-site keys over a corpus, with a fingerprinted cache.

One forward pass collects every requested site at once and stops after the deepest one. Each
site's statistics are stored as a safetensors file (sum and count) whose metadata carries the
fingerprint of everything they depend on and a checksum; a mismatched or corrupt file is
reported and recomputed, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from massedit.corpus import DEFAULT_CORPUS, corpus_id, iter_texts
from massedit.hooks import StopForward
from massedit.models import get_adapter, get_module
from massedit.problem import SecondMoment

logger = logging.getLogger(__name__)
STATS_FORMAT = 1


@dataclass(frozen=True)
class StatsSpec:
    """Where statistics come from. ``tokens=None`` lets the editor choose from the MLP width."""

    corpus: str | None = None  # path, hub dataset id (name[:config]) or "self"; None: default
    tokens: int | None = None
    max_length: int = 256
    batch_size: int = 8
    dtype: str = "float32"
    seed: int = 0
    cache_dir: str | None = None


def cache_root(cache_dir: str | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("MASSEDIT_CACHE"):
        return Path(os.environ["MASSEDIT_CACHE"]).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("massedit"))


def model_identity(model) -> str:
    """Model id and revision for hub models; for local ones a hash of config and token
    embeddings (which edits of MLP weights never change, so stats stay valid mid-edit)."""
    cfg = model.config
    name = getattr(cfg, "_name_or_path", "") or ""
    revision = getattr(cfg, "_commit_hash", None)
    if name and revision and not Path(name).exists():
        return f"{name}@{revision}"
    h = hashlib.sha256(json.dumps(cfg.to_diff_dict(), sort_keys=True, default=str).encode())
    emb = model.get_input_embeddings().weight.detach()
    h.update(emb.float().cpu().numpy().tobytes())
    return f"local:{h.hexdigest()[:16]}"


def fingerprint(model, site: str, spec: StatsSpec, corpus: str, tokens: int) -> dict:
    from massedit import __version__

    return {
        "format": STATS_FORMAT,
        "model": model_identity(model),
        "site": site,
        "corpus": corpus_id(corpus),
        "tokens": tokens,
        "max_length": spec.max_length,
        "dtype": spec.dtype,
        "seed": spec.seed,
        "massedit": __version__,
    }


def _key(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:20]


def _checksum(total: torch.Tensor, count: int) -> str:
    h = hashlib.sha256(total.contiguous().cpu().numpy().tobytes())
    h.update(str(count).encode())
    return h.hexdigest()


def cache_path(root: Path, fp: dict) -> Path:
    safe_site = fp["site"].replace("/", "_")
    return root / "stats" / f"{safe_site}-{_key(fp)}.safetensors"


def load_cached(path: Path, fp: dict) -> SecondMoment | None:
    """The cached moment if the file exists, matches ``fp`` and is intact; else None."""
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            total = fh.get_tensor("total")
        stored_fp = json.loads(meta.get("fingerprint", "{}"))
        count = int(meta["count"])
        if stored_fp != fp:
            logger.warning("statistics file %s belongs to another spec: recomputing", path)
            return None
        if meta.get("checksum") != _checksum(total, count):
            logger.warning("statistics file %s is corrupt (checksum mismatch): recomputing", path)
            return None
        return SecondMoment(total, count)
    except Exception as err:  # unreadable or truncated file
        logger.warning("statistics file %s is unreadable (%s): recomputing", path, err)
        return None


def save_moment(path: Path, fp: dict, moment: SecondMoment, extra: dict | None = None) -> None:
    """Write atomically: a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    total = moment.total.contiguous().cpu()
    meta = {
        "fingerprint": json.dumps(fp, sort_keys=True),
        "count": str(moment.count),
        "checksum": _checksum(total, moment.count),
        **{k: str(v) for k, v in (extra or {}).items()},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({"total": total}, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def token_chunks(tok, texts, max_length: int):
    """Concatenate tokenised texts (separated by EOS) and cut them into ``max_length`` rows."""
    buffer: list[int] = []
    sep = [tok.eos_token_id] if tok.eos_token_id is not None else []
    for text in texts:
        buffer.extend(tok(text, add_special_tokens=False)["input_ids"] + sep)
        while len(buffer) >= max_length:
            yield buffer[:max_length]
            buffer = buffer[max_length:]
    if buffer:
        yield buffer


@torch.no_grad()
def accumulate_moments(
    model, tok, sites: Sequence[str], texts, tokens: int, spec: StatsSpec, progress: bool = True
) -> dict[str, SecondMoment]:
    """Sums of ``k kᵀ`` at every site in one pass per batch, stopping after the deepest site."""
    device = next(model.parameters()).device
    dtype = getattr(torch, spec.dtype)
    sums: dict[str, torch.Tensor] = {}
    seen = {"count": 0}
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    deepest = max(sites, key=lambda s: order[s])
    handles = []
    for site in sites:
        def hook(_m, args, _out, site=site):
            if not seen.get("active"):  # e.g. the model generating its own corpus ("self")
                return
            k = args[0].reshape(-1, args[0].shape[-1])[seen["mask"]].to(dtype)  # (tokens, d_in)
            if site not in sums:
                sums[site] = torch.zeros(k.shape[1], k.shape[1], dtype=dtype, device=k.device)
            sums[site].addmm_(k.T, k)  # no per-token outer products are materialised
            if site == deepest:
                raise StopForward
        handles.append(get_module(model, site).register_forward_hook(hook))
    max_length = min(spec.max_length, model_max_length(model))
    bar = tqdm(total=tokens, desc="statistics", unit="tok", disable=not progress, leave=False)
    try:
        batch: list[list[int]] = []
        for chunk in token_chunks(tok, texts, max_length):
            batch.append(chunk[: tokens - seen["count"] - sum(map(len, batch))])
            if len(batch) == spec.batch_size or seen["count"] + sum(map(len, batch)) >= tokens:
                _run_batch(model, batch, tok, device, seen, bar)
                batch = []
            if seen["count"] >= tokens:
                break
        if batch and seen["count"] < tokens:
            _run_batch(model, batch, tok, device, seen, bar)
    finally:
        for h in handles:
            h.remove()
        bar.close()
    if seen["count"] == 0:
        raise ValueError("the statistics corpus gave no tokens")
    if seen["count"] < tokens:
        logger.warning("corpus ran out: %d of %d tokens collected", seen["count"], tokens)
    return {s: SecondMoment(sums[s], seen["count"]) for s in sites}


def model_max_length(model) -> int:
    """Longest sequence the model's position embeddings allow."""
    cfg = model.config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value:
            return int(value)
    return 1 << 30


def _run_batch(model, batch, tok, device, seen, bar) -> None:
    from massedit.tokens import pad_id_of, pad_right

    batch = [b for b in batch if b]
    if not batch:
        return
    enc = pad_right(batch, pad_id_of(tok), device)
    seen["mask"] = enc["attention_mask"].reshape(-1).bool()
    seen["active"] = True
    try:
        model(**enc, use_cache=False)
    except StopForward:
        pass
    finally:
        seen["active"] = False
    n = int(enc["attention_mask"].sum())
    seen["count"] += n
    bar.update(n)


def resolve_corpus(spec: StatsSpec, model, tok) -> str:
    """The corpus to use: the spec's, else the hub default, else text sampled from the model."""
    if spec.corpus:
        return spec.corpus
    try:
        next(iter(iter_texts(DEFAULT_CORPUS)))
        return DEFAULT_CORPUS
    except Exception as err:
        logger.warning(
            "default corpus %s unreachable (%s): statistics from text sampled from the model "
            "(seed %d); pass a corpus for better statistics", DEFAULT_CORPUS, err, spec.seed,
        )
        return "self"


def get_moments(
    model, tok, layers: Sequence[int], spec: StatsSpec, tokens: int, progress: bool = True
) -> tuple[dict[int, SecondMoment], dict]:
    """Second moments at the edit sites of ``layers``, from the cache or computed in one pass.

    Returns the moments by layer and a record of what was used (for patch metadata)."""
    adapter = get_adapter(model)
    corpus = resolve_corpus(spec, model, tok)
    root = cache_root(spec.cache_dir)
    found: dict[int, SecondMoment] = {}
    fps = {layer: fingerprint(model, adapter.site_name(layer), spec, corpus, tokens)
           for layer in layers}
    missing = []
    for layer in layers:
        moment = load_cached(cache_path(root, fps[layer]), fps[layer])
        if moment is None:
            missing.append(layer)
        else:
            found[layer] = moment
    if missing:
        sites = [adapter.site_name(layer) for layer in missing]
        logger.info("computing statistics for %s over %d tokens of %s", sites, tokens, corpus)
        texts = iter_texts(corpus, model, tok, spec.seed)
        moments = accumulate_moments(model, tok, sites, texts, tokens, spec, progress)
        for layer, site in zip(missing, sites, strict=True):
            found[layer] = moments[site]
            try:
                save_moment(cache_path(root, fps[layer]), fps[layer], moments[site])
            except OSError as err:
                logger.warning("could not cache statistics in %s: %s", root, err)
    record = {"corpus": corpus_id(corpus), "tokens_requested": tokens,
              "tokens_used": {str(k): v.count for k, v in found.items()},
              "spec": asdict(spec)}
    return found, record
