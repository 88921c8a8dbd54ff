"""Load written scores (score MIDI or MusicXML, local or s3://) into `pipelines.io.notes.Score`.

Both readers give notes sorted by (onset_beat, pitch) with `id` = index in that order, 0-based
`bar`, `position_beat` = onset - start of its bar (quarter notes), the time signature in force, and
seconds at the written tempo.

- Score MIDI (.mid/.midi, pretty_midi): beats come from the tempo map (ticks / resolution, so they
  are exact ticks), bars from the time-signature changes (4/4 when there are none; a change in the
  middle of a bar starts a new bar), bars run to the last note's end. `voice` = track (instrument)
  number + 1. A pickup cannot be told from a bar that starts with rests: MIDI bars are always full.
- MusicXML (.musicxml/.mxl/.xml, partitura): bars are the written measures (pickups and incomplete
  bars included), tied notes are merged, grace notes have duration 0, `voice` is the MusicXML
  voice, velocities are 64 (MusicXML has none); repeats are not unfolded. Seconds follow the tempo
  marks (120 quarter notes per minute before the first one, when the score has none).
- Written sustain pedal (`Score.pedal_beats`, (down, up) quarter-note intervals): MusicXML 'Ped.' .. '*'
  marks, or a score MIDI's CC64 (down at or above PEDAL_DOWN_THRESHOLD); None when the score has none.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from pipelines.constants import CC_SUSTAIN, MIDI_EXTENSIONS, MUSICXML_EXTENSIONS
from pipelines.io.errors import one_line, parse_midi_bytes
from pipelines.io.notes import MARK_LEGATO, MARK_STACCATO, MARK_TREMOLO, SCORE_NOTE_DTYPE, Score
from pipelines.io.performance import pedal_events_from_pretty_midi, pedal_intervals
from pipelines.io.storage import MAX_SMALL_FILE_BYTES, StorageError, StorageUnavailable, local_path

DEFAULT_TEMPO_QPM = 120.0
DEFAULT_VELOCITY = 64
DEFAULT_TIME_SIGNATURE = (4, 4)
MIDI_TEMPO_DECIMALS = 3       # written tempo of a MIDI score, rounded (qpm)
_BAR_EPS_BEAT = 1e-6          # onsets this close before a bar line belong to the next bar
MAX_SCORE_BARS = 100_000      # a score MIDI spanning more bars is refused (an absurd tick, tempo or time signature)


class ScoreError(ValueError):
    """A score could not be read; the message names the input and the cause in one line."""


# --- tempo maps ------------------------------------------------------------------------------

def seconds_to_beats(times_s: np.ndarray, change_s: np.ndarray, qpm: np.ndarray) -> np.ndarray:
    """Seconds -> quarter notes under a piecewise-constant tempo map.

    change_s: [k] start of each tempo (first 0), qpm: [k] quarter notes per minute. Returns [n].
    """
    change_beat = np.concatenate([[0.0], np.cumsum(np.diff(change_s) * qpm[:-1] / 60.0)])
    seg = np.clip(np.searchsorted(change_s, times_s, side="right") - 1, 0, len(change_s) - 1)
    return change_beat[seg] + (np.asarray(times_s) - change_s[seg]) * qpm[seg] / 60.0


def beats_to_seconds(beats: np.ndarray, change_beat: np.ndarray, qpm: np.ndarray) -> np.ndarray:
    """Quarter notes -> seconds under a piecewise-constant tempo map.

    change_beat: [k] start of each tempo in quarter notes (first 0), qpm: [k]. Returns [n].
    """
    change_s = np.concatenate([[0.0], np.cumsum(np.diff(change_beat) * 60.0 / qpm[:-1])])
    seg = np.clip(np.searchsorted(change_beat, beats, side="right") - 1, 0, len(change_beat) - 1)
    return change_s[seg] + (np.asarray(beats) - change_beat[seg]) * 60.0 / qpm[seg]


# --- bars ------------------------------------------------------------------------------------

def bars_from_time_signatures(ts_beat: np.ndarray, ts_num: np.ndarray, ts_den: np.ndarray,
                              end_beat: float, max_bars: float = math.inf
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bar starts [n_bars] (quarter notes) and each bar's (num, den), from time-signature changes
    at `ts_beat` [k] (sorted, first at 0), up to the first bar line at or after `end_beat`.
    More than `max_bars` bars raise ValueError before any is built."""
    counts = []
    for i, (start, num, den) in enumerate(zip(ts_beat, ts_num, ts_den)):
        stop = ts_beat[i + 1] if i + 1 < len(ts_beat) else max(end_beat, start + _BAR_EPS_BEAT)
        length = float(num) * 4.0 / float(den)
        counts.append(max(int(np.ceil((stop - start) / length - _BAR_EPS_BEAT)), 1 if i + 1 == len(ts_beat) else 0))
    if sum(counts) > max_bars:
        raise ValueError(f"{sum(counts)} bars, over the limit of {max_bars:g}")
    starts, nums, dens = [], [], []
    for start, num, den, count in zip(ts_beat, ts_num, ts_den, counts):
        length = float(num) * 4.0 / float(den)
        starts.extend(start + length * np.arange(count))
        nums.extend([num] * count)
        dens.extend([den] * count)
    return np.asarray(starts, dtype=np.float64), np.asarray(nums, np.int64), np.asarray(dens, np.int64)


