"""Scoring and evaluation: cosine / AS-norm / S-norm scoring, EER and minDCF (NIST SRE), DET plots.

Public API (see each module):

- :func:`compute_eer`, :func:`compute_min_dcf`, :func:`compute_error_rates` (``metrics``)
- :func:`score_trial_lists`, :func:`evaluate_score_file`, :func:`load_embeddings` (``score``)
- :func:`read_thresholds` (``thresholds``): the EER / minDCF thresholds ``memsv score --out-dir`` stores
- :class:`KeyIndex`, :func:`split_audio_extension` (``keys``): keys matched modulo an audio extension
- :func:`fit_qmf`, :func:`quality_features` (``qmf``): QMF score calibration
"""

from memsv_cli.scoring.keys import AUDIO_EXTENSIONS, KeyIndex, split_audio_extension
from memsv_cli.scoring.metrics import (
    ErrorRates,
    Metrics,
    compute_eer,
    compute_error_rates,
    compute_metrics,
    compute_min_dcf,
)
from memsv_cli.scoring.qmf import QmfModel, fit_qmf, quality_features
from memsv_cli.scoring.score import (
    EmbeddingTable,
    TrialListResult,
    evaluate_score_file,
    load_embeddings,
    read_score_file,
    score_trial_lists,
)
from memsv_cli.scoring.thresholds import ListThresholds, read_thresholds

__all__ = [
    "AUDIO_EXTENSIONS",
    "EmbeddingTable",
    "ErrorRates",
    "KeyIndex",
    "ListThresholds",
    "Metrics",
    "QmfModel",
    "TrialListResult",
    "compute_eer",
    "compute_error_rates",
    "compute_metrics",
    "compute_min_dcf",
    "evaluate_score_file",
    "fit_qmf",
    "load_embeddings",
    "quality_features",
    "read_score_file",
    "read_thresholds",
    "score_trial_lists",
    "split_audio_extension",
]
