"""OctupleMIDI tokens: one 8-field token per note, after MusicBERT (Zeng et al., 2021).

A token is a row of 8 integers, one per field of `OCTUPLE_FIELDS`. Every field reserves
0 = PAD and 1 = MASK, and stores a value v as v + OCTUPLE_N_SPECIAL (= v + 2). The vocabulary of
each field (sizes in `OCTUPLE_VOCAB_SIZES`, values before the +2 shift):

| # | field | values | meaning |
| --- | --- | --- | --- |
| 0 | type | 0..4 | 0 BOS, 1 EOS, 2 NOTE (played / plain score note), 3 MISSED (score only), 4 EXTRA (performance only) |
| 1 | bar | 0..OCTUPLE_MAX_BARS-1 | bar relative to the window's first bar (later bars clipped to the last) |
| 2 | position | 0..OCTUPLE_MAX_POSITION_TICKS-1 | onset within the bar in ticks, OCTUPLE_TICKS_PER_QUARTER per quarter note |
| 3 | pitch | 0..87 | MIDI pitch - 21 (piano range A0..C8; outside pitches are clipped) |
| 4 | duration | 0..OCTUPLE_MAX_DURATION_TICKS | duration in ticks (0 = grace note; longer notes clipped) |
| 5 | velocity | 0..127 | MIDI velocity |
| 6 | instrument | 0..128 | General MIDI program, 128 = drums (0 = piano here) |
| 7 | time_signature | 0..95 | (numerator-1) * 6 + index of the denominator in OCTUPLE_TS_DENOMINATORS |

The 8th field is our choice: MusicBERT's 8th field is tempo; here the time signature in force
(numerators 1..16, denominators 1..32; others map to the nearest supported one) and tempo is left
to the performance attributes. At 24 ticks per quarter, 32nd notes (3 ticks), 16th-note triplets
(4 ticks) and 8th-note triplets (8 ticks) are exact.

`encode_score` yields one token per score note, in score order, with no BOS/EOS (so row i of the
tokens is note i and lines up with per-note performance attributes); `encode_alignment` yields one
token per alignment token (`pipelines.features.align`: matched, missed and extra notes, in the
alignment's order, so row i lines up with `pipelines.features.attributes.note_attributes`);
`add_bos_eos` frames a sequence. BOS and EOS rows carry their type and PAD in every other field.
"""
from __future__ import annotations

import numpy as np

from pipelines.constants import (
    OCTUPLE_FIELDS,
    OCTUPLE_MAX_BARS,
    OCTUPLE_MAX_DURATION_TICKS,
    OCTUPLE_MAX_POSITION_TICKS,
    OCTUPLE_N_INSTRUMENTS,
    OCTUPLE_N_SPECIAL,
    OCTUPLE_TICKS_PER_QUARTER,
    OCTUPLE_TS_DENOMINATORS,
    OCTUPLE_TS_MAX_NUMERATOR,
    PIANO_MAX_PITCH,
    PIANO_MIN_PITCH,
)
from pipelines.features.align import Alignment, local_tempo, nearest_matched_score_note
from pipelines.io.notes import EXTRA, MATCHED, MISSED, SCORE_NOTE_DTYPE, Performance, Score

TYPE_BOS, TYPE_EOS, TYPE_NOTE, TYPE_MISSED, TYPE_EXTRA = 0, 1, 2, 3, 4
PAD, MASK = 0, 1
N_FIELDS = len(OCTUPLE_FIELDS)
FIELD_INDEX = {name: i for i, name in enumerate(OCTUPLE_FIELDS)}
PIANO_PROGRAM = 0
DEFAULT_VELOCITY = 64
_N_DENOMINATORS = len(OCTUPLE_TS_DENOMINATORS)
_LOG2_DENOMINATORS = np.log2(np.asarray(OCTUPLE_TS_DENOMINATORS, dtype=np.float64))


def beats_to_ticks(beats: np.ndarray | float) -> np.ndarray:
    """Quarter notes -> nearest tick on the OCTUPLE_TICKS_PER_QUARTER grid (half rounds up), int64."""
    return np.floor(np.asarray(beats, dtype=np.float64) * OCTUPLE_TICKS_PER_QUARTER + 0.5).astype(np.int64)


