"""Fixtures for tests and plug-in authors: word tokenizers, tiny models, toy-world models.

Importing this package registers the ``gpt2_linear`` adapter used by :func:`tiny_gpt2_pair`.

>>> from massedit.testing import tiny_model
>>> model, tok = tiny_model("llama")
>>> model.config.intermediate_size, model.config.hidden_size
(96, 32)
"""

from massedit.testing.conformance import (
    CheckResult,
    ConformanceError,
    ConformanceReport,
    check_distribution,
    check_objective,
)
from massedit.testing.conformance_edits import ToyThresholds, check_method, toy_world_edit
from massedit.testing.tiny import (
    GPT2_LINEAR,
    TINY_MODEL_TYPES,
    TINY_WORDS,
    conv1d_to_linear,
    tiny_gpt2_pair,
    tiny_model,
)
from massedit.testing.tokenizer import build_word_tokenizer
from massedit.testing.toyworld import (
    ARCH_SPECS,
    TOY_EDIT_LAYERS,
    ToyWorld,
    TrainSpec,
    WorldSpec,
    toy_accuracy,
    toy_world_model,
    train_toy_model,
)

__all__ = [
    "ARCH_SPECS",
    "CheckResult",
    "ConformanceError",
    "ConformanceReport",
    "GPT2_LINEAR",
    "TINY_MODEL_TYPES",
    "TINY_WORDS",
    "TOY_EDIT_LAYERS",
    "ToyWorld",
    "ToyThresholds",
    "TrainSpec",
    "WorldSpec",
    "build_word_tokenizer",
    "check_distribution",
    "check_method",
    "check_objective",
    "conv1d_to_linear",
    "tiny_gpt2_pair",
    "tiny_model",
    "toy_accuracy",
    "toy_world_edit",
    "toy_world_model",
    "train_toy_model",
]
