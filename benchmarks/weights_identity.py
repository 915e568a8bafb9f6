"""The weights' identity per batch (docs/design.md §11): hashing every edit site's weight (the
old ``weights_key``) vs the remembered identity chained through massedit's own writes.

    python benchmarks/weights_identity.py --batches 5 --rank 10

A sequential edit in miniature, on SmolLM2 (or ``--model``): each batch writes a rank-``rank``
update into the preset's MEMIT layers through the editor's write path, then names the weights
as the next batch's target lookup does. Per batch, timed in the same run:
  full     sha256 of every site's bytes (``weights_identity(memo=False)``: the old cost)
  chained  the digest of each written update (``record_write``) plus the remembered lookup
           (``weights_identity()``): the new cost
Both names are checked to change on every batch; the ratio full / chained is reported.
No data set is needed: the updates are random (scaled to leave the model usable).
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from massedit import EditPatch, load_model
from massedit.editing.registry import method_preset
from massedit.engine.identity import record_write, site_parameter, tensor_identity, weights_identity
from massedit.engine.problem import Delta
from massedit.engine.writing import write_update
from massedit.models.adapters import get_adapter

logger = logging.getLogger("bench")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--rank", type=int, default=10, help="rank of each batch's update")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = load_model(args.model)
    adapter = get_adapter(model)
    layers = list(method_preset("memit", model, spread=True).hparams.layers)
    g = torch.Generator().manual_seed(0)
    patch = EditPatch()
    weights_identity(model)  # the base weights' hashes: once per model, in both schemes
    full_s, chained_s, names = [], [], set()
    for _ in range(args.batches):
        chain_s = 0.0
        for layer in layers:
            site = adapter.site_name(layer)
            param = site_parameter(model, site)
            d_out = param.shape[1] if adapter.layout == "conv1d" else param.shape[0]
            d_in = param.numel() // d_out
            delta = Delta(1e-4 * torch.randn(d_out, args.rank, generator=g),
                          torch.randn(d_in, args.rank, generator=g))
            before = tensor_identity(param)
            write_update(model, site, layer, adapter.layout, delta, patch, 1e9)
            t0 = time.perf_counter()
            record_write(param, before, delta)
            chain_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        chained = weights_identity(model)
        chained_s.append(chain_s + time.perf_counter() - t0)
        t0 = time.perf_counter()
        full = weights_identity(model, memo=False)
        full_s.append(time.perf_counter() - t0)
        assert chained not in names and full not in names
        names.update((chained, full))
    full_mean, chained_mean = sum(full_s) / len(full_s), sum(chained_s) / len(chained_s)
    sites = adapter.depth(model.config)
    print(f"{args.model}: {sites} edit sites, {len(layers)} written per batch "
          f"(rank {args.rank}), {args.batches} batches")
    print(f"  full hash of every site   {full_mean * 1e3:9.2f} ms per batch")
    print(f"  chained identity          {chained_mean * 1e3:9.2f} ms per batch")
    print(f"  ratio full / chained      {full_mean / chained_mean:9.1f}x")


if __name__ == "__main__":
    main()
