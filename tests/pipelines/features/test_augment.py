"""Augmentation: seeded determinism, each transform's effect, the transform cap, label consistency."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.signal

from pipelines import constants as C
from pipelines.config import AugmentConfig
from pipelines.features.augment import (
    TRANSFORMS,
    Augmenter,
    AugmentInfo,
    add_noise,
    apply_gain,
    apply_room,
    effective_mp3_kbps,
    mp3_roundtrip,
    pitch_time_shift,
    room_impulse_response,
    room_specs,
    transform_pedal,
    transform_perf_notes,
    transform_score_notes,
)
from pipelines.io.audio import AudioError, peak_dbfs, peak_normalise
from pipelines.io.notes import PEDAL_DTYPE, SCORE_NOTE_DTYPE, make_perf_notes

SR = 44_100
ONLY = {name: 0.0 for name in ("p_pitch_shift", "p_time_stretch", "p_noise", "p_reverb", "p_gain", "p_mp3")}


def config(**overrides) -> AugmentConfig:
    """Every transform off unless switched on by `overrides`."""
    return AugmentConfig(**{**ONLY, **overrides})


def midi_hz(pitch: float) -> float:
    return 440.0 * 2.0 ** ((pitch - 69) / 12)


def render_notes(notes: np.ndarray, seconds: float, sr: int = SR) -> np.ndarray:
    """A decaying sine per note (fundamental plus a weak 2nd harmonic), summed: [S] float32."""
    y = np.zeros(int(seconds * sr))
    for note in notes:
        start, n = int(note["onset_s"] * sr), int((note["offset_s"] - note["onset_s"]) * sr)
        t = np.arange(n) / sr
        f = midi_hz(note["pitch"])
        tone = (np.sin(2 * np.pi * f * t) + 0.2 * np.sin(4 * np.pi * f * t)) * np.exp(-4 * t)
        y[start:start + n] += tone * np.minimum(1.0, t / 0.002) * note["velocity"] / 127
    return (0.7 * y / np.max(np.abs(y))).astype(np.float32)


def burst_onsets(y: np.ndarray, sr: int = SR) -> np.ndarray:
    """Seconds where the envelope first exceeds 10 % of its maximum after >= 50 ms below it."""
    envelope = np.abs(scipy.signal.hilbert(y))
    above = np.flatnonzero(envelope > 0.1 * envelope.max())
    starts = [above[0]] + [b for a, b in zip(above[:-1], above[1:]) if b - a > sr // 20]
    return np.array(starts) / sr


def dominant_hz(y: np.ndarray, sr: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y)), 8 * len(y)))
    return float(np.argmax(spectrum) * sr / (8 * len(y)))


@pytest.fixture(scope="module")
def notes() -> np.ndarray:
    onsets = np.arange(0.5, 4.0, 0.5)
    pitches = [60, 64, 67, 72, 65, 62, 69]
    return make_perf_notes(onsets, onsets + 0.3, pitches, [80] * len(onsets))


@pytest.fixture(scope="module")
def audio(notes) -> np.ndarray:
    return render_notes(notes, 4.5)


# --- the augmenter -----------------------------------------------------------------------------

def test_seeded_determinism(audio):
    augmenter = Augmenter(AugmentConfig(p_mp3=0.5))
    first = [augmenter(audio, SR, np.random.default_rng(seed)) for seed in range(6)]
    again = [augmenter(audio, SR, np.random.default_rng(seed)) for seed in range(6)]
    for (y1, info1), (y2, info2) in zip(first, again):
        assert info1 == info2 and np.array_equal(y1, y2)
    assert len({info.describe() for _, info in first}) > 1              # seeds differ


def test_never_more_than_max_transforms():
    all_on = {name: 1.0 for name in ONLY}
    for cap in (1, 2, 3):
        augmenter = Augmenter(AugmentConfig(**all_on, max_transforms=cap))
        rng = np.random.default_rng(cap)
        draws = [augmenter.sample(rng) for _ in range(200)]
        assert all(len(info.applied) == cap for info in draws)
        assert all(list(info.applied) == [t for t in TRANSFORMS if t in info.applied] for info in draws)
        assert {t for info in draws for t in info.applied} == set(TRANSFORMS)   # every transform reachable


def test_probabilities_are_respected():
    augmenter = Augmenter(config(p_noise=0.3, p_gain=0.7, max_transforms=6))
    rng = np.random.default_rng(0)
    draws = [augmenter.sample(rng).applied for _ in range(4000)]
    assert np.mean(["noise" in a for a in draws]) == pytest.approx(0.3, abs=0.03)
    assert np.mean(["gain" in a for a in draws]) == pytest.approx(0.7, abs=0.03)
    assert not any(set(a) - {"noise", "gain"} for a in draws)


def test_output_contract_over_random_draws(audio):
    augmenter = Augmenter(AugmentConfig(p_mp3=0.5))
    rng = np.random.default_rng(7)
    for _ in range(12):
        y, info = augmenter(audio, SR, rng)
        assert y.dtype == np.float32 and y.ndim == 1 and np.all(np.isfinite(y))
        assert peak_dbfs(y) == pytest.approx(C.PEAK_TARGET_DBFS, abs=1e-3)
        assert len(y) == round(len(audio) / info.time_stretch_rate)
        assert len(info.applied) <= augmenter.cfg.max_transforms


def test_disabled_returns_the_normalised_input(audio):
    y, info = Augmenter(AugmentConfig(enabled=False))(audio * 0.1, SR, np.random.default_rng(0))
    assert info == AugmentInfo() and info.describe() == ""
    np.testing.assert_allclose(y, peak_normalise(audio * 0.1), atol=1e-7)


def test_bad_input_raises(audio):
    augmenter = Augmenter(AugmentConfig())
    rng = np.random.default_rng(0)
    with pytest.raises(AudioError, match="NaN"):
        augmenter(np.r_[audio, np.nan], SR, rng)
    with pytest.raises(AudioError, match="silence"):
        augmenter(np.zeros(SR, np.float32), SR, rng)
    with pytest.raises(AudioError, match="mono"):
        augmenter(np.stack([audio, audio]), SR, rng)
    with pytest.raises(ValueError, match="no standard MP3 bitrate"):
        Augmenter(AugmentConfig(mp3_kbps_min=330, mp3_kbps_max=400))


def test_describe_lists_parameters_in_order():
    info = AugmentInfo(pitch_shift_semitones=-2, time_stretch_rate=1.1, gain_db=-3.25, noise_snr_db=31.04,
                       room_index=3, mp3_kbps=192, applied=("pitch_shift", "time_stretch", "reverb", "gain",
                                                            "noise", "mp3"))
    assert info.describe() == ("pitch_shift=-2st,time_stretch=1.100x,reverb=room3,gain=-3.2dB,noise=31.0dB,"
                               "mp3=192kbps")


# --- each transform ----------------------------------------------------------------------------

@pytest.mark.parametrize("semitones", [-2, -1, 1, 2])
def test_pitch_shift_moves_a_sine_by_the_ratio(semitones):
    t = np.arange(2 * SR) / SR
    y = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    out = pitch_time_shift(y, SR, semitones=semitones)
    assert len(out) == len(y)
    measured = dominant_hz(out[SR // 2: 3 * SR // 2])
    assert measured == pytest.approx(440.0 * 2 ** (semitones / 12), rel=0.005)


def test_pitch_shift_draws_whole_nonzero_semitones(audio):
    augmenter = Augmenter(config(p_pitch_shift=1.0))
    shifts = {augmenter.sample(np.random.default_rng(s)).pitch_shift_semitones for s in range(60)}
    assert shifts == {-2, -1, 1, 2}


@pytest.mark.parametrize("rate", [0.85, 1.0, 1.07, 1.15])
def test_time_stretch_changes_duration_and_onsets_by_the_rate(audio, rate):
    out = pitch_time_shift(audio, SR, rate=rate)
    assert len(out) == round(len(audio) / rate)
    before, after = burst_onsets(audio), burst_onsets(out)
    assert len(after) == len(before)
    np.testing.assert_allclose(after, before / rate, atol=0.015)          # Signalsmith: < 15 ms, no drift


def test_noise_snr_is_as_drawn(audio):
    augmenter = Augmenter(config(p_noise=1.0))
    for seed in range(5):
        y, info = augmenter(audio, SR, np.random.default_rng(seed))
        assert 25.0 <= info.noise_snr_db <= 40.0 and info.applied == ("noise",)
        scale = np.dot(y, audio) / np.dot(audio, audio)       # output = normalise(audio + noise)
        residual = y - scale * audio
        snr = 10 * np.log10(np.mean((scale * audio) ** 2) / np.mean(residual ** 2))
        assert snr == pytest.approx(info.noise_snr_db, abs=0.3)


def test_add_noise_is_white_and_seeded(audio):
    a = add_noise(audio, 30.0, np.random.default_rng(1)) - audio
    b = add_noise(audio, 30.0, np.random.default_rng(1)) - audio
    assert np.array_equal(a, b)
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < 0.02                   # white: no lag-1 correlation


def test_gain_is_drawn_within_range_and_neutral_after_renormalisation(audio):
    augmenter = Augmenter(config(p_gain=1.0))
    gains = []
    for seed in range(30):
        y, info = augmenter(audio, SR, np.random.default_rng(seed))
        gains.append(info.gain_db)
        np.testing.assert_allclose(y, peak_normalise(audio), atol=2e-6)
    assert -6.0 <= min(gains) < -2.0 and 2.0 < max(gains) <= 6.0
    np.testing.assert_allclose(apply_gain(audio, -6.0), audio * 10 ** (-6 / 20), rtol=1e-6)


def test_generated_rooms():
    specs = room_specs(8, seed=0)
    assert specs == room_specs(8, seed=0) and specs != room_specs(8, seed=1)
    rt60 = [s.rt60_s for s in specs]
    assert rt60 == sorted(rt60) and rt60[0] < 0.3 and rt60[-1] > 1.9
    for spec in (specs[0], specs[4], specs[-1]):
        rir = room_impulse_response(spec, SR, seed=0)
        assert rir[0] == 1.0 and np.all(np.isfinite(rir))
        reverberant = rir.copy()
        reverberant[0] = 0.0
        assert 10 * np.log10(1.0 / np.sum(reverberant ** 2)) == pytest.approx(spec.drr_db, abs=1e-6)
        low = scipy.signal.sosfiltfilt(scipy.signal.butter(4, 500, fs=SR, output="sos"), reverberant)
        decay = np.cumsum(low[::-1] ** 2)[::-1]
        decay_db = 10 * np.log10(decay / decay[0])
        t20 = (np.argmax(decay_db < -25) - np.argmax(decay_db < -5)) / SR
        assert 3 * t20 == pytest.approx(spec.rt60_s, rel=0.15)          # low-band RT60 from T20


def test_reverb_keeps_onsets_and_adds_a_tail(audio):
    augmenter = Augmenter(config(p_reverb=1.0))
    rir = augmenter.room_impulse_response(len(augmenter.rooms) - 1, SR)
    out = apply_room(audio, rir)
    assert len(out) == len(audio)
    assert burst_onsets(out)[0] == pytest.approx(burst_onsets(audio)[0], abs=0.001)   # direct path at t = 0
    lags = scipy.signal.correlation_lags(len(out), len(audio))
    assert abs(lags[np.argmax(scipy.signal.correlate(out, audio))]) <= 2        # samples
    gap = slice(int(0.85 * SR), int(0.95 * SR))                 # silence after the first note
    assert np.sqrt(np.mean(out[gap] ** 2)) > 1.5 * np.sqrt(np.mean(audio[gap] ** 2))
    y, info = augmenter(audio, SR, np.random.default_rng(0))
    assert info.applied == ("reverb",) and 0 <= info.room_index < 8


def test_mp3_roundtrip_is_aligned_and_lossy(audio):
    out = mp3_roundtrip(audio, SR, 128)
    assert len(out) == len(audio) and out.dtype == np.float32
    lags = scipy.signal.correlation_lags(len(out), len(audio))
    assert lags[np.argmax(scipy.signal.correlate(out, audio))] == 0
    error_db = 10 * np.log10(np.mean((out - audio) ** 2) / np.mean(audio ** 2))
    assert -60.0 < error_db < -15.0                                       # changed, but still the music


def test_mp3_rates_and_bitrates():
    t = np.arange(SR) / 96_000
    y = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    assert len(mp3_roundtrip(y, 96_000, 192)) == len(y)                  # resampled around the codec
    assert effective_mp3_kbps(320, 24_000) == 160 and effective_mp3_kbps(320, 44_100) == 320
    augmenter = Augmenter(config(p_mp3=1.0))
    kbps = {augmenter(y[:24_000], 24_000, np.random.default_rng(s))[1].mp3_kbps for s in range(6)}
    assert kbps <= {128, 160}
    drawn = {augmenter.sample(np.random.default_rng(s)).mp3_kbps for s in range(80)}
    assert drawn == {128, 160, 192, 224, 256, 320}


# --- labels ------------------------------------------------------------------------------------

def test_transform_perf_notes_and_pedal():
    notes = make_perf_notes([0.5, 1.0, 2.0], [0.9, 1.5, 2.4], [60, 107, 22], [70, 80, 90])
    info = AugmentInfo(pitch_shift_semitones=2, time_stretch_rate=1.25, applied=("pitch_shift", "time_stretch"))
    out = transform_perf_notes(notes, info)
    assert out.dtype == notes.dtype
    np.testing.assert_array_equal(out["pitch"], [62, 108, 24])           # 107 + 2 clipped to C8
    np.testing.assert_allclose(out["onset_s"], [0.4, 0.8, 1.6])
    np.testing.assert_allclose(out["offset_s"], [0.72, 1.2, 1.92])
    np.testing.assert_array_equal(out["velocity"], notes["velocity"])
    down = transform_perf_notes(notes, dataclasses.replace(info, pitch_shift_semitones=-2))
    assert down["pitch"][2] == 21                                          # 22 - 2 = 20, clipped to A0
    pedal = np.array([(0.5, 64, 127), (1.5, 64, 0)], dtype=PEDAL_DTYPE)
    np.testing.assert_allclose(transform_pedal(pedal, info)["time_s"], [0.4, 1.2])
    assert notes["onset_s"][0] == 0.5                                      # inputs untouched


def test_transform_score_notes_changes_pitch_only():
    score = np.zeros(2, dtype=SCORE_NOTE_DTYPE)
    score["pitch"], score["onset_s"], score["onset_beat"], score["duration_s"] = [60, 108], [0.0, 1.0], [0, 2], 0.5
    info = AugmentInfo(pitch_shift_semitones=1, time_stretch_rate=0.9, applied=("pitch_shift", "time_stretch"))
    out = transform_score_notes(score, info)
    np.testing.assert_array_equal(out["pitch"], [61, 108])
    for field in ("onset_s", "onset_beat", "duration_s"):
        np.testing.assert_array_equal(out[field], score[field])


def test_label_transforms_reject_wrong_arrays(notes):
    info = AugmentInfo()
    with pytest.raises(ValueError, match="transform_perf_notes"):
        transform_perf_notes(np.zeros(3), info)
    with pytest.raises(ValueError, match="transform_pedal"):
        transform_pedal(notes, info)
    with pytest.raises(ValueError, match="transform_score_notes"):
        transform_score_notes(notes, info)


def test_audio_and_labels_move_together(notes, audio):
    """After pitch shift + time stretch, each transformed note's onset and pitch are where the audio is."""
    info = AugmentInfo(pitch_shift_semitones=2, time_stretch_rate=1.12, applied=("pitch_shift", "time_stretch"))
    y = Augmenter(AugmentConfig()).apply(audio, SR, info)
    moved = transform_perf_notes(notes, info)
    np.testing.assert_allclose(burst_onsets(y), moved["onset_s"], atol=0.015)
    for note in moved:
        segment = y[int((note["onset_s"] + 0.03) * SR): int((note["onset_s"] + 0.25) * SR)]
        assert dominant_hz(segment) == pytest.approx(midi_hz(note["pitch"]), rel=0.01)
