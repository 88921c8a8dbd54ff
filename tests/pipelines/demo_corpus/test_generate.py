"""The demo corpus generator: planned takes of real pieces, FluidSynth rendering, the written corpus."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import soundfile as sf

from model.schema import SEED10
from pipelines.demo_corpus import generate as corpus
from pipelines.demo_corpus.labels import LABEL_FORMULA_VERSION
from pipelines.demo_corpus.pieces import DEMO_PIECES, CorpusGenerationError, piece_arrays
from pipelines.features import render
from pipelines.io import corpora, storage
from tests.pipelines.demo_corpus.conftest import TECHNICAL, one_line

ROOT = Path(__file__).resolve().parents[3]
MUSESCORE = "/usr/share/sounds/sf3/MuseScore_General.sf3"


# --- real pieces -----------------------------------------------------------------------------

def test_human_k265_take_is_the_recording():
    spec = DEMO_PIECES[0]
    arrays = piece_arrays(spec)
    planned = corpus.plan_piece(spec, 0, 2, seed=0, max_seconds=40.0)
    clean = planned.takes[0]
    assert clean.labels == {d: 100.0 for d in SEED10.names}
    assert len(clean.notes) == len(arrays["perf_onset_s"]) == 219      # 218 matched + 1 inserted
    assert np.allclose(np.sort(clean.notes["onset_s"]), np.sort(arrays["perf_onset_s"]), atol=1e-9)
    assert np.array_equal(np.sort(clean.notes["velocity"]), np.sort(arrays["perf_velocity"]))
    assert 80 < planned.score.tempo_qpm < 160 and planned.score.n_bars == 24
    assert min(planned.takes[1].labels.values()) < 100.0


def test_clean_take_is_highest_on_every_technical_dimension():
    for index, spec in enumerate(DEMO_PIECES[:3]):
        planned = corpus.plan_piece(spec, index, 5, seed=1, max_seconds=20.0)
        clean = planned.takes[0].labels
        for take in planned.takes[1:]:
            assert all(clean[d] >= take.labels[d] for d in TECHNICAL)
            assert min(take.labels.values()) < 100.0
        assert min(min(t.labels[d] for d in TECHNICAL) for t in planned.takes[1:]) < 80.0


def test_score_marks_the_pedal_its_natural_renditions_follow():
    """A generated piece's score MIDI carries its edition's 'Ped.' marks (CC64), read back as written pedal;
    the clean take's pedal follows them. The human K265 score marks none (its pianist chose the pedal)."""
    from pipelines.demo_corpus.renditions import written_pedal
    from pipelines.io.notation import score_from_midi_bytes

    spec = DEMO_PIECES[2]
    planned = corpus.plan_piece(spec, 2, 2, seed=0, max_seconds=20.0)
    written = written_pedal(planned.score, spec.pedal_beats)
    np.testing.assert_allclose(planned.score.pedal_beats, written)
    read = score_from_midi_bytes(corpus.score_midi_bytes(planned.score)).pedal_beats
    assert read.shape == written.shape
    np.testing.assert_allclose(read[:, 0], written[:, 0], atol=1e-3)
    np.testing.assert_allclose(read[:, 1], written[:, 1] - corpus.WRITTEN_RELEASE_LEAD_BEATS, atol=0.01)
    human = corpus.plan_piece(DEMO_PIECES[0], 0, 1, seed=0, max_seconds=10.0)
    assert human.score.pedal_beats is None
    assert score_from_midi_bytes(corpus.score_midi_bytes(human.score)).pedal_beats is None


# --- rendering -------------------------------------------------------------------------------

def _midi_bytes(notes, pedal=()) -> bytes:
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(0)
    for start, end, pitch, vel in notes:
        inst.notes.append(pretty_midi.Note(vel, pitch, start, end))
    for time, value in pedal:
        inst.control_changes.append(pretty_midi.ControlChange(64, value, time))
    pm.instruments.append(inst)
    buffer = io.BytesIO()
    pm.write(buffer)
    return buffer.getvalue()


CHORD = [(0.1, 0.6, 60, 90), (0.1, 0.6, 64, 80), (0.7, 1.0, 67, 100)]


def test_render_midi_mono_trimmed_deterministic(tmp_path):
    data = _midi_bytes(CHORD)
    audio = render.render_midi(data, sample_rate=22050)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 1.0 < len(audio) / 22050 < 1.0 + render.TAIL_MAX_S + 0.1
    assert 0.01 < np.abs(audio).max() <= render.MAX_PEAK
    assert np.abs(audio[int(0.12 * 22050): int(0.5 * 22050)]).max() > 0.01   # sound where the chord is
    (tmp_path / "x.mid").write_bytes(data)
    assert np.array_equal(render.render_midi(str(tmp_path / "x.mid"), sample_rate=22050), audio)
    assert np.array_equal(render.render_midi(data, sample_rate=22050), audio)


