"""The HTML report of a scoring run (pipelines/scoring/report.py) on a run built in code: pages, escaping,
uncertain dimensions, bar flags, errors, old rows without the per-bar columns, and S3."""
from __future__ import annotations

import html
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from pipelines.io import storage
from pipelines.scoring import publish as P
from pipelines.scoring import report as R
from pipelines.scoring.results import base_row, result_schema

ROOT = Path(__file__).resolve().parents[3]
DIMS = ["note_accuracy", "rhythmic_precision", "dynamics_control", "tone"]
EVIL_ID = "evil/<script>alert(1)</script>"
FLAG_REASON = "bars 5-7: 3 missed notes, rushing 8 %"
TIME_REASON = "uneven dynamics <from 0:12>"
OBSERVATION = "Practise bars 5-7 slowly: three missed notes & rushing"
ERROR_MESSAGE = "/lib/bad <file>.wav: not a readable audio file"

# the per-bar columns (older runs lack them)
NEW_COLUMNS = ("bars", "bar_flags", "time_flags", "observation", "cqt_thumb", "cqt_thumb_fps")


def _ok_row(recording_id: str, duration_s: float, low_confidence: list[bool], **extra: Any) -> dict[str, Any]:
    rng = np.random.default_rng(len(recording_id))
    row = base_row({"recording_id": recording_id, "audio_uri": f"/lib/{recording_id}.wav"}, DIMS)
    scores = [float(s) for s in rng.uniform(40, 90, len(DIMS))]
    sigma = [6.0 if not low else 28.0 for low in low_confidence]
    starts = [0.0, 12.5, max(0.0, duration_s - 25.0)]
    hop = 1.0
    attention = rng.uniform(0.5, 1.5, int(duration_s))
    row.update(status="ok", duration_s=duration_s, scores=scores, sigma=sigma, low_confidence=low_confidence,
               aggregate=float(np.mean(scores)), aggregate_sigma=9.0, window_start_s=starts,
               window_end_s=[s + 25.0 for s in starts], window_weight=[1.0, 1.0, 1.0],
               window_scores=[[s + d for s in scores] for d in (-5.0, 0.0, 5.0)],
               window_sigma=[sigma] * 3, curve_hop_s=hop, attention_curve=list(attention / attention.sum()))
    for name, score, sd, low in zip(DIMS, scores, sigma, low_confidence):
        row.update({f"score_{name}": score, f"sigma_{name}": sd, f"low_confidence_{name}": low})
    row.update(extra)
    return row


def _bars(n: int, seconds_per_bar: float) -> list[dict[str, Any]]:
    nan = float("nan")
    return [{"bar": i + 1, "index": i, "start_s": i * seconds_per_bar, "end_s": (i + 1) * seconds_per_bar,
             "score_notes": 8, "matched": 8 - (i in (4, 5, 6)), "missed": int(i in (4, 5, 6)), "wrong": 0,
             "extra": 0, "unclear": 0, "onset_dev_ms": 12.0, "tempo_pct": 8.0 if i in (4, 5, 6) else 0.5, "unsteady_ms": 20.0,
             "velocity": 64.0, "velocity_contrast": 2.0, "duration_ratio": 0.95, "pedal_held_changes": 0,
             "pedal_down_pct": nan, "attention": 1.0, "window_scores": [70.0] * len(DIMS)} for i in range(n)]


def _cqt(frames: int) -> bytes:
    t = np.arange(frames)[:, None]
    pitch = np.arange(88)[None, :]
    image = 120 + 100 * np.sin(t / 7.0) * np.cos(pitch / 5.0)
    return np.clip(image, 0, 255).astype(np.uint8).tobytes()


