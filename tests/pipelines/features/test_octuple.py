"""OctupleMIDI: vocabulary bounds, quantisation, exact score round trips at 24 ticks per quarter, and
the tokens of an alignment (matched, missed and extra notes)."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_alignment import PerformanceStyle, add_errors, render_performance, synthetic_score
from pipelines.constants import (
    OCTUPLE_MAX_BARS,
    OCTUPLE_N_SPECIAL,
    OCTUPLE_TICKS_PER_QUARTER,
    OCTUPLE_VOCAB_SIZES,
)
from pipelines.features.align import align, nearest_matched_score_note
from pipelines.features.octuple import (
    FIELD_INDEX,
    TYPE_BOS,
    TYPE_EOS,
    TYPE_EXTRA,
    TYPE_MISSED,
    TYPE_NOTE,
    add_bos_eos,
    bar_length_beats,
    decode_fields,
    decode_score,
    encode_alignment,
    encode_fields,
    encode_score,
    normalised_velocity,
    time_signature_from_index,
    time_signature_index,
)
from pipelines.io.notes import EXTRA, MATCHED, MISSED, SCORE_NOTE_DTYPE, Score

# grid steps in quarter notes: 32nd, 16th triplet, 16th, 8th triplet, 8th, quarter
GRID_STEPS = (1 / 8, 1 / 6, 1 / 4, 1 / 3, 1 / 2, 1.0)


def random_score(rng: np.random.Generator, signatures: list[tuple[int, int]], notes_per_bar: int = 6,
                 tempo_qpm: float = 96.0) -> Score:
    """A quantised score: bars with the given time signatures, notes on 32nd/triplet grids."""
    rows = []
    bar_starts = np.concatenate([[0.0], np.cumsum([bar_length_beats(n, d) for n, d in signatures])])
    for bar, (num, den) in enumerate(signatures):
        length = float(bar_length_beats(num, den))
        for _ in range(notes_per_bar):
            step = GRID_STEPS[rng.integers(len(GRID_STEPS))]
            position = step * rng.integers(int(np.floor(length / step - 1e-9)) + 1)
            position = min(position, length - step)
            duration = step * rng.integers(1, 7)
            rows.append((bar_starts[bar] + position, duration, rng.integers(21, 109), rng.integers(20, 120),
                         bar, position, num, den))
    rows.sort(key=lambda r: (r[0], r[2]))
    notes = np.zeros(len(rows), dtype=SCORE_NOTE_DTYPE)
    for i, (onset, dur, pitch, vel, bar, pos, num, den) in enumerate(rows):
        notes[i] = (onset, dur, onset * 60 / tempo_qpm, dur * 60 / tempo_qpm, pitch, vel, bar, pos, num, den, 0, i, 0)
    return Score(notes=notes, bar_starts_beat=bar_starts[:-1], tempo_qpm=tempo_qpm)


def assert_scores_equal(decoded: np.ndarray, original: np.ndarray, fields=None) -> None:
    fields = fields or ("onset_beat", "duration_beat", "onset_s", "duration_s", "pitch", "velocity", "bar",
                        "position_beat", "ts_num", "ts_den", "id")
    assert len(decoded) == len(original)
    for name in fields:
        np.testing.assert_allclose(decoded[name], original[name], atol=1e-9, err_msg=name)


def test_vocabulary_bounds_hold_for_extreme_inputs(rng):
    n = 500
    tokens = encode_fields(rng.integers(0, 5, n), rng.integers(-5, 1000, n), rng.uniform(-2, 100, n),
                           rng.integers(0, 128, n), rng.uniform(-1, 100, n), rng.integers(-10, 200, n),
                           rng.integers(0, 129, n), rng.integers(1, 30, n), rng.choice([1, 2, 3, 4, 8, 64], n))
    assert tokens.shape == (n, 8) and tokens.dtype == np.int64
    assert (tokens >= OCTUPLE_N_SPECIAL).all()
    assert (tokens < np.asarray(OCTUPLE_VOCAB_SIZES)).all()


def test_scalars_broadcast_and_fields_decode():
    tokens = encode_fields(TYPE_NOTE, [0, 1, 300], [0.0, 1 / 3, 2.125], [20, 60, 120], [1 / 8, 4 / 3, 100],
                           [64, 100, 200], 0, [4, 6, 7], [4, 8, 3])
    fields = decode_fields(tokens)
    assert fields["type"].tolist() == [TYPE_NOTE] * 3
    assert fields["bar"].tolist() == [0, 1, OCTUPLE_MAX_BARS - 1]
    np.testing.assert_allclose(fields["position_beat"], [0.0, 1 / 3, 2.125])
    assert fields["pitch"].tolist() == [21, 60, 108]                    # clipped to the piano
    np.testing.assert_allclose(fields["duration_beat"], [0.125, 4 / 3, 16.0])  # longest is 16 quarters
    assert fields["velocity"].tolist() == [64, 100, 127]
    assert fields["ts_num"].tolist() == [4, 6, 7] and fields["ts_den"].tolist() == [4, 8, 4]


def test_positions_quantise_to_the_nearest_tick():
    off_grid = 1.0 + 0.4 / OCTUPLE_TICKS_PER_QUARTER
    fields = decode_fields(encode_fields(TYPE_NOTE, 0, [off_grid, 1.0 + 0.6 / OCTUPLE_TICKS_PER_QUARTER],
                                         60, 1.0, 64, 0, 4, 4))
    np.testing.assert_allclose(fields["position_beat"], [1.0, 1.0 + 1 / OCTUPLE_TICKS_PER_QUARTER])


def test_time_signature_index_round_trips_and_maps_unsupported():
    nums, dens = np.meshgrid(np.arange(1, 17), [1, 2, 4, 8, 16, 32])
    index = time_signature_index(nums.ravel(), dens.ravel())
    assert len(set(index.tolist())) == 96 and index.min() == 0 and index.max() == 95
    back_num, back_den = time_signature_from_index(index)
    assert (back_num == nums.ravel()).all() and (back_den == dens.ravel()).all()
    assert time_signature_from_index(time_signature_index(20, 64)) == (16, 32)
    assert time_signature_from_index(time_signature_index(5, 7))[1] == 8


def test_special_and_bos_eos_tokens_decode_as_missing():
    tokens = add_bos_eos(encode_fields([TYPE_NOTE, TYPE_MISSED, TYPE_EXTRA], 0, 0.0, 60, 1.0, 64, 0, 4, 4))
    fields = decode_fields(tokens)
    assert fields["type"].tolist() == [TYPE_BOS, TYPE_NOTE, TYPE_MISSED, TYPE_EXTRA, TYPE_EOS]
    assert fields["pitch"][0] == -1 and np.isnan(fields["position_beat"][-1])
    masked = tokens.copy()
    masked[2, 3] = 1                                                    # MASK the pitch of one note
    assert decode_fields(masked)["pitch"][2] == -1
    # decode_score keeps score notes (NOTE, MISSED) and drops BOS/EOS/EXTRA
    assert len(decode_score(tokens, 120.0)) == 2


@pytest.mark.parametrize("signatures", [
    [(4, 4)] * 8,
    [(3, 4)] * 4 + [(6, 8)] * 4 + [(4, 4)] * 4,
    [(2, 2), (5, 8), (7, 8), (3, 8), (12, 8), (2, 4)],
])
def test_generated_score_round_trips_exactly(rng, signatures):
    score = random_score(rng, signatures)
    tokens = encode_score(score)
    assert tokens.shape == (len(score.notes), 8)
    assert_scores_equal(decode_score(tokens, score.tempo_qpm), score.notes)


def test_round_trip_through_bar_offset_and_empty_bars(rng):
    score = random_score(rng, [(3, 4)] * 3 + [(6, 8)] * 5)
    keep = (score.notes["bar"] != 4) & (score.notes["bar"] >= 2)      # a window of bars 2..7, bar 4 empty
    window = score.notes[keep]
    tokens = encode_score(Score(window, score.bar_starts_beat, score.tempo_qpm), bar_offset=2)
    decoded = decode_score(tokens, score.tempo_qpm)
    assert decoded["bar"].min() == 0
    np.testing.assert_allclose(decoded["onset_beat"], window["onset_beat"] - score.bar_starts_beat[2], atol=1e-9)
    np.testing.assert_array_equal(decoded["pitch"], window["pitch"])


def test_pickup_bar_round_trips_with_bar_starts(rng):
    score = random_score(rng, [(4, 4)] * 4)
    shifted = score.notes.copy()
    # turn bar 0 into a one-beat pickup: keep only notes in its last beat, move them to the bar start
    shifted = shifted[(shifted["bar"] > 0) | (shifted["position_beat"] >= 3)]
    shifted["position_beat"][shifted["bar"] == 0] -= 3
    shifted["onset_beat"] -= 3
    bar_starts = np.array([0.0, 1.0, 5.0, 9.0])
    tokens = encode_score(Score(shifted, bar_starts, score.tempo_qpm))
    decoded = decode_score(tokens, score.tempo_qpm, bar_starts_beat=bar_starts)
    np.testing.assert_allclose(decoded["onset_beat"], shifted["onset_beat"], atol=1e-9)


def test_encode_score_uses_given_velocities(rng):
    score = random_score(rng, [(4, 4)] * 2)
    velocity = np.arange(len(score.notes)) % 128
    assert (decode_fields(encode_score(score, velocity=velocity))["velocity"] == velocity).all()
    with pytest.raises(ValueError, match="velocities"):
        encode_score(score, velocity=velocity[:-1])


def test_normalised_velocity():
    assert normalised_velocity(127) == 1.0 and normalised_velocity(0) == 0.0
    np.testing.assert_allclose(normalised_velocity(np.array([-5, 63.5, 300])), [0.0, 0.5, 1.0])


# --- real and generated notation through pipelines.io.notation ------------------------------------------
CORPUS_PIECES = ("joplin/maple_leaf_rag", "mozart/k545", "bach/bwv846", "schumann_clara/polonaise_op1n1",
                 "schoenberg/opus19/movement2")


@pytest.mark.parametrize("piece", CORPUS_PIECES)
def test_music21_corpus_scores_round_trip_exactly(piece):
    """Real quantised scores: every onset/duration lies on the 24-tick grid, so encode -> decode is exact."""
    from music21 import corpus

    from pipelines.io.notation import load_score

    score = load_score(str(corpus.getWork(piece)))
    notes = score.notes
    assert np.allclose(notes["position_beat"] * OCTUPLE_TICKS_PER_QUARTER,
                       np.round(notes["position_beat"] * OCTUPLE_TICKS_PER_QUARTER), atol=1e-6)
    decoded = decode_score(encode_score(score), score.tempo_qpm, bar_starts_beat=score.bar_starts_beat)
    assert_scores_equal(decoded, notes, fields=("onset_beat", "duration_beat", "pitch", "bar", "position_beat",
                                                "ts_num", "ts_den", "velocity", "id"))
    np.testing.assert_allclose(decoded["onset_s"], notes["onset_beat"] * 60 / score.tempo_qpm, atol=1e-9)


def test_generated_musicxml_with_tuplets_and_32nds_round_trips(tmp_path):
    from fractions import Fraction

    from music21 import meter, note, stream

    from pipelines.io.notation import load_score

    bars = [("3/4", [Fraction(1, 3)] * 3 + [Fraction(1, 8)] * 8 + [Fraction(1)]),
            ("6/8", [Fraction(1, 2)] * 3 + [Fraction(1, 6)] * 6 + [Fraction(1, 2)]),
            ("4/4", [Fraction(2, 3)] * 3 + [Fraction(1, 8)] * 8 + [Fraction(1)]),
            ("4/4", [Fraction(4)])]
    part = stream.Part()
    for i, (ts, lengths) in enumerate(bars):
        measure = stream.Measure(number=i + 1)
        if i == 0 or ts != bars[i - 1][0]:
            measure.append(meter.TimeSignature(ts))
        for k, length in enumerate(lengths):
            measure.append(note.Note(48 + (5 * k + 7 * i) % 40, quarterLength=length))
        part.append(measure)
    path = tmp_path / "tuplets.musicxml"
    stream.Score([part]).write("musicxml", fp=str(path))
    score = load_score(str(path))
    assert score.n_bars == 4
    assert sorted(set(zip(score.notes["ts_num"].tolist(), score.notes["ts_den"].tolist()))) == [(3, 4), (4, 4), (6, 8)]
    tokens = encode_score(score)
    assert_scores_equal(decode_score(tokens, score.tempo_qpm), score.notes,
                        fields=("onset_beat", "duration_beat", "pitch", "bar", "position_beat", "ts_num", "ts_den"))


# --- tokens of an alignment -----------------------------------------------------------------------------
def generated_performance(seed: int = 0, style: PerformanceStyle = PerformanceStyle(), errors=(0, 0, 0),
                          n_bars: int = 12):
    """A generated score and its rendered performance with (missed, extra, wrong) inserted errors."""
    rng = np.random.default_rng(seed)
    sp = render_performance(synthetic_score(rng, n_bars=n_bars), style, rng)
    return add_errors(sp, rng, *errors)


def test_encode_alignment_encodes_matched_missed_and_extra_notes():
    sp = generated_performance(9, errors=(2, 2, 0))
    al = align(sp.score, sp.perf)
    tok = encode_alignment(sp.score, sp.perf, al, bar_offset=0)
    assert tok.shape == (al.n_tokens, 8) and tok.dtype == np.int64
    kind = al.tokens["kind"]
    types = tok[:, FIELD_INDEX["type"]] - OCTUPLE_N_SPECIAL
    np.testing.assert_array_equal(types, np.select([kind == MATCHED, kind == MISSED], [TYPE_NOTE, TYPE_MISSED],
                                                   TYPE_EXTRA))
    velocity = tok[:, FIELD_INDEX["velocity"]] - OCTUPLE_N_SPECIAL
    matched = kind == MATCHED
    np.testing.assert_array_equal(velocity[matched], sp.perf.notes["velocity"][al.tokens["perf_index"][matched]])
    assert np.all(velocity[kind == MISSED] == 0)
    bars = tok[:, FIELD_INDEX["bar"]] - OCTUPLE_N_SPECIAL
    np.testing.assert_array_equal(bars[kind != EXTRA], sp.score.notes["bar"][al.tokens["score_index"][kind != EXTRA]])
    extra = np.flatnonzero(kind == EXTRA)
    assert len(extra) == 2 and np.sum(kind == MISSED) == 2      # the inserted errors, found
    pairs = al.matched_pairs
    anchor = nearest_matched_score_note(al.tokens["perf_onset_s"][extra], sp.perf.notes["onset_s"][pairs[:, 1]],
                                        pairs[:, 0])
    np.testing.assert_array_equal(bars[extra], sp.score.notes["bar"][anchor])
    np.testing.assert_array_equal(tok[extra, FIELD_INDEX["pitch"]] - OCTUPLE_N_SPECIAL + 21,
                                  sp.perf.notes["pitch"][al.tokens["perf_index"][extra]])
    shifted = encode_alignment(sp.score, sp.perf, al, bar_offset=2)
    later = bars >= 2
    np.testing.assert_array_equal(shifted[later, FIELD_INDEX["bar"]], tok[later, FIELD_INDEX["bar"]] - 2)