def test_render_refuses_midi_stretched_past_its_limit_before_rendering():
    import time

    stretched = [(0.1, 0.3, 60, 100), (5 * 3600.0, 5 * 3600.0 + 0.5, 64, 90)]   # a note five hours in
    started = time.perf_counter()
    with pytest.raises(render.RenderError) as refused:
        render.render_midi(_midi_bytes(stretched), sample_rate=22050)
    assert "5.0 h" in str(refused.value) and "limit" in str(refused.value)
    assert time.perf_counter() - started < 10        # refused from the events, nothing rendered
    with pytest.raises(render.RenderError, match="over the 0.5 s limit"):
        render.render_midi(_midi_bytes(CHORD), sample_rate=22050, max_seconds=0.5)


def test_render_honours_sustain_pedal():
    note = [(0.1, 0.3, 60, 100)]
    dry = render.render_midi(_midi_bytes(note), sample_rate=22050)
    wet = render.render_midi(_midi_bytes(note, [(0.0, 127), (2.0, 0)]), sample_rate=22050)
    window = slice(int(0.8 * 22050), int(1.6 * 22050))
    ring = lambda a: float(np.sqrt(np.mean(a[window] ** 2))) if len(a) > window.stop else 0.0   # noqa: E731
    assert ring(wet) > 5.0 * max(ring(dry), 1e-6)
    assert len(wet) > len(dry)


def test_render_cli_backend_agrees():
    data = _midi_bytes(CHORD)
    lib = render.render_midi(data, sample_rate=22050, backend="pyfluidsynth")
    cli = render.render_midi(data, sample_rate=22050, backend="cli")
    n = min(len(lib), len(cli), int(1.2 * 22050))
    env = lambda a: np.sqrt(np.convolve(a[:n] ** 2, np.ones(441) / 441, mode="valid"))   # noqa: E731
    assert np.corrcoef(env(lib), env(cli))[0, 1] > 0.9
    difference = _ltas_db(lib, 22050) - _ltas_db(cli, 22050)
    assert np.sqrt(np.mean((difference - difference.mean()) ** 2)) < 3.0


def test_render_errors_are_one_line(tmp_path):
    cases = [
        (lambda: render.render_midi(_midi_bytes(CHORD), soundfont=str(tmp_path / "none.sf2")),
         "soundfont does not exist"),
        (lambda: render.render_midi(b"MThd garbage"), "not a readable MIDI file"),
        (lambda: render.render_midi(_midi_bytes([])), "no notes"),
        (lambda: render.render_midi(str(tmp_path / "missing.mid")), "no such file"),
        (lambda: render.render_midi(_midi_bytes(CHORD), backend="sox"), "unknown render backend"),
    ]
    for call, needle in cases:
        with pytest.raises(render.RenderError, match=needle) as err:
            call()
        assert one_line(err.value)


def test_default_soundfont(monkeypatch, tmp_path):
    monkeypatch.delenv(render.SOUNDFONT_ENV, raising=False)
    assert Path(render.default_soundfont()).is_file()
    monkeypatch.setenv(render.SOUNDFONT_ENV, str(tmp_path / "nope.sf2"))
    with pytest.raises(render.RenderError, match="PIANOEVAL_SOUNDFONT"):
        render.default_soundfont()


# --- the written corpus ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "corpus"
    manifest = corpus.make_corpus(str(out), pieces=2, takes=2, seed=7, max_seconds=8.0)
    return out, manifest