def ticks_to_beats(ticks: np.ndarray | int) -> np.ndarray:
    """Ticks -> quarter notes, float64."""
    return np.asarray(ticks, dtype=np.float64) / OCTUPLE_TICKS_PER_QUARTER


def quantise_beats(beats: np.ndarray | float) -> np.ndarray:
    """Round quarter-note values to the token grid (what a token stores), float64."""
    return ticks_to_beats(beats_to_ticks(beats))


def time_signature_index(ts_num: np.ndarray | int, ts_den: np.ndarray | int) -> np.ndarray:
    """Time signature -> field value (numerator-1)*6 + denominator index, int64.

    Numerators are clipped to 1..OCTUPLE_TS_MAX_NUMERATOR; a denominator that is not a supported
    power of two maps to the nearest one on a log scale (e.g. 3 -> 2 or 4, 64 -> 32).
    """
    num = np.clip(np.asarray(ts_num, dtype=np.int64), 1, OCTUPLE_TS_MAX_NUMERATOR)
    den = np.maximum(np.asarray(ts_den, dtype=np.float64), 1.0)
    den_index = np.abs(np.log2(den)[..., None] - _LOG2_DENOMINATORS).argmin(axis=-1)
    return (num - 1) * _N_DENOMINATORS + den_index


def time_signature_from_index(index: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `time_signature_index`: (numerator, denominator) int64 arrays."""
    index = np.asarray(index, dtype=np.int64)
    num = index // _N_DENOMINATORS + 1
    den = np.asarray(OCTUPLE_TS_DENOMINATORS, dtype=np.int64)[index % _N_DENOMINATORS]
    return num, den


def bar_length_beats(ts_num: np.ndarray | int, ts_den: np.ndarray | int) -> np.ndarray:
    """Length of a full bar in quarter notes: num * 4 / den, float64."""
    return np.asarray(ts_num, dtype=np.float64) * 4.0 / np.asarray(ts_den, dtype=np.float64)


def normalised_velocity(velocity: np.ndarray | float) -> np.ndarray | float:
    """MIDI velocity -> 0..1 (velocity / 127, clipped). A scalar in gives a float out."""
    out = np.clip(np.asarray(velocity, dtype=np.float64) / 127.0, 0.0, 1.0)
    return float(out) if out.ndim == 0 else out


def encode_fields(type, bar, position_beat, pitch, duration_beat, velocity, instrument,
                  ts_num, ts_den) -> np.ndarray:
    """Raw note fields -> tokens, int64 [n, 8]. Every argument is a 1-D array or a scalar (broadcast).

    type: TYPE_* values. bar: bar index relative to the window (clipped to 0..OCTUPLE_MAX_BARS-1).
    position_beat / duration_beat: quarter notes, quantised to the tick grid and clipped to the
    field's range. pitch: MIDI, clipped to 21..108. velocity: 0..127. instrument: GM program 0..128.
    ts_num / ts_den: the time signature in force (mapped to the nearest supported one).
    """
    columns = np.broadcast_arrays(*(np.atleast_1d(np.asarray(a)) for a in (
        type, bar, position_beat, pitch, duration_beat, velocity, instrument, ts_num, ts_den)))
    t, b, pos, p, dur, vel, ins, num, den = columns
    values = np.stack([
        np.clip(t.astype(np.int64), 0, TYPE_EXTRA),
        np.clip(b.astype(np.int64), 0, OCTUPLE_MAX_BARS - 1),
        np.clip(beats_to_ticks(pos), 0, OCTUPLE_MAX_POSITION_TICKS - 1),
        np.clip(np.rint(p).astype(np.int64), PIANO_MIN_PITCH, PIANO_MAX_PITCH) - PIANO_MIN_PITCH,
        np.clip(beats_to_ticks(dur), 0, OCTUPLE_MAX_DURATION_TICKS),
        np.clip(np.rint(vel).astype(np.int64), 0, 127),
        np.clip(ins.astype(np.int64), 0, OCTUPLE_N_INSTRUMENTS - 1),
        time_signature_index(num, den),
    ], axis=1)
    return values + OCTUPLE_N_SPECIAL


def special_tokens(token_type: int, n: int = 1) -> np.ndarray:
    """n BOS or EOS rows: the type field set, PAD elsewhere, int64 [n, 8]."""
    rows = np.full((n, N_FIELDS), PAD, dtype=np.int64)
    rows[:, FIELD_INDEX["type"]] = token_type + OCTUPLE_N_SPECIAL
    return rows


def add_bos_eos(tokens: np.ndarray) -> np.ndarray:
    """Frame a token sequence [n, 8] with a BOS row before and an EOS row after -> [n + 2, 8]."""
    return np.concatenate([special_tokens(TYPE_BOS), np.asarray(tokens, dtype=np.int64),
                           special_tokens(TYPE_EOS)])


def decode_fields(tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Tokens [n, 8] -> per-field arrays [n], inverse of `encode_fields` up to quantisation.

    Keys: type, bar, position_beat, pitch, duration_beat, velocity, instrument, ts_num, ts_den.
    Integer fields are int64 with -1 where the token holds PAD or MASK; beat fields are float64
    quarter notes with NaN there (ts_num/ts_den are -1 when the time-signature field is special).
    """
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1, N_FIELDS)
    values = tokens - OCTUPLE_N_SPECIAL
    special = tokens < OCTUPLE_N_SPECIAL

    def ints(i: int, offset: int = 0) -> np.ndarray:
        return np.where(special[:, i], -1, values[:, i] + offset)

    def beats(i: int) -> np.ndarray:
        return np.where(special[:, i], np.nan, ticks_to_beats(values[:, i]))

    ts = FIELD_INDEX["time_signature"]
    num, den = time_signature_from_index(np.maximum(values[:, ts], 0))
    return {
        "type": ints(0), "bar": ints(1), "position_beat": beats(2), "pitch": ints(3, PIANO_MIN_PITCH),
        "duration_beat": beats(4), "velocity": ints(5), "instrument": ints(6),
        "ts_num": np.where(special[:, ts], -1, num), "ts_den": np.where(special[:, ts], -1, den),
    }


