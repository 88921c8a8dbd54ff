"""Bad MIDI and MusicXML (issue 14): broken chunks, absurd tempos and ticks, no notes, notes outside the piano,
hanging notes, malformed MusicXML, a score of another piece, and file names with spaces, quotes and non-ASCII.
Every reader (performance MIDI, written score, renderer) gives a result or one error line naming the file."""
from __future__ import annotations

import time
import tracemalloc
import zipfile
from pathlib import Path

import mido
import numpy as np
import pytest

from pipelines.features.render import RenderError, render_midi
from pipelines.io.notation import ScoreError, load_score
from pipelines.io.performance import MidiError, load_performance
from tests.conftest import FLUIDR3
from tests.reliability.conftest import assert_one_line_error

RENDER_LIMIT_S = 600.0


def midi_bytes(messages, tpb: int = 480, tracks: int = 1) -> bytes:
    """A type-1 MIDI file holding `messages` (delta times in ticks) on each of `tracks` tracks."""
    import io
    mid = mido.MidiFile(ticks_per_beat=tpb)
    for _ in range(tracks):
        mid.tracks.append(mido.MidiTrack(messages))
    out = io.BytesIO()
    mid.save(file=out)
    return out.getvalue()


def melody(n: int = 8, pitch: int = 60, dt: int = 240, channel: int = 0):
    msgs = []
    for i in range(n):
        p = pitch + (i * 2) % 7
        msgs += [mido.Message("note_on", channel=channel, note=p, velocity=80, time=0 if i == 0 else dt),
                 mido.Message("note_off", channel=channel, note=p, velocity=0, time=dt)]
    return msgs


GOOD = midi_bytes(melody())
HANG = [mido.Message("note_on", note=72, velocity=90, time=120)]
FAR = [mido.Message("note_on", note=60, velocity=80, time=9_000_000), mido.Message("note_off", note=60, time=1)]