def bar_of(onset_beat: np.ndarray, bar_starts_beat: np.ndarray) -> np.ndarray:
    """0-based bar index of each onset [n] given bar starts [n_bars] (quarter notes)."""
    return np.maximum(np.searchsorted(bar_starts_beat, onset_beat + _BAR_EPS_BEAT, side="right") - 1, 0)


def _finish_score(notes: np.ndarray, bar_starts_beat: np.ndarray, tempo_qpm: float, source_format: str) -> Score:
    """Sort notes by (onset_beat, pitch), number them, and wrap them in a Score."""
    notes = notes[np.lexsort((notes["pitch"], notes["onset_beat"]))]
    notes["id"] = np.arange(len(notes))
    return Score(notes=notes, bar_starts_beat=bar_starts_beat, tempo_qpm=float(tempo_qpm),
                 source_format=source_format)


# --- MIDI ------------------------------------------------------------------------------------

def _midi_note_table(pm) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(start_s, end_s, pitch, velocity, voice) of every non-drum note, each [n]."""
    rows = [(n.start, n.end, n.pitch, n.velocity, track + 1)
            for track, inst in enumerate(pm.instruments) if not inst.is_drum for n in inst.notes]
    table = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    return table[:, 0], table[:, 1], table[:, 2], table[:, 3], table[:, 4]


def score_from_pretty_midi(pm, name: str = "<midi>") -> Score:
    """A `Score` from a `pretty_midi.PrettyMIDI` score file (see the module docstring)."""
    start_s, end_s, pitch, velocity, voice = _midi_note_table(pm)
    if len(pitch) == 0:
        raise ScoreError(f"{name}: MIDI score has no notes")
    change_s, qpm = pm.get_tempo_changes()
    if len(change_s) == 0 or change_s[0] > 0:
        change_s, qpm = np.concatenate([[0.0], change_s]), np.concatenate([[DEFAULT_TEMPO_QPM], qpm])

    def to_beats(t: np.ndarray) -> np.ndarray:  # exact ticks, in quarter notes
        return np.round(seconds_to_beats(np.asarray(t, np.float64), change_s, qpm) * pm.resolution) / pm.resolution

    onset_beat, end_beat = to_beats(start_s), to_beats(end_s)
    ts = sorted(pm.time_signature_changes, key=lambda t: t.time)
    ts_beat = to_beats([t.time for t in ts]) if ts else np.zeros(0)
    ts_num = np.array([t.numerator for t in ts], np.int64)
    ts_den = np.array([t.denominator for t in ts], np.int64)
    if len(ts) == 0 or ts_beat[0] > 0:
        ts_beat = np.concatenate([[0.0], ts_beat])
        ts_num = np.concatenate([[DEFAULT_TIME_SIGNATURE[0]], ts_num])
        ts_den = np.concatenate([[DEFAULT_TIME_SIGNATURE[1]], ts_den])
    keep = np.concatenate([ts_beat[1:] > ts_beat[:-1], [True]])    # the last of simultaneous changes wins
    try:
        bar_starts, bar_num, bar_den = bars_from_time_signatures(ts_beat[keep], ts_num[keep], ts_den[keep],
                                                                 float(end_beat.max()), MAX_SCORE_BARS)
    except ValueError as exc:
        raise ScoreError(f"{name}: MIDI score spans {exc} (a wrong tick, tempo or time-signature value?)") from None
    notes = np.zeros(len(pitch), dtype=SCORE_NOTE_DTYPE)
    bar = bar_of(onset_beat, bar_starts)
    notes["onset_beat"], notes["duration_beat"] = onset_beat, np.maximum(end_beat - onset_beat, 0.0)
    notes["onset_s"], notes["duration_s"] = start_s, np.maximum(end_s - start_s, 0.0)
    notes["pitch"], notes["velocity"], notes["voice"] = pitch, velocity, voice
    notes["bar"], notes["position_beat"] = bar, onset_beat - bar_starts[bar]
    notes["ts_num"], notes["ts_den"] = bar_num[bar], bar_den[bar]
    # MIDI stores whole microseconds per quarter: 90 qpm reads back as 90.00009
    score = _finish_score(notes, bar_starts, round(float(qpm[0]), MIDI_TEMPO_DECIMALS), "midi")
    down_s = pedal_intervals(pedal_events_from_pretty_midi(pm), CC_SUSTAIN, end_s=float(end_s.max()))
    marks = to_beats(down_s.ravel()).reshape(-1, 2) if len(down_s) else down_s
    marks = marks[marks[:, 1] > marks[:, 0]]
    score.pedal_beats = marks if len(marks) else None
    return score


def score_from_midi_bytes(data: bytes, name: str = "<midi bytes>") -> Score:
    """A `Score` from the bytes of a score MIDI file; unreadable MIDI raises ScoreError naming `name`."""
    pm = parse_midi_bytes(data, name, ScoreError)
    return score_from_pretty_midi(pm, name)


# --- MusicXML --------------------------------------------------------------------------------

def _quarter_tempo(tempo) -> float:
    """A partitura Tempo -> quarter notes per minute."""
    from partitura.score import to_quarter_tempo

    return float(to_quarter_tempo(tempo.unit or "q", tempo.bpm))


def _musicxml_tempo_map(part) -> tuple[np.ndarray, np.ndarray]:
    """(change_beat [k], qpm [k]) from a partitura part's tempo marks, starting at beat 0."""
    import partitura.score as pscore

    marks = sorted(part.iter_all(pscore.Tempo), key=lambda t: t.start.t)
    change_beat = np.array([float(part.quarter_map(t.start.t)) for t in marks], dtype=np.float64)
    qpm = np.array([_quarter_tempo(t) for t in marks], dtype=np.float64)
    if len(marks) == 0 or change_beat[0] > 0:
        first = qpm[0] if len(marks) else DEFAULT_TEMPO_QPM
        change_beat, qpm = np.concatenate([[0.0], change_beat]), np.concatenate([[first], qpm])
    keep = np.concatenate([change_beat[1:] > change_beat[:-1], [True]])
    return change_beat[keep], qpm[keep]


