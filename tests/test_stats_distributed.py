"""Data-parallel statistics: two processes launched by accelerate give the sums of one."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from massedit.models.adapters import get_adapter
from massedit.stats.moments import StatsSpec, cache_path, fingerprint, get_moments
from massedit.testing import TINY_WORDS, tiny_model


def _free_port() -> int:
    # Other test runs on this machine may hold accelerate's default port 29500.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launcher() -> list[str]:
    exe = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which(
        "accelerate")
    assert exe, "accelerate's launcher is installed with massedit's dependencies"
    # `--cpu --num_processes 2` starts ONE process on a machine without GPUs (accelerate 1.15);
    # --multi_gpu starts two, which massedit puts on gloo when there is no GPU.
    return [exe, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port())]


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tiny-dist")
    model, tok = tiny_model("llama")
    model.save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    rng = random.Random(1)
    words = list(TINY_WORDS)
    # Texts of very different lengths (some longer than a row), so shards are uneven.
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 60))) + " ."
             for _ in range(300)]
    corpus = folder / "corpus.txt"
    corpus.write_text("\n\n".join(texts))
    return folder / "model", corpus


def test_two_processes_equal_one(saved_tiny, tmp_path):
    from massedit.models.loading import load_model

    model_dir, corpus = saved_tiny
    budget = 4001  # ends inside a text: the cut must fall where one process would cut
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "MASSEDIT_CACHE": str(tmp_path / "unused")}
    cmd = [*_launcher(), "-m", "massedit", "stats", "--model", str(model_dir), "--layers", "1-2",
           "--corpus", str(corpus), "--tokens", str(budget), "--max-length", "32",
           "--batch-size", "4", "--cache-dir", str(tmp_path / "two")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 process(es) took part" in done.stdout

    torch.set_num_threads(1)
    model, tok = load_model(str(model_dir))
    spec = StatsSpec(corpus=str(corpus), max_length=32, batch_size=4,
                     cache_dir=str(tmp_path / "one"))
    one, record = get_moments(model, tok, [1, 2], spec, budget, progress=False)
    assert record["processes"] == 1
    for layer in (1, 2):
        fp = fingerprint(model, get_adapter(model).site_name(layer), spec, str(corpus), budget)
        # The same fingerprint, so either run's files serve the editor.
        path = cache_path(tmp_path / "two", fp)
        with safe_open(str(path), framework="pt") as fh:
            meta, total = fh.metadata(), fh.get_tensor("total")
        per_process = json.loads(meta["tokens_per_process"])
        assert meta["processes"] == "2" and len(per_process) == 2 and min(per_process) > 0
        assert int(meta["count"]) == sum(per_process) == one[layer].count == budget
        rel = float((total - one[layer].total).norm() / one[layer].total.norm())
        assert rel < 1e-6, rel
