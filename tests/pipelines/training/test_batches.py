"""Feature rows -> model batches: padding, lengths, labels and the audio-only switch."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from model.schema import SEED10
from pipelines import constants as C
from pipelines.training.batches import collate, columns_for, label_matrix


def _numpy_batch(path, rows=3):
    table = pq.read_table(path / "segments" / "part-0.parquet").slice(0, rows)
    return {c: np.asarray(table.column(c).to_pylist(), dtype=object) for c in table.column_names}


def test_collate_shapes_and_lengths(synthetic_features):
    batch = collate(_numpy_batch(synthetic_features), SEED10.names, stage="expert")
    B = 3
    assert batch["cqt"].shape[0] == B and batch["cqt"].shape[2] == C.CQT_N_BINS
    assert batch["audio"].shape == (B, int(batch["audio_lengths"].max()))
    assert batch["notes"].dtype == torch.long and batch["notes"].shape[2] == 8
    assert batch["note_attrs"].shape == (*batch["notes"].shape[:2], C.N_PERF_ATTRS)
    assert batch["note_times"].shape == batch["notes"].shape[:2]
    assert torch.equal(batch["note_lengths"], torch.full((B,), 24))
    assert batch["labels"].shape == (B, len(SEED10))
    assert not torch.isnan(batch["labels"]).any()


def test_pseudo_stage_masks_interpretive_dimensions(synthetic_features):
    batch = collate(_numpy_batch(synthetic_features), SEED10.names, stage="pseudo")
    labels = batch["labels"]
    pseudo = [SEED10.index(n) for n in SEED10.pseudo_names]
    others = [i for i in range(len(SEED10)) if i not in pseudo]
    assert not torch.isnan(labels[:, pseudo]).any()
    assert torch.isnan(labels[:, others]).all()


def test_audio_only_drops_the_score_and_padding_is_zero(synthetic_features):
    raw = _numpy_batch(synthetic_features)
    raw["cqt"][1] = raw["cqt"][1][: 10 * C.CQT_N_BINS * 2]      # a shorter item: 10 frames of float16
    batch = collate(raw, SEED10.names, audio_only=True)
    assert torch.equal(batch["note_lengths"], torch.zeros(3, dtype=torch.long))
    assert batch["cqt_lengths"][1] == 10
    assert torch.count_nonzero(batch["cqt"][1, 10:]) == 0


def test_label_matrix_missing_values_are_nan():
    m = label_matrix([json.dumps({"tone": 40.0}), "{}"], ["tone", "pedaling"])
    assert m[0, 0] == pytest.approx(40.0)
    assert np.isnan(m[0, 1]) and np.isnan(m[1]).all()


def test_columns_follow_the_audio_encoder():
    assert "audio" not in columns_for("cqt") and "cqt" in columns_for("cqt")
    assert "audio" in columns_for("mert") and "cqt" not in columns_for("mert")


def test_error_rows_are_never_selected_for_training_even_with_a_labels_table():
    import pyarrow as pa

    from pipelines.training.run import select_rows

    table = pa.table({"recording_id": ["a", "b", "c"], "split": ["train"] * 3, "augment": ["", "", ""],
                      "status": ["ok", "error", "ok"], "labels_json": ["{}", "{}", "{}"],
                      "pseudo_json": ["{}", "{}", "{}"]})
    lookup = {rid: json.dumps({"note_accuracy": 70.0}) for rid in ("a", "b", "c")}
    chosen = select_rows(table, stage="expert", names=["note_accuracy"], split="train", originals_only=False,
                         labels_lookup=lookup)
    assert chosen.column("recording_id").to_pylist() == ["a", "c"]