# name -> (bytes, expected notes (int) or a fragment of the error of every reader)
MIDI_CASES = {
    "zero-byte.mid": (b"", "empty|not a readable MIDI"),
    "random.mid": (np.random.default_rng(14).bytes(4096), "not a readable MIDI"),
    "text.midi": (b"MThd is what I am not\n" * 20, "not a readable MIDI"),
    "truncated.mid": (GOOD[:len(GOOD) // 2], "not a readable MIDI"),
    "header-only.mid": (GOOD[:14], "not a readable MIDI"),
    "bad-track-chunk.mid": (GOOD[:14] + b"XTrk" + GOOD[18:], "not a readable MIDI"),
    "track-length-too-long.mid": (GOOD[:18] + (10 ** 6).to_bytes(4, "big") + GOOD[22:], "not a readable MIDI"),
    "header-length-wrong.mid": (GOOD[:4] + (100).to_bytes(4, "big") + GOOD[8:], "not a readable MIDI"),
    "too-many-tracks.mid": (GOOD[:10] + (50).to_bytes(2, "big") + GOOD[12:], "not a readable MIDI"),
    "ticks-per-beat-zero.mid": (GOOD[:12] + (0).to_bytes(2, "big") + GOOD[14:], "not a readable MIDI"),
    "largest-tick-absurd.mid": (midi_bytes(melody(2) + [mido.Message("note_on", note=60, velocity=80, time=0x0FFFFFFF),
                                                        mido.Message("note_off", note=60, time=10)]),
                                "not a readable MIDI"),
    "no-notes.mid": (midi_bytes([mido.Message("control_change", control=64, value=127)]), "no notes"),
    "drums-only.mid": (midi_bytes(melody(4, pitch=38, channel=9)), "no notes"),
    "tempo-1us.mid": (midi_bytes([mido.MetaMessage("set_tempo", tempo=1)] + melody()), 8),
    "tempo-changes-5000.mid": (midi_bytes([mido.MetaMessage("set_tempo", tempo=1 + (i % 2) * 500_000, time=1)
                                           for i in range(5000)] + melody()), 8),
    "outside-piano-range.mid": (midi_bytes([m for p in (0, 5, 120, 127) for m in (
        mido.Message("note_on", note=p, velocity=80, time=100), mido.Message("note_off", note=p, time=100))]), 4),
    "hanging-note.mid": (midi_bytes(melody(4) + HANG), 5),
    "all-notes-hanging.mid": (midi_bytes([mido.Message("note_on", note=60 + i, velocity=80, time=100)
                                          for i in range(4)]), 4),
    "two-identical-tracks.mid": (midi_bytes(melody(), tracks=2), 16),
    "velocity-zero-offs.mid": (midi_bytes([mido.Message("note_on", note=m.note, velocity=0, time=m.time)
                                           if m.type == "note_off" else m for m in melody()]), 8),
}
# scores only: the bar grid of a score lasting weeks would hold millions of bars
SCORE_ONLY = {
    "tempo-slowest-ticks-far.mid": (midi_bytes([mido.MetaMessage("set_tempo", tempo=0xFFFFFF)] + melody(2) + FAR,
                                               tpb=1), "over the limit of 100000"),
    "time-signature-1-64-ticks-far.mid": (midi_bytes([mido.MetaMessage("time_signature", numerator=1, denominator=64)]
                                                     + melody(2) + FAR, tpb=1), "over the limit of 100000"),
}


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _outcome(read, path: Path, expected, errors, count) -> None:
    started = time.monotonic()
    tracemalloc.start()
    try:
        if isinstance(expected, int):
            assert count(read(str(path))) == expected
        else:
            with pytest.raises(Exception) as err:
                read(str(path))
            message = assert_one_line_error(err, path.name, errors)
            assert any(fragment in message for fragment in expected.split("|")), message
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 20
    assert peak < 400e6, f"{peak / 1e6:.0f} MB"          # pretty_midi's tick map alone is up to 240 MB (1e7 ticks)


@pytest.mark.parametrize("name", sorted(MIDI_CASES))
def test_performance_midi(tmp_path, name):
    data, expected = MIDI_CASES[name]
    _outcome(load_performance, _write(tmp_path, name, data), expected, (MidiError,), lambda p: len(p.notes))


@pytest.mark.parametrize("name", sorted(MIDI_CASES) + sorted(SCORE_ONLY))
def test_score_midi(tmp_path, name):
    data, expected = {**MIDI_CASES, **SCORE_ONLY}[name]
    _outcome(load_score, _write(tmp_path, name, data), expected, (ScoreError,), lambda s: len(s.notes))


@pytest.mark.skipif(not FLUIDR3.is_file(), reason="FluidR3 soundfont not installed")
@pytest.mark.parametrize("name", sorted(MIDI_CASES) + sorted(SCORE_ONLY))
def test_render_midi(tmp_path, name):
    data, expected = {**MIDI_CASES, **SCORE_ONLY}[name]
    if name in SCORE_ONLY:
        expected = "limit for rendering"
    path = _write(tmp_path, name, data)

    def render(p):
        return render_midi(p, soundfont=str(FLUIDR3), max_seconds=RENDER_LIMIT_S)

    _outcome(render, path, expected if not isinstance(expected, int) else 1, (RenderError,),
             lambda y: int(y.ndim == 1 and len(y) > 0 and np.isfinite(y).all()))


def test_hanging_notes_end_at_the_end_of_their_track(tmp_path):
    perf = load_performance(str(_write(tmp_path, "hang.mid", midi_bytes(melody(4) + HANG + [
        mido.Message("control_change", control=64, value=0, time=480)]))))
    hanging = perf.notes[perf.notes["pitch"] == 72]
    assert len(hanging) == 1
    assert hanging["offset_s"][0] == pytest.approx(hanging["onset_s"][0] + 0.5)   # 480 ticks at 120 qpm


def test_notes_outside_the_piano_are_kept_and_clipped_in_tokens(tmp_path):
    from pipelines.features.octuple import decode_fields, encode_score
    score = load_score(str(_write(tmp_path, "outside.mid", MIDI_CASES["outside-piano-range.mid"][0])))
    fields = decode_fields(encode_score(score))
    assert set(score.notes["pitch"]) == {0, 5, 120, 127}
    assert fields["pitch"].min() >= 21 and fields["pitch"].max() <= 108


# --- MusicXML ------------------------------------------------------------------------------------

PART_LIST = ('<part-list><score-part id="P1"><part-name>Piano</part-name></score-part></part-list>')


def musicxml(measures: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<score-partwise version="3.1">' + PART_LIST +
            f'<part id="P1">{measures}</part></score-partwise>')


NOTE = '<note><pitch><step>{step}</step><octave>4</octave></pitch><duration>1</duration><type>quarter</type></note>'
ATTRS = '<attributes><divisions>1</divisions><time><beats>4</beats><beat-type>4</beat-type></time></attributes>'
GOOD_XML = musicxml('<measure number="1">' + ATTRS + "".join(NOTE.format(step=s) for s in "CDEF") + "</measure>")


def _mxl(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("META-INF/container.xml", '<?xml version="1.0"?><container><rootfiles>'
                   '<rootfile full-path="missing.musicxml"/></rootfiles></container>')


XML_CASES = {
    "ok.musicxml": (GOOD_XML, 4),
    "zero-byte.musicxml": ("", "not a readable MusicXML"),
    "truncated.musicxml": (GOOD_XML[:len(GOOD_XML) // 2], "not a readable MusicXML"),
    "not-xml.xml": ("just some text, no tags", "not a readable MusicXML"),
    "random.mxl": (np.random.default_rng(1).bytes(2048), "not a readable MusicXML"),
    "html.musicxml": ("<html><body>404 not found</body></html>", "MusicXML"),
    "no-parts.musicxml": ('<?xml version="1.0"?><score-partwise version="3.1"><part-list/></score-partwise>',
                          "no parts|no notes|not a readable MusicXML"),
    "rests-only.musicxml": (musicxml('<measure number="1">' + ATTRS +
                                     '<note><rest/><duration>4</duration></note></measure>'), "no notes"),
    "bad-pitch.musicxml": (musicxml('<measure number="1">' + ATTRS + NOTE.format(step="H") + "</measure>"),
                           "not a readable MusicXML"),
    "negative-duration.musicxml": (musicxml('<measure number="1">' + ATTRS + NOTE.format(step="C").replace(
        "<duration>1</duration>", "<duration>-4</duration>") + "</measure>"), "any"),
    "divisions-zero.musicxml": (musicxml('<measure number="1">' + ATTRS.replace("<divisions>1", "<divisions>0") +
                                         NOTE.format(step="C") + "</measure>"), "any"),
    "mxl-missing-root.mxl": (_mxl, "not a readable MusicXML"),
}


@pytest.mark.parametrize("name", sorted(XML_CASES))
def test_musicxml(tmp_path, name):
    content, expected = XML_CASES[name]
    path = tmp_path / name
    if callable(content):
        content(path)
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    started = time.monotonic()
    if expected == "any":            # either outcome is fine, as long as it is one of the two
        try:
            score = load_score(str(path))
            assert np.isfinite(score.notes["onset_beat"]).all() and np.isfinite(score.notes["onset_s"]).all()
        except ScoreError as exc:
            assert "\n" not in str(exc) and path.name in str(exc)
    elif isinstance(expected, int):
        assert len(load_score(str(path)).notes) == expected
    else:
        with pytest.raises(Exception) as err:
            load_score(str(path))
        message = assert_one_line_error(err, path.name, (ScoreError,))
        assert any(fragment in message for fragment in expected.split("|")), message
    assert time.monotonic() - started < 20


# --- a score of another piece --------------------------------------------------------------------

def test_a_score_of_another_piece_is_set_aside_with_a_note(tmp_path):
    """Scoring aligns the playing to the score; a score of another piece matches too few notes and the recording
    is assessed from audio alone, with a note naming the score (not an error, not silently)."""
    from pipelines.config import load_config
    from pipelines.scoring.prepare import SpanPreparer, _Deadline

    played = [mido.Message(t, note=p, velocity=80, time=dt) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72] * 3)
              for t, dt in (("note_on", 0 if i == 0 else 240), ("note_off", 240))]
    other = [mido.Message(t, note=p, velocity=80, time=dt) for i, p in enumerate([30, 95, 41, 88, 33, 99, 47, 80] * 3)
             for t, dt in (("note_on", 0 if i == 0 else 120), ("note_off", 360))]
    perf = _write(tmp_path, "take 1.mid", midi_bytes(played))
    score = _write(tmp_path, "another piece.mid", midi_bytes(other))
    preparer = SpanPreparer(load_config("tiny"), use_audio=True, use_cqt=True, use_notes=True)
    entry = {"recording_id": "take 1", "midi_uri": str(perf), "score_uri": str(score)}
    bundle, info = preparer._alignment(entry, None, _Deadline(str(perf), 60.0))
    assert bundle is None and info["score_mismatch"] is True
    assert "another piece.mid" in info["note"] and "audio alone" in info["note"] and "\n" not in info["note"]


# --- file names ----------------------------------------------------------------------------------

ODD_NAMES = ["with space.mid", "it's \"quoted\".mid", "Chopin – Étude op.10 №3.mid", "ピアノ.mid", "semi;colon $x.mid"]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_file_names(tmp_path, name):
    good = _write(tmp_path, name, GOOD)
    assert len(load_performance(str(good)).notes) == 8 and len(load_score(str(good)).notes) == 8
    bad = _write(tmp_path, "broken " + name, GOOD[:30])
    for read, errors in ((load_performance, (MidiError,)), (load_score, (ScoreError,))):
        with pytest.raises(Exception) as err:
            read(str(bad))
        assert_one_line_error(err, bad.name, errors)
