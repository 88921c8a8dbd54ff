"""The demo corpus generator: deviations and labels, FluidSynth rendering, the written corpus."""
from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import soundfile as sf

from model.schema import SEED10
from pipelines.demo_corpus import generate as corpus
from pipelines.io import corpora
from pipelines.features import render
from pipelines.io import storage
from pipelines.demo_corpus.generate import DeviationSpec, apply_deviations, build_score, labels_from_measures

ROOT = Path(__file__).resolve().parents[3]
FLUIDR3 = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
MUSESCORE = "/usr/share/sounds/sf3/MuseScore_General.sf3"
TECHNICAL = list(corpus.TECHNICAL_DIMS)


def _tiny_arrays(n_bars: int = 4) -> dict[str, np.ndarray]:
    """n_bars of 4/4: a quarter-note melody over half-note chords."""
    onset, dur, pitch, voice = [], [], [], []
    for bar in range(n_bars):
        for beat in range(4):
            onset.append(bar * 4 + beat), dur.append(1.0), pitch.append(72 + (bar + beat) % 5), voice.append(1)
        for half in (0, 2):
            for p in (48, 55, 64):
                onset.append(bar * 4 + half), dur.append(2.0), pitch.append(p), voice.append(2)
    n = len(onset)
    return {"onset_q": np.array(onset, float), "duration_q": np.array(dur), "pitch": np.array(pitch),
            "voice": np.array(voice), "velocity": np.full(n, 64), "bar_start_q": np.arange(n_bars) * 4.0,
            "bar_len_q": np.full(n_bars, 4.0), "ts_num": np.full(n_bars, 4), "ts_den": np.full(n_bars, 4)}


@pytest.fixture(scope="module")
def score():
    return build_score(_tiny_arrays(), 0, 4, 100.0)


def _one_line(exc: BaseException) -> bool:
    return "\n" not in str(exc) and len(str(exc)) > 10


# --- scores and renditions -------------------------------------------------------------------

