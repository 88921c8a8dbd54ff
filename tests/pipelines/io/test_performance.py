"""Performance MIDI loading, pedal queries and sustain extension on generated MIDI, errors, s3://."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from pipelines.constants import CC_SOFT, CC_SOSTENUTO, CC_SUSTAIN
from pipelines.io.notes import PEDAL_DTYPE, Performance, make_perf_notes
from pipelines.io.performance import (
    MidiError,
    load_performance,
    pedal_down_at,
    pedal_intervals,
    performance_from_pretty_midi,
    with_sustain,
)

# (time_s, controller, value): sustain down 1.0-2.0 (with a repeated down value), again 3.0 to the end;
# soft 0.5-1.5; one sostenuto press 2.5-2.6
PEDAL_EVENTS = [(1.0, CC_SUSTAIN, 100), (1.2, CC_SUSTAIN, 127), (2.0, CC_SUSTAIN, 0), (3.0, CC_SUSTAIN, 90),
                (0.5, CC_SOFT, 127), (1.5, CC_SOFT, 10), (2.5, CC_SOSTENUTO, 64), (2.6, CC_SOSTENUTO, 63)]


def generated_midi(path: Path) -> Path:
    """Two piano tracks (right hand with pedal events, left hand), one drum track, 480 ticks/quarter."""
    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=100)
    right, left, drums = pretty_midi.Instrument(0), pretty_midi.Instrument(0), pretty_midi.Instrument(0, is_drum=True)
    right.notes = [pretty_midi.Note(90, 72, 0.0, 0.4), pretty_midi.Note(80, 74, 1.1, 1.3),
                   pretty_midi.Note(70, 76, 3.2, 3.5)]
    left.notes = [pretty_midi.Note(50, 48, 0.0, 0.9), pretty_midi.Note(55, 43, 1.1, 2.5)]
    drums.notes = [pretty_midi.Note(100, 36, 0.0, 0.1)]
    right.control_changes = [pretty_midi.ControlChange(c, v, t) for t, c, v in PEDAL_EVENTS]
    right.control_changes.append(pretty_midi.ControlChange(7, 100, 0.0))        # volume: not a pedal
    pm.instruments.extend([right, left, drums])
    pm.write(str(path))
    return path


def test_notes_merged_sorted_and_pedals_kept(tmp_path):
    perf = load_performance(str(generated_midi(tmp_path / "p.mid")))
    assert perf.source == "midi"
    assert perf.notes["pitch"].tolist() == [48, 72, 43, 74, 76]       # by onset, then pitch; no drums
    np.testing.assert_allclose(perf.notes["onset_s"], [0.0, 0.0, 1.1, 1.1, 3.2], atol=2e-3)
    assert perf.notes["velocity"].tolist() == [50, 90, 55, 80, 70]
    assert len(perf.pedal) == len(PEDAL_EVENTS) and perf.pedal.dtype == PEDAL_DTYPE
    assert (np.diff(perf.pedal["time_s"]) >= 0).all()
    assert set(perf.pedal["controller"].tolist()) == {CC_SUSTAIN, CC_SOFT, CC_SOSTENUTO}
    assert perf.duration_s == pytest.approx(3.5, abs=2e-3)


def _pedal() -> np.ndarray:
    events = np.array(PEDAL_EVENTS, dtype=PEDAL_DTYPE)
    return events[np.argsort(events["time_s"])]


def test_pedal_down_at():
    times = np.array([0.0, 0.99, 1.0, 1.5, 1.99, 2.0, 2.5, 3.0, 10.0])
    np.testing.assert_array_equal(pedal_down_at(_pedal(), times, CC_SUSTAIN),
                                  [False, False, True, True, True, False, False, True, True])
    np.testing.assert_array_equal(pedal_down_at(_pedal(), times, CC_SOFT),
                                  [False, True, True, False, False, False, False, False, False])
    np.testing.assert_array_equal(pedal_down_at(_pedal(), np.array([2.55, 2.6]), CC_SOSTENUTO), [True, False])
    assert not pedal_down_at(np.zeros(0, dtype=PEDAL_DTYPE), times, CC_SUSTAIN).any()


def test_pedal_intervals():
    np.testing.assert_allclose(pedal_intervals(_pedal(), CC_SUSTAIN, end_s=5.0), [[1.0, 2.0], [3.0, 5.0]])
    np.testing.assert_allclose(pedal_intervals(_pedal(), CC_SUSTAIN), [[1.0, 2.0], [3.0, 3.0]])
    np.testing.assert_allclose(pedal_intervals(_pedal(), CC_SOFT), [[0.5, 1.5]])
    assert pedal_intervals(_pedal(), 65).shape == (0, 2)


def test_with_sustain_extends_released_notes_and_cuts_restrikes():
    notes = make_perf_notes([0.0, 1.1, 1.5, 2.5, 3.0], [0.5, 1.3, 1.6, 2.7, 3.1], [60, 62, 62, 64, 65],
                            [64] * 5)
    pedal = np.array([(1.0, CC_SUSTAIN, 127), (2.0, CC_SUSTAIN, 0), (2.9, CC_SUSTAIN, 127)], dtype=PEDAL_DTYPE)
    sounding = with_sustain(Performance(notes, pedal))
    # 60 released before the pedal; first 62 sustained to 2.0 but cut by the re-strike at 1.5;
    # second 62 sustained to 2.0; 64 after the pedal; 65 under a pedal that never comes up: to the last offset
    np.testing.assert_allclose(sounding.notes["offset_s"], [0.5, 1.5, 2.0, 2.7, 3.1])
    np.testing.assert_array_equal(sounding.notes["pitch"], notes["pitch"])


def test_percepiano_performance_has_notes_and_pedal(percepiano_dir):
    path = sorted((percepiano_dir / "performances").glob("Schubert_D960_mv2_8bars_*.mid"))[0]
    perf = load_performance(str(path))
    assert len(perf.notes) > 20 and (perf.notes["offset_s"] >= perf.notes["onset_s"]).all()
    assert (pedal_intervals(perf.pedal, CC_SUSTAIN).shape[0]) > 0
    assert (np.diff(perf.notes["onset_s"]) >= 0).all()


@pytest.mark.parametrize("content, cause", [
    (b"", "empty file"),
    (b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0MTrk\x00\x00\xff\xff", "not a readable MIDI"),
    (b"RIFF....WAVEfmt ", "not a readable MIDI"),
])
def test_broken_midi_raises_midi_error_naming_the_file(tmp_path, content, cause):
    path = tmp_path / "broken.mid"
    path.write_bytes(content)
    with pytest.raises(MidiError, match=cause) as info:
        load_performance(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_empty_missing_and_wrong_extension(tmp_path):
    pm = pretty_midi.PrettyMIDI()
    pm.instruments.append(pretty_midi.Instrument(0))
    pm.write(str(tmp_path / "silent.mid"))
    with pytest.raises(MidiError, match="no notes"):
        load_performance(str(tmp_path / "silent.mid"))
    with pytest.raises(MidiError, match="no such file"):
        load_performance(str(tmp_path / "missing.mid"))
    with pytest.raises(MidiError, match="not a MIDI file"):
        load_performance(str(tmp_path / "take.wav"))
    with pytest.raises(MidiError, match="no notes"):
        performance_from_pretty_midi(pm, "in-memory")


def test_load_from_s3(s3_bucket, tmp_path):
    from pipelines.io import storage

    storage.upload_file(str(generated_midi(tmp_path / "p.mid")), f"{s3_bucket}/perf/p.mid")
    perf = load_performance(f"{s3_bucket}/perf/p.mid")
    assert len(perf.notes) == 5 and len(perf.pedal) == len(PEDAL_EVENTS)
    with pytest.raises(MidiError, match="missing.mid"):
        load_performance(f"{s3_bucket}/perf/missing.mid")
