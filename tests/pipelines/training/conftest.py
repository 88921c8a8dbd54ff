"""Synthetic preprocessed features for training tests: rows of the real Parquet contract, with
labels that depend on the note attributes and the CQT (so a model can learn them), written fast."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.schema import SEED10
from pipelines import constants as C
from pipelines.features.rows import SEGMENT_SCHEMA, empty_row, pack_array
from pipelines.training.feature_model import N_FEATURES


def make_synthetic_features(out: Path, n_pieces: int = 6, takes: int = 4, segments: int = 2, seed: int = 0,
                            seconds: float = 2.0, n_notes: int = 24, names: list[str] | None = None) -> Path:
    """names: the dimensions of the expert labels (default seed10's); pseudo labels are seed10's."""
    rng = np.random.default_rng(seed)
    rows = []
    splits = ["train"] * (n_pieces - 2) + ["val", "test"]
    frames = int(seconds * C.CQT_FRAMES_PER_S)
    for p in range(n_pieces):
        for take in range(takes):
            quality = take / max(takes - 1, 1)                      # 0 = worst take, 1 = clean
            labels = {d: float(np.clip(35 + 60 * quality + rng.normal(0, 3), 0, 100))
                      for d in dict.fromkeys([*SEED10.names, *(names or [])])}
            # whole-performance descriptors (the feature model's): the first follows the take's quality
            descriptors = rng.normal(0, 1, N_FEATURES).astype(np.float32)
            descriptors[0] = 40 + 40 * quality + rng.normal(0, 2)
            for s in range(segments):
                row = empty_row()
                tokens = np.ones((n_notes, 8), dtype=np.int64) * 2
                tokens[:, 3] = rng.integers(2, 90, n_notes)
                tokens[:, 0] = 2 + 2 + (rng.random(n_notes) > quality * 0.9 + 0.1)   # NOTE or MISSED
                attrs = np.zeros((n_notes, C.N_PERF_ATTRS), dtype=np.float32)
                attrs[:, 1] = (tokens[:, 0] == 5)
                attrs[:, 0] = 1 - attrs[:, 1]
                attrs[:, 3] = rng.uniform(0.3, 0.8, n_notes)
                attrs[:, 4] = rng.normal(0, 0.3 * (1 - quality) + 0.01, n_notes)
                cqt = rng.normal(-4 + quality, 1.0, (frames, C.CQT_N_BINS)).astype(np.float32)
                audio = (rng.normal(0, 0.1, int(seconds * C.MERT_SAMPLE_RATE_HZ))).astype(np.float32)
                row.update(recording_id=f"piece{p}/take{take}", segment_index=s, split=splits[p],
                           piece_id=f"piece{p}", performer_id=f"take{take}", source_uri=f"/x/piece{p}_{take}.wav",
                           start_s=s * seconds / 2, end_s=s * seconds / 2 + seconds,
                           audio=pack_array(audio, "f2"), audio_samples=len(audio),
                           cqt=pack_array(cqt, "f2"), cqt_frames=frames,
                           notes=pack_array(tokens, "i2"), note_attrs=pack_array(attrs, "f4"),
                           note_times=pack_array(np.linspace(0, seconds, n_notes), "f4"), n_notes=n_notes,
                           has_score=True, perf_source="midi", perf_features=pack_array(descriptors, "f4"),
                           labels_json=json.dumps({d: labels[d] for d in (names or SEED10.names)}),
                           pseudo_json=json.dumps({d: labels[d] for d in SEED10.pseudo_names}))
                rows.append(row)
    (out / "segments").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SEGMENT_SCHEMA), out / "segments" / "part-0.parquet")
    return out


@pytest.fixture()
def synthetic_features(tmp_path) -> Path:
    """Expert labels for seed10 and percepiano19 (initialising one schema's run from the other)."""
    from model.schema import PERCEPIANO19
    return make_synthetic_features(tmp_path / "features", names=[*SEED10.names, *PERCEPIANO19.names])
