"""Note-level data structures shared by every symbolic stage.

All are numpy structured arrays (cheap to slice, sort and serialise) wrapped in small dataclasses.
Times are in seconds unless the field says beats (quarter notes).
"""
from __future__ import annotations

import dataclasses

import numpy as np

# A performed note: what a pianist played (from performance MIDI or transcription).
PERF_NOTE_DTYPE = np.dtype([
    ("onset_s", "f8"), ("offset_s", "f8"), ("pitch", "i2"), ("velocity", "i2"),
])
# A pedal controller event (CC64 sustain, CC66 sostenuto, CC67 soft), value 0..127.
PEDAL_DTYPE = np.dtype([("time_s", "f8"), ("controller", "i2"), ("value", "i2")])
# A written note, with its position in the score.
SCORE_NOTE_DTYPE = np.dtype([
    ("onset_beat", "f8"),      # quarter notes from the start of the score
    ("duration_beat", "f8"),   # quarter notes
    ("onset_s", "f8"),         # seconds at the score's written tempo
    ("duration_s", "f8"),
    ("pitch", "i2"),
    ("velocity", "i2"),        # written/deadpan velocity (64 when the score has none)
    ("bar", "i4"),             # 0-based bar (measure) index
    ("position_beat", "f8"),   # quarter notes from the start of the bar
    ("ts_num", "i2"),          # time signature in force
    ("ts_den", "i2"),
    ("voice", "i2"),           # staff/voice when known, else 0
    ("id", "i4"),              # index of the note in score order (stable across slicing)
    ("mark", "i1"),            # written articulation: MARK_NONE, MARK_STACCATO, MARK_LEGATO or MARK_TREMOLO
])
MARK_NONE = 0                  # no articulation written (or the score cannot write one: score MIDI)
MARK_STACCATO = 1              # staccato, staccatissimo or spiccato, not under a slur
MARK_LEGATO = 2                # under a slur and not its last note (to be joined to the next note)
MARK_TREMOLO = 3               # a tremolo (one note repeated, or two alternated): played as many notes


@dataclasses.dataclass
class Performance:
    """Performed notes (sorted by onset, then pitch) and pedal events (sorted by time)."""
    notes: np.ndarray                      # PERF_NOTE_DTYPE [n]
    pedal: np.ndarray                      # PEDAL_DTYPE [m]
    source: str = "midi"                   # midi | transcription
    onset_evidence: object | None = None   # transcription: the transcriber's onset activation at every
                                           # time and pitch (pipelines.scoring.feedback.OnsetEvidence)

    @property
    def duration_s(self) -> float:
        return float(self.notes["offset_s"].max()) if len(self.notes) else 0.0


@dataclasses.dataclass
class Score:
    """Written notes (sorted by onset_beat, then pitch) with bar lines and tempo."""
    notes: np.ndarray                      # SCORE_NOTE_DTYPE [n]
    bar_starts_beat: np.ndarray            # f8 [n_bars]: onset of each bar in quarter notes
    tempo_qpm: float = 120.0               # first written tempo, quarter notes per minute
    source_format: str = "midi"            # midi | musicxml
    bar_numbers: np.ndarray | None = None  # i8 [n_bars]: printed bar numbers (MusicXML); None = index + 1
    pedal_beats: np.ndarray | None = None  # f8 [k, 2]: written sustain pedal (down, up) in quarter notes
                                           # (MusicXML pedal marks, a score MIDI's CC64); None = no marks

    @property
    def n_bars(self) -> int:
        return int(len(self.bar_starts_beat))


# One row per symbolic token after alignment: a score note (matched or missed) or an extra note.
ALIGNED_NOTE_DTYPE = np.dtype([
    ("score_index", "i4"),     # index into Score.notes, -1 for an extra (inserted) note
    ("perf_index", "i4"),      # index into Performance.notes, -1 for a missed (deleted) note
    ("kind", "i1"),            # 0 matched, 1 missed, 2 extra
    ("perf_onset_s", "f8"),    # performed onset (for missed notes: estimated from the local tempo)
    ("bar", "i4"),             # score bar (for extra notes: the bar of the nearest matched note)
    ("pitch", "i2"),
])
MATCHED, MISSED, EXTRA = 0, 1, 2


def empty_perf_notes() -> np.ndarray:
    return np.zeros(0, dtype=PERF_NOTE_DTYPE)


def empty_pedal() -> np.ndarray:
    return np.zeros(0, dtype=PEDAL_DTYPE)


def make_perf_notes(onset_s, offset_s, pitch, velocity) -> np.ndarray:
    """Build a sorted PERF_NOTE_DTYPE array from four equal-length sequences."""
    notes = np.zeros(len(onset_s), dtype=PERF_NOTE_DTYPE)
    notes["onset_s"], notes["offset_s"] = onset_s, offset_s
    notes["pitch"], notes["velocity"] = pitch, velocity
    return notes[np.lexsort((notes["pitch"], notes["onset_s"]))]
