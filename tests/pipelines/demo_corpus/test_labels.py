"""Demo-corpus labels: the half-life formula, and its documentation matches the code."""
from __future__ import annotations

import numpy as np
import pytest

from model.schema import SEED10
from pipelines.demo_corpus import labels as labels_module
from pipelines.demo_corpus.labels import LABEL_HALF_LIVES, labels_from_measures
from pipelines.demo_corpus.pieces import CorpusGenerationError


def test_label_formula_half_lives():
    labels = labels_from_measures({"note_error_rate": 0.08})
    assert labels["note_accuracy"] == pytest.approx(50.0, abs=0.01)
    assert labels["musicality"] == pytest.approx(100 * 2 ** (-0.08 / 0.25), abs=0.01)
    assert labels["rhythmic_precision"] == 100.0
    others = [labels[d] for d in SEED10.names if d != "overall"]
    assert labels["overall"] == pytest.approx(np.mean(others), abs=0.01)
    with pytest.raises(CorpusGenerationError, match="unknown deviation measure"):
        labels_from_measures({"loudness": 1.0})


def test_docstring_formula_table_matches_the_code():
    import re
    for dim, half_lives in LABEL_HALF_LIVES.items():
        row = [line for line in labels_module.__doc__.splitlines() if line.startswith(f"| {dim} ")][-1]
        documented = {m: float(v) for m, v in re.findall(r"(\w+): ([0-9.]+)", row)}
        assert documented == half_lives, dim