def report_rows() -> list[dict[str, Any]]:
    """A run's rows: a scored recording with bars and flags, an audio-only one with time flags and an
    uncertain dimension, an old-style row (no per-bar columns), the evil id, and an error."""
    scored = _ok_row(
        "with score/scale one", 48.0, [False, False, False, True], mode="audio+score", has_score=True,
        match_rate=0.92, score_uri="/lib/with score/scale one.mid",
        message="score fallback: <mxl> unreadable, used MIDI",
        bars=_bars(24, 2.0), observation=OBSERVATION, cqt_thumb=_cqt(480), cqt_thumb_fps=10.0,
        bar_flags=[{"bar": 5, "last_bar": 7, "dimension": "note_accuracy", "kind": "missed", "reason": FLAG_REASON,
                    "start_s": 8.0, "end_s": 14.0, "severity": 3.0},
                   {"bar": 12, "last_bar": 12, "dimension": "dynamics_control", "kind": "flat",
                    "reason": "bar 12: flat dynamics", "start_s": 22.0, "end_s": 24.0, "severity": 1.2}],
        time_flags=[])
    audio_only = _ok_row("plain/Étude n°2 ü", 40.0, [False, True, True, False], mode="audio",
                         bars=[], bar_flags=[], observation="",
                         time_flags=[{"start_s": 12.0, "end_s": 18.5, "dimension": "dynamics_control",
                                      "reason": TIME_REASON, "severity": 15.0}],
                         cqt_thumb=b"", cqt_thumb_fps=float("nan"))
    old = _ok_row("old row", 30.0, [False] * 4)
    evil = _ok_row(EVIL_ID, 30.0, [False] * 4, observation="<b>not bold</b>", bars=_bars(4, 2.0), bar_flags=[],
                   time_flags=[])
    error = base_row({"recording_id": "bad <file>", "audio_uri": "/lib/bad <file>.wav"}, DIMS)
    error.update(status="error", error_kind="input", message=ERROR_MESSAGE)
    return [scored, audio_only, old, evil, error]


def make_run(out_uri: str, rows: list[dict[str, Any]] | None = None, run_id: str = "20261126T120000.000Z-abc123",
             update_latest: bool = True) -> str:
    """Write rows as the scoring job does (part files through PartWriter, then publish) and return the run id.
    Rows without the per-bar columns (old runs) keep them out of the Parquet files."""
    rows = report_rows() if rows is None else rows
    schema = result_schema(DIMS)
    if not any("bars" in r for r in rows):
        schema = pa.schema([f for f in schema if f.name not in NEW_COLUMNS])
    writer = P.PartWriter(P.run_uri(out_uri, run_id), schema, rows_per_part=3)
    for row in rows:
        writer.add({**row, "run_id": run_id, "scored_in_run": run_id})
    writer.flush()
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "error")}
    P.publish(out_uri, run_id, {"run_id": run_id, "finished": "2026-11-26T12:01:00Z", "model_version": "m1",
                                "input": "/lib", "counts": counts, "dimensions": DIMS,
                                "config": {"dimensions": "seed10"}, "result_files": writer.files},
              update_latest=update_latest)
    return run_id