def _clean_beats(beats: np.ndarray) -> np.ndarray:
    """Round quarter-note values to 1e-9 (removes float noise such as -4e-16 from partitura's maps)."""
    return np.round(beats, 9) + 0.0


def _partitura_part_notes(part) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(onset_quarter [n], end_quarter [n], note_array) of one partitura part, float64 quarters
    (partitura's own onset_quarter column is float32)."""
    na = part.note_array(include_time_signature=True, include_grace_notes=True)
    onset = np.asarray(part.quarter_map(na["onset_div"]), np.float64).reshape(-1)
    end = np.asarray(part.quarter_map(na["onset_div"] + na["duration_div"]), np.float64).reshape(-1)
    return onset, end, na


def score_from_partitura(pscore_obj, name: str = "<musicxml>") -> Score:
    """A `Score` from a partitura Score (all parts merged; bars from the first part's measures)."""
    parts = list(pscore_obj.parts)
    if not parts:
        raise ScoreError(f"{name}: score has no parts")
    tables = [_partitura_part_notes(part) for part in parts]
    onset = np.concatenate([t[0] for t in tables])
    if len(onset) == 0:
        raise ScoreError(f"{name}: score has no notes")
    end = np.concatenate([t[1] for t in tables])
    na = np.concatenate([t[2][["pitch", "voice", "ts_beats", "ts_beat_type"]] for t in tables])
    marks = np.concatenate([_musicxml_marks(part, t[2]) for part, t in zip(parts, tables)])
    part = parts[0]
    measures = sorted(part.measures, key=lambda m: m.start.t)
    bar_starts = np.array([float(part.quarter_map(m.start.t)) for m in measures], dtype=np.float64)
    numbers = np.array([_measure_number(m, k) for k, m in enumerate(measures)], dtype=np.int64)
    # partitura may put a pickup before 0: measure everything from the first bar line (or note)
    origin = min(float(bar_starts[0]) if len(bar_starts) else 0.0, float(onset.min()))
    bar_starts = _clean_beats(bar_starts - origin) if len(bar_starts) else np.zeros(1)
    onset, end = _clean_beats(onset - origin), _clean_beats(end - origin)
    change_beat, qpm = _musicxml_tempo_map(part)
    change_beat = np.maximum(change_beat - origin, 0.0)
    change_beat[0] = 0.0
    onset_s = beats_to_seconds(onset, change_beat, qpm)
    notes = np.zeros(len(onset), dtype=SCORE_NOTE_DTYPE)
    bar = bar_of(onset, bar_starts)
    notes["onset_beat"], notes["duration_beat"] = onset, np.maximum(end - onset, 0.0)
    notes["onset_s"], notes["duration_s"] = onset_s, beats_to_seconds(end, change_beat, qpm) - onset_s
    notes["pitch"], notes["velocity"], notes["voice"] = na["pitch"], DEFAULT_VELOCITY, na["voice"]
    notes["bar"], notes["position_beat"] = bar, _clean_beats(onset - bar_starts[bar])
    notes["ts_num"], notes["ts_den"] = na["ts_beats"], na["ts_beat_type"]
    notes["mark"] = marks
    score = _finish_score(notes, bar_starts, float(qpm[0]), "musicxml")
    if len(numbers) == score.n_bars:
        score.bar_numbers = numbers
    score.pedal_beats = _musicxml_pedal(parts, origin, float(end.max()))
    return score


def _musicxml_pedal(parts, origin: float, end_beat: float) -> np.ndarray | None:
    """Written sustain pedal ('Ped.' .. '*' marks, partitura's SustainPedalDirection) of every part as (down,
    up) quarter-note intervals from the score's origin; a mark without an end lasts to end_beat."""
    import partitura.score as pscore

    marks = []
    for part in parts:
        for mark in part.iter_all(pscore.SustainPedalDirection):
            start = float(part.quarter_map(mark.start.t)) - origin
            stop = float(part.quarter_map(mark.end.t)) - origin if mark.end is not None else end_beat
            if stop > start:
                marks.append((start, stop))
    if not marks:
        return None
    return np.unique(_clean_beats(np.asarray(marks, np.float64)), axis=0)   # both staves may mark the same pedal


STACCATO_MARKS = frozenset({"staccato", "staccatissimo", "spiccato"})


def _musicxml_marks(part, na: np.ndarray) -> np.ndarray:
    """i1 [n]: the written articulation of each row of a part's note array (MARK_* of pipelines.io.notes).

    A note with a tremolo (one note or chord repeated, or two alternated; a chord's notes all count, though
    editors mark one of them) is MARK_TREMOLO. Otherwise it is MARK_LEGATO
    when a slur of its voice covers its onset and it is not the slur's last note
    (slurred staccato, portato, counts as legato); MARK_STACCATO when it carries a staccato-family mark
    and no slur covers it."""
    import partitura.score as pscore

    staccato = {(int(n.start.t), int(n.midi_pitch), int(n.voice or 0)) for n in part.notes_tied
                if STACCATO_MARKS.intersection(n.articulations or ())}
    tremolo = {(int(n.start.t), int(n.voice or 0)) for n in part.notes_tied      # the chord mates too
               if "tremolo" in (getattr(n, "ornaments", None) or ())}
    slurs = []
    for slur in part.iter_all(pscore.Slur):
        first, last = slur.start_note, slur.end_note
        if slur.start is None or (last is None and slur.end is None):
            continue
        stop = last.start.t if last is not None else slur.end.t     # the last note itself is released
        slurs.append((int(slur.start.t), int(stop), None if first is None or first.voice is None else int(first.voice)))
    marks = np.zeros(len(na), dtype=np.int8)
    onset, pitch, voice = na["onset_div"].astype(np.int64), na["pitch"].astype(np.int64), na["voice"].astype(np.int64)
    for i in range(len(na)):
        if (int(onset[i]), int(voice[i])) in tremolo:
            marks[i] = MARK_TREMOLO
        elif any(s0 <= onset[i] < s1 and (v is None or v == voice[i]) for s0, s1, v in slurs):
            marks[i] = MARK_LEGATO
        elif (int(onset[i]), int(pitch[i]), int(voice[i])) in staccato:
            marks[i] = MARK_STACCATO
    return marks


def _measure_number(measure, k: int) -> int:
    """The number a MusicXML measure prints (its `number` attribute), else its position + 1."""
    for value in (getattr(measure, "name", None), getattr(measure, "number", None)):
        try:
            return int(str(value).strip())
        except (TypeError, ValueError):
            continue
    return k + 1


def score_from_musicxml_file(path: str, name: str | None = None) -> Score:
    """A `Score` from a local MusicXML file (.musicxml, .xml or compressed .mxl)."""
    import partitura

    name = name or path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pscore_obj = partitura.load_musicxml(path, force_note_ids="keep")
    except Exception as exc:  # lxml, zipfile and partitura's own errors
        raise ScoreError(f"{name}: not a readable MusicXML file ({one_line(exc)})") from None
    try:
        return score_from_partitura(pscore_obj, name)
    except ScoreError:
        raise
    except Exception as exc:  # partitura parses lazily: a bad pitch step or duration fails in its note array
        raise ScoreError(f"{name}: not a readable MusicXML file ({type(exc).__name__}: {one_line(exc)})") from None


# --- public entry points -----------------------------------------------------------------------

def load_score(uri: str) -> Score:
    """Read a score (MIDI or MusicXML, by extension) from a local path or s3:// URI.

    Raises ScoreError (one line naming the URI and the cause) for an unknown extension, a missing
    file, an unreadable file or a score without notes.
    """
    suffix = Path(str(uri)).suffix.lower()
    if suffix not in MIDI_EXTENSIONS + MUSICXML_EXTENSIONS:
        raise ScoreError(f"{uri}: unsupported score extension {suffix or '(none)'!r}; "
                         f"expected one of {', '.join(MIDI_EXTENSIONS + MUSICXML_EXTENSIONS)}")
    try:
        with local_path(uri, max_bytes=MAX_SMALL_FILE_BYTES) as path:
            if suffix in MIDI_EXTENSIONS:
                return score_from_midi_bytes(Path(path).read_bytes(), name=str(uri))
            return score_from_musicxml_file(path, name=str(uri))
    except StorageUnavailable:            # a fault of the moment, not of the score: the caller retries
        raise
    except StorageError as exc:
        raise ScoreError(str(exc)) from None


def slice_bars(score: Score, first_bar: int, last_bar: int) -> Score:
    """The notes of bars first_bar..last_bar (0-based, inclusive) as a Score of their own.

    Bars are renumbered from 0, onsets (beats and seconds) are measured from the start of
    `first_bar`, and `id` keeps each note's index in the full score. Shapes: notes [m],
    bar_starts_beat [last_bar - first_bar + 1] (clipped to the score's bars).
    """
    if first_bar < 0 or last_bar < first_bar or first_bar >= score.n_bars:
        raise ValueError(f"slice_bars: bars {first_bar}..{last_bar} outside the score's 0..{score.n_bars - 1}")
    last_bar = min(last_bar, score.n_bars - 1)
    notes = score.notes[(score.notes["bar"] >= first_bar) & (score.notes["bar"] <= last_bar)].copy()
    start_beat = float(score.bar_starts_beat[first_bar])
    start_s = _time_at_beat(score, start_beat)
    notes["bar"] -= first_bar
    notes["onset_beat"] -= start_beat
    notes["onset_s"] -= start_s
    numbers = score.bar_numbers[first_bar:last_bar + 1] if score.bar_numbers is not None else None
    pedal = None
    if score.pedal_beats is not None:
        stop_beat = float(score.bar_starts_beat[last_bar + 1]) if last_bar + 1 < score.n_bars else math.inf
        clipped = np.clip(score.pedal_beats, start_beat, stop_beat) - start_beat
        clipped = clipped[clipped[:, 1] > clipped[:, 0]]
        pedal = clipped if len(clipped) else None
    return Score(notes=notes, bar_starts_beat=score.bar_starts_beat[first_bar:last_bar + 1] - start_beat,
                 tempo_qpm=score.tempo_qpm, source_format=score.source_format, bar_numbers=numbers,
                 pedal_beats=pedal)


def _time_at_beat(score: Score, beat: float) -> float:
    """Seconds at a beat, interpolated between note onsets (exact under a constant tempo)."""
    notes = score.notes
    if len(notes) == 0:
        return beat * 60.0 / score.tempo_qpm
    onset_beat, order = np.unique(notes["onset_beat"], return_index=True)
    onset_s = notes["onset_s"][order]
    if beat <= onset_beat[0] or len(onset_beat) == 1:
        return float(onset_s[0] + (beat - onset_beat[0]) * 60.0 / score.tempo_qpm)
    if beat >= onset_beat[-1]:
        rate = (onset_s[-1] - onset_s[-2]) / (onset_beat[-1] - onset_beat[-2])
        return float(onset_s[-1] + (beat - onset_beat[-1]) * rate)
    return float(np.interp(beat, onset_beat, onset_s))