def encode_score(score: Score, bar_offset: int = 0, velocity: np.ndarray | None = None) -> np.ndarray:
    """A score's notes -> TYPE_NOTE tokens, int64 [n_notes, 8], row i = score.notes[i].

    bar_offset: subtracted from each note's bar (the window's first bar), so bars are relative.
    velocity: optional int [n_notes] (e.g. performed velocities); default the score's velocities.
    """
    notes = score.notes
    if velocity is not None and len(velocity) != len(notes):
        raise ValueError(f"encode_score: {len(velocity)} velocities for {len(notes)} notes")
    if len(notes) == 0:
        return np.zeros((0, N_FIELDS), dtype=np.int64)
    return encode_fields(TYPE_NOTE, notes["bar"].astype(np.int64) - bar_offset, notes["position_beat"],
                         notes["pitch"], notes["duration_beat"],
                         notes["velocity"] if velocity is None else velocity,
                         PIANO_PROGRAM, notes["ts_num"], notes["ts_den"])


def encode_alignment(score: Score, perf: Performance, alignment: Alignment, bar_offset: int = 0) -> np.ndarray:
    """i8 [n_tokens, 8]: OctupleMIDI rows of the alignment tokens, bars relative to `bar_offset`.

    Matched: NOTE with the score's bar/position/pitch/duration and the performed velocity. Missed: MISSED
    with score fields and velocity 0. Extra: EXTRA at the bar/position/time signature of the matched note
    nearest in performed time, with the performed pitch, velocity and duration (seconds / local spb).
    """
    tok, sn, pn = alignment.tokens, score.notes, perf.notes
    n = len(tok)
    ref = tok["score_index"].astype(np.int64)
    extra = tok["kind"] == EXTRA
    pairs = alignment.matched_pairs
    ref[extra] = nearest_matched_score_note(tok["perf_onset_s"][extra], pn["onset_s"][pairs[:, 1]], pairs[:, 0])
    has_ref = ref >= 0
    safe = np.where(has_ref, ref, 0)

    def field(name: str, default: float) -> np.ndarray:
        """The referenced score note's `name` per token [n]; `default` where there is none."""
        return np.where(has_ref, sn[name][safe], default) if len(sn) else np.full(n, default)

    duration = field("duration_beat", 0.0).astype(np.float64)
    velocity = np.zeros(n, dtype=np.int64)
    played = tok["perf_index"] >= 0
    velocity[played] = pn["velocity"][tok["perf_index"][played]]
    if extra.any():
        tempo = local_tempo(score, perf, alignment)
        e = pn[tok["perf_index"][extra]]
        duration[extra] = (e["offset_s"] - e["onset_s"]) / tempo.spb_at_time(e["onset_s"])
    token_type = np.select([tok["kind"] == MATCHED, tok["kind"] == MISSED],
                           [TYPE_NOTE, TYPE_MISSED], TYPE_EXTRA)
    return encode_fields(
        token_type, field("bar", 0).astype(np.int64) - bar_offset, field("position_beat", 0.0),
        tok["pitch"].astype(np.int64), duration, velocity, np.full(n, PIANO_PROGRAM),
        field("ts_num", 4).astype(np.int64), field("ts_den", 4).astype(np.int64))


