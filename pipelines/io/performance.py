"""Load performance MIDI (what a pianist played) into `pipelines.io.notes.Performance`.

Notes of every non-drum track are merged (onset, offset in seconds, pitch, velocity), sorted by
onset then pitch; pedal events are the sustain (CC64), sostenuto (CC66) and soft (CC67) controller
changes of every track, sorted by time. A controller value >= PEDAL_DOWN_THRESHOLD means "down".
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.constants import CC_SOFT, CC_SOSTENUTO, CC_SUSTAIN, MIDI_EXTENSIONS, PEDAL_DOWN_THRESHOLD
from pipelines.io.errors import parse_midi_bytes
from pipelines.io.notes import PEDAL_DTYPE, Performance, make_perf_notes
from pipelines.io.storage import MAX_SMALL_FILE_BYTES, StorageError, StorageUnavailable, local_path

PEDAL_CONTROLLERS = (CC_SUSTAIN, CC_SOSTENUTO, CC_SOFT)


class MidiError(ValueError):
    """A performance MIDI could not be used; the message names the file and the cause in one line."""


def pedal_events_from_pretty_midi(pm) -> np.ndarray:
    """CC64/66/67 events of every non-drum track, PEDAL_DTYPE [m] sorted by time then controller."""
    rows = [(cc.time, cc.number, cc.value) for inst in pm.instruments if not inst.is_drum
            for cc in inst.control_changes if cc.number in PEDAL_CONTROLLERS]
    pedal = np.array(rows, dtype=PEDAL_DTYPE) if rows else np.zeros(0, dtype=PEDAL_DTYPE)
    return pedal[np.lexsort((pedal["controller"], pedal["time_s"]))]


def performance_from_pretty_midi(pm, name: str = "<midi>") -> Performance:
    """A `Performance` (source="midi") from a `pretty_midi.PrettyMIDI`; no notes raises MidiError."""
    notes = [n for inst in pm.instruments if not inst.is_drum for n in inst.notes]
    if not notes:
        raise MidiError(f"{name}: MIDI file has no notes")
    perf_notes = make_perf_notes([n.start for n in notes], [max(n.end, n.start) for n in notes],
                                 [n.pitch for n in notes], [n.velocity for n in notes])
    return Performance(notes=perf_notes, pedal=pedal_events_from_pretty_midi(pm), source="midi")


def performance_from_midi_bytes(data: bytes, name: str = "<midi bytes>") -> Performance:
    """A `Performance` from the bytes of a MIDI file; unreadable bytes raise MidiError naming `name`."""
    if not data:
        raise MidiError(f"{name}: empty file")
    pm = parse_midi_bytes(data, name, MidiError)
    return performance_from_pretty_midi(pm, name)


def load_performance(uri: str) -> Performance:
    """Read a performance MIDI (.mid/.midi) from a local path or s3:// URI.

    Raises MidiError (one line naming the URI and the cause) for another extension, a missing,
    empty or broken file, or a file without notes.
    """
    suffix = Path(str(uri)).suffix.lower()
    if suffix not in MIDI_EXTENSIONS:
        raise MidiError(f"{uri}: not a MIDI file (extension {suffix or '(none)'!r}, expected .mid or .midi)")
    try:
        with local_path(uri, max_bytes=MAX_SMALL_FILE_BYTES) as path:
            return performance_from_midi_bytes(Path(path).read_bytes(), name=str(uri))
    except StorageUnavailable:            # a fault of the moment, not of the file: the caller retries
        raise
    except StorageError as exc:
        raise MidiError(str(exc)) from None


def _controller_events(pedal: np.ndarray, controller: int) -> tuple[np.ndarray, np.ndarray]:
    """(times_s [k], down [k] bool) of one controller's events, in time order."""
    events = pedal[pedal["controller"] == controller]
    events = events[np.argsort(events["time_s"], kind="stable")]
    return events["time_s"], events["value"] >= PEDAL_DOWN_THRESHOLD


def pedal_down_at(pedal: np.ndarray, times_s: np.ndarray, controller: int) -> np.ndarray:
    """Whether `controller` is down at each time, bool [n] for times_s [n] (seconds).

    The state at t is set by the last event at or before t (up before the first event).
    """
    times_s = np.asarray(times_s, dtype=np.float64)
    event_times, down = _controller_events(pedal, controller)
    if len(event_times) == 0:
        return np.zeros(times_s.shape, dtype=bool)
    last = np.searchsorted(event_times, times_s, side="right") - 1
    return np.where(last >= 0, down[np.maximum(last, 0)], False)


def pedal_intervals(pedal: np.ndarray, controller: int, end_s: float | None = None) -> np.ndarray:
    """Down intervals of one controller, float64 [k, 2] of (down, up) seconds.

    Repeated down (or up) values do not split an interval. A pedal still down after the last event
    is closed at `end_s` (default: the last event's time).
    """
    event_times, down = _controller_events(pedal, controller)
    if len(event_times) == 0:
        return np.zeros((0, 2), dtype=np.float64)
    change = np.flatnonzero(np.diff(np.concatenate([[False], down]).astype(np.int8)) != 0)
    starts = event_times[change[down[change]]]
    stops = event_times[change[~down[change]]]
    if len(stops) < len(starts):
        stops = np.concatenate([stops, [max(end_s if end_s is not None else event_times[-1], starts[-1])]])
    return np.stack([starts, stops], axis=1).astype(np.float64)


def with_sustain(perf: Performance) -> Performance:
    """The performance with note offsets extended by the sustain pedal (how the notes sound).

    A key released while CC64 is down sounds until the pedal comes up; a re-struck key cuts the
    previous note of the same pitch at the new onset (the MAESTRO / Onsets-and-Frames convention).
    Shapes are unchanged: notes [n].
    """
    notes = perf.notes.copy()
    if len(notes) == 0:
        return Performance(notes=notes, pedal=perf.pedal, source=perf.source)
    intervals = pedal_intervals(perf.pedal, CC_SUSTAIN, end_s=float(notes["offset_s"].max()))
    if len(intervals):
        k = np.searchsorted(intervals[:, 0], notes["offset_s"], side="right") - 1
        inside = (k >= 0) & (notes["offset_s"] < intervals[np.maximum(k, 0), 1])
        notes["offset_s"] = np.where(inside, intervals[np.maximum(k, 0), 1], notes["offset_s"])
    order = np.lexsort((notes["onset_s"], notes["pitch"]))        # by pitch, then onset
    by_pitch = notes[order]
    same_next = np.concatenate([by_pitch["pitch"][1:] == by_pitch["pitch"][:-1], [False]])
    next_onset = np.concatenate([by_pitch["onset_s"][1:], [np.inf]])
    cut = same_next & (by_pitch["offset_s"] > next_onset)
    by_pitch["offset_s"] = np.where(cut, np.maximum(next_onset, by_pitch["onset_s"]), by_pitch["offset_s"])
    notes[order] = by_pitch
    return Performance(notes=notes, pedal=perf.pedal, source=perf.source)