def _text(page: str) -> str:
    """What a reader sees of a page, roughly: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)>.*?</\1>", " ", page, flags=re.S)))


@pytest.fixture()
def report(tmp_path) -> dict[str, str]:
    out = str(tmp_path / "scores")
    run_id = make_run(out)
    index = R.write_run_report(out)
    report_dir = Path(index).parent
    pages = {p.name: p.read_text(encoding="utf-8") for p in report_dir.glob("*.html")}
    return {"index": index, "run_id": run_id, "dir": str(report_dir), **pages}


def test_pages_are_written_beside_the_run(report, tmp_path):
    assert report["index"] == str(tmp_path / "scores" / "runs" / report["run_id"] / "report" / "index.html")
    for rec in report_rows():
        assert R.page_name(rec["recording_id"]) in report, rec["recording_id"]


def test_page_names_are_safe_and_unique():
    names = [R.page_name(r) for r in (EVIL_ID, "a/b", "a_b", "Étude n°2 ü", "../../etc/passwd", "index", "", " ")]
    assert len(set(names)) == len(names)
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9._-]+\.html", name) and not name.startswith(".") and name != R.INDEX, name
    assert R.page_name("Étude n°2 ü").startswith("Etude_n2_u-")


def test_everything_from_names_and_messages_is_escaped(report):
    evil = report[R.page_name(EVIL_ID)]
    for page in (report["index.html"], evil):
        assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>not bold</b>" not in evil and "&lt;b&gt;not bold&lt;/b&gt;" in evil
    assert "<file>" not in report["index.html"]
    # the index links to the evil page by its safe name, and that file exists
    links = re.findall(r'href="([^"]+)"', report["index.html"])
    assert R.page_name(EVIL_ID) in links
    assert all((Path(report["dir"]) / link).exists() for link in links)
    assert EVIL_ID in _text(evil)


def test_only_inline_content_nothing_loaded_from_elsewhere(report):
    for name, page in report.items():
        if not name.endswith(".html"):
            continue
        assert not re.search(r'(src|href)="(https?:)?//', page), name
        assert "Content-Security-Policy" in page and "default-src 'none'" in page


def test_uncertain_dimensions_show_no_number(report):
    page = report[R.page_name("with score/scale one")]
    row = report_rows()[0]
    uncertain_score = row["scores"][3]
    svg_text = _text(page)
    assert "uncertain (σ 28)" in svg_text
    assert f"{uncertain_score:.0f} ±" not in svg_text
    for score in row["scores"][:3]:
        assert f"{score:.0f} ± 6" in svg_text
    # the index: uncertain cells say so, without the number
    index = report["index.html"]
    cells = re.findall(r'<td class="num uncertain"[^>]*>([^<]*)</td>', index)
    assert cells and set(cells) == {"uncertain"}
    assert len(cells) == 1 + 2      # one in the scored recording, two in the audio-only one


def test_scores_chart_has_whiskers_and_aggregate(report):
    page = report[R.page_name("with score/scale one")]
    assert page.count('class="whisker"') == 3 + 1        # three certain dimensions and the aggregate
    assert page.count('class="band"') == 1
    assert "aggregate" in _text(page)


def test_observation_message_and_flags_with_bar_numbers(report):
    page = report[R.page_name("with score/scale one")]
    text = _text(page)
    assert text.index(OBSERVATION) < text.index("Scores")        # at the top
    assert "score fallback: <mxl> unreadable, used MIDI" in text
    assert FLAG_REASON in text and "bars 5–7" in text and "bar 12: flat dynamics" in text
    # one cell per bar; bars 5, 6, 7 and 12 flagged, with their reasons as tooltips
    flagged = re.findall(r'<a class="cell flagged"[^>]*title="([^"]*)">(\d+)</a>', page)
    assert [int(n) for _, n in flagged] == [5, 6, 7, 12]
    assert FLAG_REASON in html.unescape(flagged[0][0])
    assert len(re.findall(r'class="cell', page)) == 24
    assert "Bar by bar (24 bars)" in text
    assert 'data:image/png;base64,' in page                       # the CQT thumbnail
    assert "Flagged passages" not in text


def test_time_flags_for_recordings_without_a_score(report):
    page = report[R.page_name("plain/Étude n°2 ü")]
    text = _text(page)
    assert "Flagged passages" in text and TIME_REASON in text and "0:12–0:18" in text
    assert "Bars" not in text and "data:image/png" not in page          # no bars, no CQT thumbnail
    assert "Practise next" not in text                                   # empty observation


def test_old_rows_without_per_bar_columns(tmp_path):
    out = str(tmp_path / "old")
    rows = [r for r in report_rows() if r["recording_id"] in ("old row", "bad <file>")]
    for row in rows:
        for name in NEW_COLUMNS:
            row.pop(name, None)
    make_run(out, rows)
    assert "bars" not in P.read_latest(out).column_names
    index = Path(R.write_run_report(out))
    page = (index.parent / R.page_name("old row")).read_text(encoding="utf-8")
    assert "Over time" in page and "Bars" not in _text(page)


def test_index_counts_table_and_error_list(report):
    index = report["index.html"]
    text = _text(index)
    assert f"Scoring run {report['run_id']}" in text
    assert re.search(r"<b>4</b>ok.*<b>0</b>skipped.*<b>1</b>error", index)
    assert index.count("<tr class=\"status-") == 5
    errors = index[index.index('id="errors"'):]
    assert "bad &lt;file&gt;" in errors and "input" in errors and html.escape(ERROR_MESSAGE) in errors
    assert "table.sortable" in index and 'class="sortable"' in index
    error_page = report[R.page_name("bad <file>")]
    assert ERROR_MESSAGE in _text(error_page) and "Scores" not in _text(error_page)
    # flag counts: two bar flags, one time flag
    row = index[index.index(html.escape("with score/scale one")):]
    assert re.search(r'<td class="num">2</td>', row.split("</tr>")[0])


def test_a_named_run_and_a_report_elsewhere(tmp_path):
    out = str(tmp_path / "scores")
    make_run(out, run_id="20261125T000000.000Z-aaaaaa")
    trial = make_run(out, report_rows()[:1], run_id="20261126T000000.000Z-bbbbbb", update_latest=False)
    index = R.write_run_report(out, trial, report_uri=str(tmp_path / "elsewhere"))
    assert index == str(tmp_path / "elsewhere" / "index.html")
    assert trial in Path(index).read_text(encoding="utf-8")
    assert R.locate_run(out) == (out, None)
    assert R.locate_run(P.run_uri(out, trial)) == (out, trial)
    with pytest.raises(FileNotFoundError):
        R.write_run_report(out, "no-such-run")
    with pytest.raises(FileNotFoundError):
        R.write_run_report(str(tmp_path / "empty"))


def test_png_encoder_round_trips():
    from PIL import Image
    import io

    pixels = (np.arange(88 * 50) % 256).astype(np.uint8).reshape(88, 50)
    data = R.encode_png(pixels)
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (50, 88)
    image = Image.open(io.BytesIO(data))
    assert image.mode == "P" and np.array_equal(np.asarray(image), pixels)
    assert zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]          # IHDR's CRC


def test_long_cqt_is_pooled():
    frames = R.CQT_MAX_COLUMNS * 3 + 5                  # pooled in groups of 4 frames
    cqt = np.zeros((frames, 88), np.uint8)
    cqt[7, 0] = 200                                    # frame 7 (group 1), lowest pitch (bottom row)
    image = R.cqt_image(cqt)
    assert image.shape == (88, -(-frames // 4)) and image.shape[1] <= R.CQT_MAX_COLUMNS
    assert image[-1, 1] == 200 and image.sum() == 200


def test_report_on_s3(s3_bucket):
    out = f"{s3_bucket}/scores"
    run_id = make_run(out)
    index = R.write_run_report(out)
    assert index == f"{out}/runs/{run_id}/report/index.html"
    assert "Scoring run" in storage.read_text(index)
    evil = storage.read_text(storage.join(storage.parent(index), R.page_name(EVIL_ID)))
    assert "&lt;script&gt;" in evil and "<script>alert" not in evil


def _job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "report.py"), *args], capture_output=True, text=True,
                          timeout=120, cwd=str(ROOT))


def test_job_prints_the_index_and_fails_in_one_line(tmp_path):
    out = str(tmp_path / "scores")
    run_id = make_run(out)
    result = _job("--run", P.run_uri(out, run_id), "--out", str(tmp_path / "rep"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "rep" / "index.html")
    result = _job("--run", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "nowhere" in lines[0]