def test_build_score_fields(score):
    n = score.notes
    assert len(n) == 4 * (4 + 6) and score.n_bars == 4
    assert np.all(np.diff(n["onset_beat"]) >= 0)
    assert np.array_equal(n["bar"], (n["onset_beat"] // 4).astype(int))
    assert np.allclose(n["position_beat"], n["onset_beat"] % 4)
    assert np.allclose(n["onset_s"], n["onset_beat"] * 0.6)          # 100 qpm
    assert np.all(n["ts_num"] == 4) and np.array_equal(n["id"], np.arange(len(n)))


def test_excerpt_skips_pickup_and_fits_max_seconds():
    arrays = _tiny_arrays(8)
    arrays["bar_start_q"] = np.concatenate([[0.0], arrays["bar_start_q"][1:] - 3.0])   # 1-beat pickup
    arrays["bar_len_q"][0] = 1.0
    first, last = corpus.excerpt_bars(arrays, tempo_qpm=60.0, max_seconds=10.0)
    assert first == 1 and last == 3                                   # two 4-s bars fit in 10 s


def test_clean_take_is_expressive_and_scores_100(score):
    take = apply_deviations(score, DeviationSpec(seed=3))
    assert take.labels == {d: 100.0 for d in SEED10.names}
    assert sorted(take.notes["pitch"]) == sorted(score.notes["pitch"])
    assert take.notes["velocity"].std() > 4.0                          # dynamics shaped, not flat
    onsets = take.notes["onset_s"][np.lexsort((take.notes["pitch"], take.notes["onset_s"]))]
    beats = np.sort(score.notes["onset_beat"])
    residual = onsets - np.polyval(np.polyfit(beats, onsets, 1), beats)
    assert 0.01 < np.abs(residual).max() < 0.3                         # rubato, seconds
    assert np.any(take.pedal["value"] >= 64) and np.any(take.pedal["value"] < 64)


def test_other_expression_is_still_clean(score):
    a = apply_deviations(score, DeviationSpec(), expression_seed=1)
    b = apply_deviations(score, DeviationSpec(), expression_seed=2)
    assert not np.array_equal(a.notes, b.notes)
    assert a.labels == b.labels == {d: 100.0 for d in SEED10.names}


def test_same_deviations_same_labels_and_notes(score):
    spec = DeviationSpec(wrong_rate=0.1, onset_jitter_ms=30, velocity_noise=10, pedal_blur=0.5, seed=9)
    a, b = apply_deviations(score, spec), apply_deviations(score, spec)
    assert a.labels == b.labels and np.array_equal(a.notes, b.notes) and np.array_equal(a.pedal, b.pedal)
    c = apply_deviations(score, DeviationSpec(**{**spec.to_dict(), "seed": 10}))
    assert not np.array_equal(a.notes, c.notes)


FAMILY_CASES = [
    ({"wrong_rate": 0.1}, {"note_accuracy"}),
    ({"missed_rate": 0.1}, {"note_accuracy"}),
    ({"extra_rate": 0.1}, {"note_accuracy"}),
    ({"onset_jitter_ms": 40.0}, {"rhythmic_precision"}),
    ({"tempo_drift": -0.3}, {"rhythmic_precision"}),
    ({"dynamics_flatten": 0.8}, {"dynamics_control"}),
    ({"velocity_noise": 15.0}, {"dynamics_control", "tone"}),
    ({"voicing_loss": 0.8}, {"tone"}),
    ({"harshness": 20.0}, {"tone"}),
    ({"duration_scale": 0.5}, {"articulation"}),
    ({"duration_jitter": 0.4}, {"articulation"}),
    ({"pedal_missing": 0.5}, {"pedaling"}),
    ({"pedal_blur": 0.5}, {"pedaling"}),
    ({"deadpan": 1.0}, set()),
]


@pytest.mark.parametrize("fields, touched", FAMILY_CASES)
def test_each_deviation_lowers_only_its_dimensions(score, fields, touched):
    labels = apply_deviations(score, DeviationSpec(seed=5, **fields)).labels
    for dim in TECHNICAL:
        if dim in touched:
            assert labels[dim] < 90.0, (dim, labels[dim])
        else:
            assert labels[dim] == 100.0, (dim, labels[dim])
    assert labels["overall"] < 100.0


def test_deviations_change_the_notes_as_specified(score):
    n_ref = len(score.notes)
    clean = apply_deviations(score, DeviationSpec(seed=1))
    missed = apply_deviations(score, DeviationSpec(missed_rate=0.2, seed=1))
    assert len(missed.notes) == n_ref - round(0.2 * n_ref) and missed.counts["n_missed"] == round(0.2 * n_ref)
    extra = apply_deviations(score, DeviationSpec(extra_rate=0.1, seed=1))
    assert len(extra.notes) == n_ref + round(0.1 * n_ref)
    wrong = apply_deviations(score, DeviationSpec(wrong_rate=0.25, seed=1))
    changed = np.sum(np.sort(wrong.notes["pitch"]) != np.sort(clean.notes["pitch"]))
    assert changed >= 1 and wrong.counts["n_wrong"] == round(0.25 * n_ref)
    assert wrong.measures["note_error_rate"] == pytest.approx(round(0.25 * n_ref) / n_ref)
    jitter = apply_deviations(score, DeviationSpec(onset_jitter_ms=40.0, seed=1))
    shift = jitter.notes["onset_s"][np.lexsort((jitter.notes["pitch"], jitter.notes["onset_s"]))]
    assert jitter.measures["onset_jitter_ms"] == pytest.approx(40.0, rel=0.3)
    assert np.sqrt(np.mean((np.sort(shift) - np.sort(clean.notes["onset_s"])) ** 2)) > 0.01
    flat = apply_deviations(score, DeviationSpec(dynamics_flatten=1.0, seed=1))
    assert flat.notes["velocity"].std() <= 0.6                         # one velocity (rounding)
    short = apply_deviations(score, DeviationSpec(duration_scale=0.5, seed=1))
    ratio = np.log((short.notes["offset_s"] - short.notes["onset_s"]).sum()
                   / (clean.notes["offset_s"] - clean.notes["onset_s"]).sum())
    assert ratio == pytest.approx(math.log(0.5), abs=0.05)
    faster = apply_deviations(score, DeviationSpec(tempo_drift=0.3, seed=1))
    assert faster.notes["onset_s"].max() < 0.93 * clean.notes["onset_s"].max()


def test_pedal_deviations(score):
    clean = apply_deviations(score, DeviationSpec(seed=2))
    presses = clean.counts["n_pedal_presses"]
    assert presses == score.n_bars                                    # one press per bar by default
    dry = apply_deviations(score, DeviationSpec(pedal_missing=1.0, seed=2))
    assert not np.any(dry.pedal["value"] >= 64) and dry.labels["pedaling"] == pytest.approx(100 * 2 ** -2.5, abs=0.01)
    blurred = apply_deviations(score, DeviationSpec(pedal_blur=1.0, seed=2))
    down = blurred.pedal["value"] >= 64
    assert down[0] and np.sum(np.diff(down.astype(int)) == -1) == 1    # held through every change
    assert np.array_equal(blurred.notes, clean.notes)


def test_more_severe_deviations_give_lower_labels():
    score = build_score(_tiny_arrays(16), 0, 16, 100.0)
    spec = DeviationSpec(wrong_rate=0.06, missed_rate=0.06, extra_rate=0.04, onset_jitter_ms=50.0,
                         tempo_drift=0.3, dynamics_flatten=0.8, velocity_noise=16.0, voicing_loss=0.8,
                         harshness=25.0, duration_scale=0.5, duration_jitter=0.4, pedal_missing=0.5,
                         pedal_blur=0.5, deadpan=0.8, seed=4)
    rows = [apply_deviations(score, spec.scaled(f)).labels for f in (0.0, 0.25, 0.5, 1.0)]
    for dim in SEED10.names:
        values = [r[dim] for r in rows]
        assert values[0] == 100.0
        assert all(a > b for a, b in zip(values, values[1:])), (dim, values)


def test_label_formula_half_lives():
    labels = labels_from_measures({"note_error_rate": 0.08})
    assert labels["note_accuracy"] == pytest.approx(50.0, abs=0.01)
    assert labels["musicality"] == pytest.approx(100 * 2 ** (-0.08 / 0.25), abs=0.01)
    assert labels["rhythmic_precision"] == 100.0
    others = [labels[d] for d in SEED10.names if d != "overall"]
    assert labels["overall"] == pytest.approx(np.mean(others), abs=0.01)
    with pytest.raises(corpus.CorpusGenerationError, match="unknown deviation measure"):
        labels_from_measures({"loudness": 1.0})


def test_docstring_formula_table_matches_the_code():
    import re
    for dim, half_lives in corpus.LABEL_HALF_LIVES.items():
        row = [line for line in corpus.__doc__.splitlines() if line.startswith(f"| {dim} ")][-1]
        documented = {m: float(v) for m, v in re.findall(r"(\w+): ([0-9.]+)", row)}
        assert documented == half_lives, dim


def test_deviation_spec_validation():
    with pytest.raises(corpus.CorpusGenerationError) as err:
        DeviationSpec(wrong_rate=1.5)
    assert _one_line(err.value) and "wrong_rate" in str(err.value)
    with pytest.raises(corpus.CorpusGenerationError, match="tempo_drift"):
        DeviationSpec(tempo_drift=1.0)
    with pytest.raises(corpus.CorpusGenerationError, match="unknown deviation field 'speed'"):
        DeviationSpec.from_dict({"speed": 1.0})
    spec = DeviationSpec(pedal_blur=0.3, seed=2)
    assert DeviationSpec.from_dict(spec.to_dict()) == spec and not spec.is_clean and DeviationSpec(seed=4).is_clean


def test_sampled_specs_span_severities():
    rng = np.random.default_rng(0)
    severities = corpus.take_severities(6, rng)
    assert severities[0] == 0.0 and all(0.1 <= s <= 1.0 for s in severities[1:])
    assert np.all(np.diff(severities[1:]) > 0)                        # one per stratum
    specs = [corpus.sample_deviation_spec(np.random.default_rng(i), 0.8, seed=i) for i in range(20)]
    assert not any(s.is_clean for s in specs)
    assert corpus.sample_deviation_spec(np.random.default_rng(3), 0.8, 3) == specs[3]


# --- real pieces -----------------------------------------------------------------------------

def test_human_k265_take_is_the_recording():
    spec = corpus.DEMO_PIECES[0]
    arrays = corpus.piece_arrays(spec)
    planned = corpus.plan_piece(spec, 0, 2, seed=0, max_seconds=40.0)
    clean = planned.takes[0]
    assert clean.labels == {d: 100.0 for d in SEED10.names}
    assert len(clean.notes) == len(arrays["perf_onset_s"]) == 219      # 218 matched + 1 inserted
    assert np.allclose(np.sort(clean.notes["onset_s"]), np.sort(arrays["perf_onset_s"]), atol=1e-9)
    assert np.array_equal(np.sort(clean.notes["velocity"]), np.sort(arrays["perf_velocity"]))
    assert 80 < planned.score.tempo_qpm < 160 and planned.score.n_bars == 24
    assert min(planned.takes[1].labels.values()) < 100.0


def test_clean_take_is_highest_on_every_technical_dimension():
    for index, spec in enumerate(corpus.DEMO_PIECES[:3]):
        planned = corpus.plan_piece(spec, index, 5, seed=1, max_seconds=20.0)
        clean = planned.takes[0].labels
        for take in planned.takes[1:]:
            assert all(clean[d] >= take.labels[d] for d in TECHNICAL)
            assert min(take.labels.values()) < 100.0
        assert min(min(t.labels[d] for d in TECHNICAL) for t in planned.takes[1:]) < 80.0


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
        assert _one_line(err.value)


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
    assert manifest["formula_version"] == corpus.LABEL_FORMULA_VERSION
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
    with pytest.raises(corpus.CorpusGenerationError, match="--pieces 0"):
        corpus.make_corpus(str(tmp_path), pieces=0)
    with pytest.raises(corpus.CorpusGenerationError, match="--takes 0"):
        corpus.make_corpus(str(tmp_path), takes=0)
    with pytest.raises(render.RenderError, match="soundfont does not exist"):
        corpus.make_corpus(str(tmp_path), soundfont=str(tmp_path / "x.sf2"))
