"""Ground-truth labels of the demo corpus: the label formula over the measured deviations.

**Labels** (formula `LABEL_FORMULA_VERSION`). Each take yields *measures* of what was applied: the note
error rate (wrong + missed + extra) / played score notes, the RMS of the drawn onset shifts (ms), |drift|,
the flatten fraction, the RMS of the drawn velocity noise, the voicing loss, the harshness (velocity
units), |ln duration_scale|, the RMS of the drawn log-duration factors, the fraction of pedal presses
dropped and of pedal changes blurred, and the deadpan fraction. A dimension's label is

    label = 100 * 2 ** ( - sum over its measures m of  m / h[dimension][m] )

with the half-lives h of `LABEL_HALF_LIVES` (the amount of a measure that alone halves the label):

| dimension | measure: half-life |
| --- | --- |
| note_accuracy | note_error_rate: 0.08 |
| rhythmic_precision | onset_jitter_ms: 30; tempo_drift: 0.20 |
| dynamics_control | dynamics_flatten: 0.6; velocity_noise: 12 |
| articulation | duration_log_scale: 0.40; duration_log_jitter: 0.30 |
| pedaling | pedal_missing: 0.40; pedal_blur: 0.40 |
| tone | voicing_loss: 0.5; harshness: 18; velocity_noise: 30 |
| phrasing (proxy) | deadpan: 0.6; tempo_drift: 0.40; dynamics_flatten: 1.2 |
| expressiveness (proxy) | deadpan: 0.5; dynamics_flatten: 0.8 |
| musicality (proxy) | deadpan: 1.0; note_error_rate: 0.25; onset_jitter_ms: 90; voicing_loss: 1.2; pedal_blur: 1.2 |
| overall (proxy) | mean of the other nine |

A clean take scores 100 on every dimension and any deviation lowers the dimensions it touches, more
for more (a larger rate keeps the smaller rate's choices, drawn noise scales with its sigma). The six
technical seed10 dimensions (`pipelines.features.pseudo_labels.TECHNICAL_DIMENSIONS`) depend only on
technical deviations. The interpretive ones are **synthetic proxies** (deadpan playing plus some
technical measures): they exercise the interpretive heads and the aggregate, they are not musical
judgements. Measures are of what was applied, so a deviation with nothing to act on scores nothing
(a piece whose clean rendition has no pedal keeps pedaling 100).
"""
from __future__ import annotations

import numpy as np

from model.schema import SEED10
from pipelines.demo_corpus.pieces import CorpusGenerationError

LABEL_FORMULA_VERSION = "demo-labels-v1"
OVERALL_DIM = "overall"                 # mean of the other nine
MEASURE_NAMES = ("note_error_rate", "onset_jitter_ms", "tempo_drift", "dynamics_flatten", "velocity_noise",
                 "voicing_loss", "harshness", "duration_log_scale", "duration_log_jitter", "pedal_missing",
                 "pedal_blur", "deadpan")

# Half-lives: the amount of each measure that alone halves a dimension's label.
LABEL_HALF_LIVES: dict[str, dict[str, float]] = {
    "note_accuracy": {"note_error_rate": 0.08},
    "rhythmic_precision": {"onset_jitter_ms": 30.0, "tempo_drift": 0.20},
    "dynamics_control": {"dynamics_flatten": 0.6, "velocity_noise": 12.0},
    "articulation": {"duration_log_scale": 0.40, "duration_log_jitter": 0.30},
    "pedaling": {"pedal_missing": 0.40, "pedal_blur": 0.40},
    "tone": {"voicing_loss": 0.5, "harshness": 18.0, "velocity_noise": 30.0},
    "phrasing": {"deadpan": 0.6, "tempo_drift": 0.40, "dynamics_flatten": 1.2},
    "expressiveness": {"deadpan": 0.5, "dynamics_flatten": 0.8},
    "musicality": {"deadpan": 1.0, "note_error_rate": 0.25, "onset_jitter_ms": 90.0, "voicing_loss": 1.2,
                   "pedal_blur": 1.2},
}


def labels_from_measures(measures: dict[str, float]) -> dict[str, float]:
    """seed10 labels (0..100, 2 decimals): 100 * 2^-(sum m / half-life); overall = mean of the others."""
    unknown = sorted(set(measures) - set(MEASURE_NAMES))
    if unknown:
        raise CorpusGenerationError(f"unknown deviation measure {unknown[0]!r}")
    labels = {}
    for dim, half_lives in LABEL_HALF_LIVES.items():
        exponent = sum(measures.get(m, 0.0) / h for m, h in half_lives.items())
        labels[dim] = 100.0 * 2.0 ** (-exponent)
    labels[OVERALL_DIM] = float(np.mean(list(labels.values())))
    return {d: round(labels[d], 2) for d in SEED10.names}