def test_corpus_round_trips_through_read_corpus(small_corpus):
    out, manifest = small_corpus
    assert corpora.detect_layout(str(out)) == "maestro"
    recs = corpora.read_corpus(str(out))
    assert len(recs) == manifest["n_recordings"] == 4
    assert len({r.piece_id for r in recs}) == 2
    by_id = {r["recording_id"]: r for r in manifest["recordings"]}
    for rec in recs:
        entry = by_id[rec.recording_id]
        assert rec.labels == pytest.approx(entry["labels"]) and set(rec.labels) == set(SEED10.names)
        audio, sr = sf.read(rec.audio_uri, dtype="float32")
        assert sr == 44100 and audio.ndim == 1
        assert len(audio) / sr == pytest.approx(rec.duration_s, abs=0.01)
        assert 2.0 < rec.duration_s < 8.0 + render.TAIL_MAX_S + 1.0
        perf = pretty_midi.PrettyMIDI(rec.midi_uri)
        assert any(cc.number == 64 and cc.value >= 64 for cc in perf.instruments[0].control_changes)
        score = pretty_midi.PrettyMIDI(rec.score_uri)
        assert len(score.instruments[0].notes) > 10 and score.time_signature_changes
        assert rec.split is None and rec.performer_id
    clean = [r for r in recs if r.recording_id.endswith("take00")]
    assert all(r.labels == {d: 100.0 for d in SEED10.names} for r in clean)
    assert {r.performer_id for r in clean} == {corpus.HUMAN_PERFORMER, "demo-take00"}
    assert manifest["formula_version"] == LABEL_FORMULA_VERSION
    assert all("deviations" in r and "measures" in r for r in manifest["recordings"])


def test_corpus_is_deterministic_for_a_seed(small_corpus, tmp_path):
    out, manifest = small_corpus
    again = corpus.make_corpus(str(tmp_path / "again"), pieces=2, takes=2, seed=7, max_seconds=8.0)
    assert again == manifest
    for name in ("labels.csv", "maestro-v3.0.0.csv"):
        assert (tmp_path / "again" / name).read_text() == (out / name).read_text()
    rel = "joplin_maple_leaf_rag/joplin_maple_leaf_rag_take01"
    assert (tmp_path / "again" / f"{rel}.mid").read_bytes() == (out / f"{rel}.mid").read_bytes()
    a, _ = sf.read(out / f"{rel}.flac")
    b, _ = sf.read(tmp_path / "again" / f"{rel}.flac")
    assert np.array_equal(a, b)
    other = corpus.make_corpus(str(tmp_path / "other"), pieces=2, takes=2, seed=8, max_seconds=8.0)
    assert corpus.corpus_fingerprint(other) != corpus.corpus_fingerprint(manifest)


def test_soundfont_switches_the_audio_via_the_job(small_corpus, tmp_path):
    out, _ = small_corpus
    target = tmp_path / "sf3"
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "make_corpus.py"), "--out", str(target),
                           "--pieces", "2", "--takes", "2", "--seed", "7", "--max-seconds", "8",
                           "--soundfont", MUSESCORE, "--quiet"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote 4 recordings" in proc.stdout
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["soundfont_name"] == "MuseScore_General.sf3"
    rel = "joplin_maple_leaf_rag/joplin_maple_leaf_rag_take00"
    assert (target / f"{rel}.mid").read_bytes() == (out / f"{rel}.mid").read_bytes()   # same performance
    a, sr = sf.read(out / f"{rel}.flac", dtype="float32")
    b, _ = sf.read(target / f"{rel}.flac", dtype="float32")
    # long-term average spectra (64 mel bands, dB, level removed): the same piano rendered by the two
    # back ends differs by about 1 dB RMS, FluidR3 vs MuseScore by about 10 dB
    difference = _ltas_db(a, sr) - _ltas_db(b, sr)
    assert np.sqrt(np.mean((difference - difference.mean()) ** 2)) > 4.0
    assert abs(len(a) - len(b)) / sr < 1.5


def _ltas_db(audio: np.ndarray, sr: int) -> np.ndarray:
    import librosa
    mel = librosa.feature.melspectrogram(y=audio / np.abs(audio).max(), sr=sr, n_mels=64)
    return 10.0 * np.log10(mel.mean(axis=1) + 1e-10)


def test_corpus_to_s3(s3_bucket):
    uri = f"{s3_bucket}/demo"
    corpus.make_corpus(uri, pieces=1, takes=2, seed=1, max_seconds=5.0)
    recs = corpora.read_corpus(uri)
    assert [r.recording_id for r in recs] == ["mozart_k265_var1/take00", "mozart_k265_var1/take01"]
    assert all(storage.exists(r.audio_uri) and r.audio_uri.startswith(uri) for r in recs)
    assert recs[0].labels["overall"] == 100.0


def test_generator_rejects_bad_arguments(tmp_path):
    with pytest.raises(CorpusGenerationError, match="--pieces 0"):
        corpus.make_corpus(str(tmp_path), pieces=0)
    with pytest.raises(CorpusGenerationError, match="--takes 0"):
        corpus.make_corpus(str(tmp_path), takes=0)
    with pytest.raises(render.RenderError, match="soundfont does not exist"):
        corpus.make_corpus(str(tmp_path), soundfont=str(tmp_path / "x.sf2"))