def _fill_bar_signatures(bar: np.ndarray, ts_num: np.ndarray, ts_den: np.ndarray,
                         n_bars: int) -> tuple[np.ndarray, np.ndarray]:
    """Time signature of every bar 0..n_bars-1 [n_bars], carried forward (then backward) into bars
    that hold no note."""
    nums = np.zeros(n_bars, dtype=np.int64)
    dens = np.zeros(n_bars, dtype=np.int64)
    nums[bar], dens[bar] = ts_num, ts_den
    known = np.flatnonzero(nums > 0)
    # index of the last bar at or before each bar that has a known signature (else the first known)
    last = np.maximum(np.searchsorted(known, np.arange(n_bars), side="right") - 1, 0)
    return nums[known[last]], dens[known[last]]


def decode_score(tokens: np.ndarray, tempo_qpm: float,
                 bar_starts_beat: np.ndarray | None = None) -> np.ndarray:
    """Tokens [n, 8] -> SCORE_NOTE_DTYPE [m], the note tokens (NOTE and MISSED) in token order.

    Onsets in beats are bar start + position. Bar starts come from `bar_starts_beat` (quarter notes,
    indexed by the token's bar field) when given; otherwise every bar is taken as full under its time
    signature, starting at 0 (pickup or incomplete bars then shift later onsets). Seconds use the
    constant `tempo_qpm`. `id` is the note's index in the output, `voice` 0 (not tokenised).
    """
    fields = decode_fields(tokens)
    keep = np.isin(fields["type"], (TYPE_NOTE, TYPE_MISSED))
    fields = {k: v[keep] for k, v in fields.items()}
    n = int(keep.sum())
    out = np.zeros(n, dtype=SCORE_NOTE_DTYPE)
    if n == 0:
        return out
    bar = fields["bar"]
    if bar_starts_beat is None:
        nums, dens = _fill_bar_signatures(bar, fields["ts_num"], fields["ts_den"], int(bar.max()) + 1)
        bar_starts_beat = np.concatenate([[0.0], np.cumsum(bar_length_beats(nums, dens))])
    out["onset_beat"] = np.asarray(bar_starts_beat, dtype=np.float64)[bar] + fields["position_beat"]
    out["duration_beat"] = fields["duration_beat"]
    seconds_per_beat = 60.0 / float(tempo_qpm)
    out["onset_s"] = out["onset_beat"] * seconds_per_beat
    out["duration_s"] = out["duration_beat"] * seconds_per_beat
    for name in ("pitch", "velocity", "bar", "position_beat", "ts_num", "ts_den"):
        out[name] = fields[name]
    out["id"] = np.arange(n)
    return out
