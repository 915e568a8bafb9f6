"""Evaluation: benchmark readers, teacher-forced scoring and edit-quality metrics (docs/design.md
§9)."""

from .metrics import (
    counterfact_scores,
    generate_fluency_texts,
    locality_reference_tokens,
    ngram_entropy,
    summarize_counterfact,
    summarize_token_accuracy,
    text_ngram_entropy,
    tfidf_consistency,
    token_accuracy_scores,
    zsre_scores,
)
from .readers import (
    DatasetError,
    EvalCase,
    load_eval_dataset,
    read_counterfact,
    read_counterfact_easyedit,
    read_zsre,
    shared_data_dir,
)
from .scoring import (
    TargetScore,
    encode_prompt_target,
    greedy_continuation,
    score_targets,
    target_argmax,
    target_nll,
    target_prob,
    target_token_hits,
)

__all__ = [
    "DatasetError",
    "EvalCase",
    "TargetScore",
    "counterfact_scores",
    "encode_prompt_target",
    "generate_fluency_texts",
    "greedy_continuation",
    "load_eval_dataset",
    "locality_reference_tokens",
    "ngram_entropy",
    "read_counterfact",
    "read_counterfact_easyedit",
    "read_zsre",
    "score_targets",
    "shared_data_dir",
    "summarize_counterfact",
    "summarize_token_accuracy",
    "target_argmax",
    "target_nll",
    "target_prob",
    "target_token_hits",
    "text_ngram_entropy",
    "tfidf_consistency",
    "token_accuracy_scores",
    "zsre_scores",
]
