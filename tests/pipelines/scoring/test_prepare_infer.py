"""The scoring stages without Ray: span rows from a recording, window predictions from span rows,
one result row per recording."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines import constants as C
from pipelines.config import load_config
from pipelines.features.rows import unpack_array
from pipelines.features.segment import windows
from pipelines.scoring import inputs as I
from pipelines.scoring.infer import load_span_model
from pipelines.scoring.prepare import SpanPreparer
from pipelines.scoring.run import Aggregator, model_flags
from tests.pipelines.scoring.conftest import save_checkpoint


def _entry(library, rid: str) -> dict:
    root, _ = library
    entries, _ = I.list_inputs(str(root))
    entry = next(e for e in I.hash_entries(entries) if e["recording_id"] == rid)
    entry["model_version"] = "test"
    return entry


def _config(*overrides: str):
    return load_config("tiny", ["scoring.max_duration_s=60", *overrides])


def test_spans_hold_every_window_once_with_the_whole_file_cqt(library):
    from pipelines.features.cqt import CQTExtractor
    from pipelines.io.audio import load_and_prepare

    config = _config("scoring.span_windows=1")
    entry = _entry(library, "plain/four channels")
    rows = list(SpanPreparer(config, use_audio=True, use_cqt=True, use_notes=True)(entry))
    assert all(r["status"] == "ok" for r in rows), rows[0]["message"]
    decoded = load_and_prepare(entry["audio_uri"])
    expected = windows(decoded.duration_s, config.scoring.window_s, config.scoring.overlap)
    got = [(s, e) for r in rows for s, e in zip(r["win_start_s"], r["win_end_s"])]
    np.testing.assert_allclose(np.array(got), np.array(expected))
    assert [w for r in rows for w in r["win_index"]] == list(range(len(expected)))
    whole = CQTExtractor(device="cpu")(decoded.cqt)[0]                    # (F, 168) of the whole file
    for r in rows:
        cqt = unpack_array(r["cqt"], "f2", (C.CQT_N_BINS,)).astype(np.float32)
        first = r["cqt_first_frame"]
        np.testing.assert_allclose(cqt, whole[first: first + len(cqt)], atol=0.02)   # float16 storage
        audio = unpack_array(r["audio"], "f2").astype(np.float32)
        a0 = int(round(r["span_start_s"] * C.MERT_SAMPLE_RATE_HZ))
        np.testing.assert_allclose(audio, decoded.mert[a0: a0 + len(audio)], atol=2e-3)


def test_a_score_is_aligned_and_a_wrong_one_is_set_aside(library):
    config = _config()
    prep = SpanPreparer(config, use_audio=False, use_cqt=True, use_notes=True)
    good = list(prep(_entry(library, "with score/scale one")))
    assert good[0]["status"] == "ok", good[0]["message"]
    info = __import__("json").loads(good[0]["info_json"])
    assert info["has_score"] and info["match_rate"] > 0.8
    assert all(len(n) > 0 for r in good for n in r["win_notes"])          # every window has its notes
    wrong = list(prep(_entry(library, "wrong/other piece")))
    info = __import__("json").loads(wrong[0]["info_json"])
    assert not info["has_score"] and info["score_mismatch"] and info["match_rate"] < 0.5
    assert "other piece.mid" in info["note"] and all(n == b"" for r in wrong for n in r["win_notes"])


def test_bad_files_become_one_error_row_each(library):
    config = _config()
    prep = SpanPreparer(config, use_audio=False, use_cqt=True, use_notes=True)
    for rid, kind in (("bad/corrupt", "input"), ("bad/empty", "input"), ("bad/short", "input"),
                      ("bad/long", "limit")):
        rows = list(prep(_entry(library, rid)))
        assert len(rows) == 1 and rows[0]["status"] == "error" and rows[0]["error_kind"] == kind, rows[0]
        assert rid.split("/")[1] in rows[0]["message"] and "\n" not in rows[0]["message"]
    entry = _entry(library, "plain/four channels")
    entry["size"] = 10 ** 10
    rows = list(prep(entry))
    assert rows[0]["error_kind"] == "limit" and "max_file_mb" in rows[0]["message"]


def test_mert_runs_once_per_span_and_matches_window_by_window_scoring(library, tmp_path, monkeypatch):
    ckpt = save_checkpoint(tmp_path / "both", audio_encoder="both")
    config = _config("scoring.span_windows=8", "scoring.window_s=25", "model.audio_encoder=both",
                     "scoring.max_duration_s=100")
    entry = _entry(library, "bad/long")                            # 68 s: 5 windows in one span
    from pipelines.io.model_files import read_checkpoint_meta
    flags = model_flags(read_checkpoint_meta(str(ckpt))["config"])
    rows = list(SpanPreparer(config, **flags)(entry))
    assert len(rows) == 1 and len(rows[0]["win_index"]) >= 3
    span_model = load_span_model(str(ckpt), config, use_gpu=False)
    seen = []
    original = span_model.model.encode_mert
    monkeypatch.setattr(span_model.model, "encode_mert",
                        lambda audio, lengths: (seen.append(int(lengths.sum())), original(audio, lengths))[1])
    out = span_model(rows[0])
    assert out["status"] == "ok", out["message"]
    span_samples = len(unpack_array(rows[0]["audio"], "f2"))
    assert sum(seen) <= span_samples + 80 * 4                     # the span's audio once, not once per window
    assert sum(seen) >= span_samples
    # the first window starts a MERT chunk, so it sees exactly what window-by-window scoring sees
    audio = unpack_array(rows[0]["audio"], "f2").astype(np.float32)
    n = int(round(25.0 * C.MERT_SAMPLE_RATE_HZ))
    cqt = unpack_array(rows[0]["cqt"], "f2", (C.CQT_N_BINS,)).astype(np.float32)
    f1 = int(np.ceil(25.0 * C.CQT_FRAMES_PER_S)) + 1
    batch = {"audio": torch.as_tensor(audio[None, :n]), "cqt": torch.as_tensor(cqt[None, :f1]),
             "notes": torch.zeros((1, 0, 8), dtype=torch.long)}
    with torch.no_grad():
        direct = span_model.model(batch)
    np.testing.assert_allclose(out["win_scores"][0], direct.scores[0].numpy(), atol=1e-3)


def test_aggregator_makes_one_row_per_recording(library, scoring_checkpoint):
    from model.schema import SEED10
    config = _config()
    entry = _entry(library, "plain/four channels")
    rows = list(SpanPreparer(config, use_audio=False, use_cqt=True, use_notes=True)(entry))
    span_model = load_span_model(str(scoring_checkpoint), config, use_gpu=False)
    preds = [span_model(r) for r in rows]
    agg = Aggregator({entry["recording_id"]: entry}, SEED10.names, SEED10, config, "run-1")
    results = [agg.add(p) for p in preds + preds]                 # a retried span arrives twice
    done = [r for r in results if r is not None]
    assert len(done) == 1
    row = done[0]
    assert row["status"] == "ok" and row["run_id"] == row["scored_in_run"] == "run-1"
    assert np.isfinite(row["aggregate"]) and np.isfinite(row["aggregate_sigma"])
    assert row["score_note_accuracy"] == pytest.approx(row["scores"][0])
    assert len(row["window_scores"]) == len(row["window_start_s"]) and len(row["attention_curve"]) >= 30


def test_a_score_too_long_to_align_is_set_aside_with_a_note(library):
    config = _config("scoring.max_alignment_cells=1e4")          # the scale's 168 notes x 84 onsets exceed it
    prep = SpanPreparer(config, use_audio=False, use_cqt=True, use_notes=True)
    rows = list(prep(_entry(library, "with score/scale one")))
    assert rows[0]["status"] == "ok"
    info = __import__("json").loads(rows[0]["info_json"])
    assert not info["has_score"] and not info["score_mismatch"] and "too long to align" in info["note"]
    assert "scale one.mid" in info["note"]


def test_result_rows_carry_bars_flags_and_a_cqt_thumbnail(library, scoring_checkpoint):
    from model.schema import SEED10
    from pipelines.scoring.results import to_table
    config = _config()
    span_model = load_span_model(str(scoring_checkpoint), config, use_gpu=False)
    out = {}
    for rid in ("with score/scale one", "plain/four channels"):
        entry = _entry(library, rid)
        rows = list(SpanPreparer(config, use_audio=False, use_cqt=True, use_notes=True)(entry))
        agg = Aggregator({rid: entry}, SEED10.names, SEED10, config, "run-1")
        out[rid] = next(r for r in (agg.add(span_model(r)) for r in rows) if r is not None)
    scored = out["with score/scale one"]
    assert scored["status"] == "ok" and scored["has_score"]
    bars = scored["bars"]
    assert [b["bar"] for b in bars] == list(range(1, len(bars) + 1)) and len(bars) >= 4
    assert sum(b["matched"] for b in bars) > 0.8 * sum(b["score_notes"] for b in bars)
    assert all(len(b["window_scores"]) == len(SEED10.names) and b["attention"] > 0 for b in bars)
    assert isinstance(scored["bar_flags"], list) and scored["time_flags"] == []
    thumb = np.frombuffer(scored["cqt_thumb"], np.uint8).reshape(-1, 88)
    assert abs(len(thumb) - scored["duration_s"] * scored["cqt_thumb_fps"]) <= 2 and thumb.max() > 100
    plain = out["plain/four channels"]
    assert plain["bars"] == [] and plain["bar_flags"] == [] and isinstance(plain["time_flags"], list)
    table = to_table([scored, plain], SEED10.names)                 # the Parquet contract holds
    assert table.column("bars")[0].as_py()[0]["bar"] == 1


def test_a_notes_only_model_leaves_windows_without_notes_out_and_says_when_none_has_any(library, tmp_path):
    from model.schema import SEED10
    from pipelines.features.rows import pack_array
    from pipelines.io.model_files import read_checkpoint_meta

    ckpt = save_checkpoint(tmp_path / "notes-only", audio_encoder="none", aggregation="mean")
    config = _config("model.audio_encoder=none", "scoring.span_windows=8")
    entry = _entry(library, "with score/scale one")
    rows = list(SpanPreparer(config, **model_flags(read_checkpoint_meta(str(ckpt))["config"]))(entry))
    assert len(rows) == 1 and len(rows[0]["win_index"]) >= 2
    span_model = load_span_model(str(ckpt), config, use_gpu=False)
    no_notes = pack_array(np.zeros((0, 8), np.int16), "i2")
    rest_first = dict(rows[0], win_notes=[no_notes] + list(rows[0]["win_notes"][1:]))   # a rest, then notes
    out = span_model(rest_first)
    assert out["status"] == "ok", out["message"]
    scores = np.asarray(out["win_scores"])
    assert np.isnan(scores[0]).all() and np.isfinite(scores[1:]).all()
    result = Aggregator({entry["recording_id"]: entry}, SEED10.names, SEED10, config, "run-1").add(out)
    assert result["status"] == "ok" and np.isfinite(result["scores"]).all()

    silent = dict(rows[0], win_notes=[no_notes] * len(rows[0]["win_index"]))
    result = Aggregator({entry["recording_id"]: entry}, SEED10.names, SEED10, config, "run-2").add(span_model(silent))
    assert result["status"] == "error" and result["error_kind"] == "input"
    assert "no notes to assess" in result["message"] and "\n" not in result["message"]
