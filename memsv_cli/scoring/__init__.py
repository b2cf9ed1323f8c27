"""Scoring and evaluation: cosine / AS-norm / S-norm scoring, EER and minDCF (NIST SRE), DET plots.

Public API (see each module):

- :func:`compute_eer`, :func:`compute_min_dcf`, :func:`compute_error_rates` (``metrics``)
- :func:`score_trial_lists`, :func:`evaluate_score_file`, :func:`load_embeddings` (``score``)
"""

from memsv_cli.scoring.metrics import (
    ErrorRates,
    Metrics,
    compute_eer,
    compute_error_rates,
    compute_metrics,
    compute_min_dcf,
)
from memsv_cli.scoring.score import (
    EmbeddingTable,
    TrialListResult,
    evaluate_score_file,
    load_embeddings,
    read_score_file,
    score_trial_lists,
)

__all__ = [
    "EmbeddingTable",
    "ErrorRates",
    "Metrics",
    "TrialListResult",
    "compute_eer",
    "compute_error_rates",
    "compute_metrics",
    "compute_min_dcf",
    "evaluate_score_file",
    "load_embeddings",
    "read_score_file",
    "score_trial_lists",
]
