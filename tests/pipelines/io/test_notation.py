"""Score loading: generated score MIDI and MusicXML, PercePiano twins, slicing, errors, s3://."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from pipelines.io.notation import ScoreError, load_score, score_from_midi_bytes, slice_bars

# bars of a generated score: (time signature, [(pitch, quarter length)]) with triplets and 32nds
GENERATED_BARS = [
    ("3/4", [(60, Fraction(1)), (62, Fraction(1, 3)), (64, Fraction(1, 3)), (65, Fraction(1, 3)), (67, Fraction(1))]),
    ("6/8", [(72, Fraction(1, 8))] * 4 + [(71, Fraction(1, 2)), (69, Fraction(1, 2)), (67, Fraction(3, 2))]),
    ("4/4", [(60, Fraction(2)), (64, Fraction(2, 3)), (67, Fraction(2, 3)), (72, Fraction(2, 3))]),
    ("4/4", [(74, Fraction(1, 8))] * 8 + [(76, Fraction(1, 6))] * 6 + [(77, Fraction(1))]),
]


def expected_rows(bars=GENERATED_BARS) -> list[tuple[float, float, int, int, float, int, int]]:
    """(onset_beat, duration_beat, pitch, bar, position_beat, ts_num, ts_den) of GENERATED_BARS."""
    rows, bar_start = [], Fraction(0)
    for bar, (ts, notes) in enumerate(bars):
        num, den = (int(x) for x in ts.split("/"))
        position = Fraction(0)
        for pitch, length in notes:
            rows.append((float(bar_start + position), float(length), pitch, bar, float(position), num, den))
            position += length
        bar_start += Fraction(num * 4, den)
    return rows


def write_generated_musicxml(path: Path, bars=GENERATED_BARS, qpm: float = 90.0) -> Path:
    """Write GENERATED_BARS as MusicXML with music21 (one part, a metronome mark)."""
    from music21 import meter, note, stream, tempo

    part = stream.Part()
    for i, (ts, notes) in enumerate(bars):
        measure = stream.Measure(number=i + 1)
        if i == 0 or ts != bars[i - 1][0]:
            measure.append(meter.TimeSignature(ts))
        if i == 0:
            measure.insert(0, tempo.MetronomeMark(number=qpm))
        for pitch, length in notes:
            measure.append(note.Note(pitch, quarterLength=length))
        part.append(measure)
    stream.Score([part]).write("musicxml", fp=str(path))
    return path


def write_generated_midi(path: Path, bars=GENERATED_BARS, qpm: float = 90.0) -> Path:
    """Write GENERATED_BARS as a two-track score MIDI (melody + a bass note per bar), 480 ticks/quarter."""
    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=qpm)
    melody, bass = pretty_midi.Instrument(0), pretty_midi.Instrument(0)
    spq = 60.0 / qpm
    for onset, length, pitch, bar, position, num, den in expected_rows(bars):
        melody.notes.append(pretty_midi.Note(80, pitch, onset * spq, (onset + length) * spq))
        if position == 0:
            bass.notes.append(pretty_midi.Note(60, 36, onset * spq, (onset + num * 4 / den) * spq))
    bar_start = 0.0
    for i, (ts, _) in enumerate(bars):
        num, den = (int(x) for x in ts.split("/"))
        if i == 0 or ts != bars[i - 1][0]:
            pm.time_signature_changes.append(pretty_midi.TimeSignature(num, den, bar_start * spq))
        bar_start += num * 4 / den
    pm.instruments.extend([melody, bass])
    pm.write(str(path))
    return path


def assert_matches_expected(score, rows) -> None:
    melody = score.notes[score.notes["pitch"] != 36]
    expected = np.array(rows, dtype=np.float64)
    order = np.lexsort((expected[:, 2], expected[:, 0]))
    expected = expected[order]
    for column, name in enumerate(("onset_beat", "duration_beat", "pitch", "bar", "position_beat", "ts_num",
                                   "ts_den")):
        np.testing.assert_allclose(melody[name], expected[:, column], atol=1e-6, err_msg=name)


def test_generated_musicxml_bars_positions_and_tempo(tmp_path):
    score = load_score(str(write_generated_musicxml(tmp_path / "g.musicxml")))
    assert score.source_format == "musicxml"
    assert score.n_bars == 4
    np.testing.assert_allclose(score.bar_starts_beat, [0, 3, 6, 10])
    assert score.tempo_qpm == pytest.approx(90.0)
    assert_matches_expected(score, expected_rows())
    np.testing.assert_allclose(score.notes["onset_s"], score.notes["onset_beat"] * 60 / 90.0, atol=1e-9)
    assert (score.notes["id"] == np.arange(len(score.notes))).all()
    assert (score.notes["velocity"] == 64).all()


def test_generated_midi_bars_from_time_signature_changes(tmp_path):
    score = load_score(str(write_generated_midi(tmp_path / "g.mid")))
    assert score.source_format == "midi" and score.n_bars == 4
    np.testing.assert_allclose(score.bar_starts_beat, [0, 3, 6, 10])
    assert score.tempo_qpm == pytest.approx(90.0)
    assert_matches_expected(score, expected_rows())
    assert set(score.notes["voice"].tolist()) == {1, 2}                  # track number + 1
    onsets = score.notes["onset_beat"]
    assert (np.diff(onsets) >= 0).all()
    same = np.diff(onsets) == 0
    assert (np.diff(score.notes["pitch"].astype(int))[same] >= 0).all()  # ties broken by pitch


def test_midi_tempo_change_keeps_beats_exact():
    """One note per beat; 120 qpm for 4 beats, then 60 qpm: onsets 0, .5, 1, 1.5, 2, 3, 4, 5 s."""
    import io

    import mido

    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500_000, time=0)])
    for beat in range(8):
        if beat == 4:
            track.append(mido.MetaMessage("set_tempo", tempo=1_000_000, time=0))
        track.append(mido.Message("note_on", note=60 + beat, velocity=64, time=0))
        track.append(mido.Message("note_off", note=60 + beat, velocity=0, time=240))
        track.append(mido.Message("note_off", note=0, velocity=0, time=240))   # rest to the next beat
    midi = mido.MidiFile(ticks_per_beat=480)
    midi.tracks.append(track)
    buffer = io.BytesIO()
    midi.save(file=buffer)
    score = score_from_midi_bytes(buffer.getvalue(), name="tempo.mid")
    np.testing.assert_allclose(score.notes["onset_beat"], np.arange(8), atol=1e-9)
    np.testing.assert_allclose(score.notes["duration_beat"], 0.5, atol=1e-9)
    np.testing.assert_allclose(score.notes["onset_s"], [0, 0.5, 1, 1.5, 2, 3, 4, 5], atol=1e-6)
    assert score.tempo_qpm == pytest.approx(120.0)
    assert score.n_bars == 2 and score.notes["ts_num"][0] == 4            # 4/4 when none is written


def test_slice_bars_rebases_and_keeps_ids(tmp_path):
    score = load_score(str(write_generated_musicxml(tmp_path / "g.musicxml")))
    part = slice_bars(score, 1, 2)
    assert part.n_bars == 2
    np.testing.assert_allclose(part.bar_starts_beat, [0, 3])
    full = score.notes[(score.notes["bar"] >= 1) & (score.notes["bar"] <= 2)]
    assert (part.notes["id"] == full["id"]).all()
    assert (part.notes["bar"] == full["bar"] - 1).all()
    np.testing.assert_allclose(part.notes["onset_beat"], full["onset_beat"] - 3)
    np.testing.assert_allclose(part.notes["onset_s"], full["onset_s"] - 3 * 60 / 90.0, atol=1e-9)
    np.testing.assert_allclose(part.notes["position_beat"], full["position_beat"])
    assert slice_bars(score, 3, 99).n_bars == 1                          # clipped to the last bar
    with pytest.raises(ValueError, match="outside"):
        slice_bars(score, 4, 5)


def test_music21_corpus_mxl_loads():
    from music21 import corpus

    score = load_score(str(corpus.getWork("mozart/k545")))
    assert score.n_bars >= 12 and len(score.notes) > 150
    assert score.tempo_qpm > 60
    assert (score.notes["position_beat"] >= 0).all()
    assert (score.notes["position_beat"] < 4 + 1e-9).all()
    assert (score.notes["bar"] < score.n_bars).all()


def _twin_pairs(percepiano_dir: Path, every: int = 12) -> list[tuple[Path, Path]]:
    xml = sorted((percepiano_dir / "scores_xml").glob("*_Score_*.musicxml"))[::every]
    return [(x, percepiano_dir / "scores_midi" / f"{x.stem}.mid") for x in xml]


def test_percepiano_musicxml_and_midi_twins_agree(percepiano_dir):
    """Same bars and the same (onset, pitch) pairs; the MIDI twins are renditions with rolled chords
    and written-out ornaments, so a few notes may sit off the written onset."""
    pairs = _twin_pairs(percepiano_dir)
    assert len(pairs) >= 6
    for xml_path, midi_path in pairs:
        xml, midi = load_score(str(xml_path)), load_score(str(midi_path))
        assert xml.notes["bar"].max() == midi.notes["bar"].max(), xml_path.name
        assert midi.n_bars <= xml.n_bars <= midi.n_bars + 1, xml_path.name  # MIDI cannot see trailing rests
        hits = [np.any((midi.notes["pitch"] == p) & (np.abs(midi.notes["onset_beat"] - o) <= 0.05))
                for o, p in zip(xml.notes["onset_beat"], xml.notes["pitch"])]
        assert np.mean(hits) >= 0.85, (xml_path.name, np.mean(hits))
        assert xml.tempo_qpm > 0 and midi.tempo_qpm > 0


PEDAL_MUSICXML = """<?xml version="1.0" encoding="UTF-8"?>
<score-partwise version="3.1">
  <part-list><score-part id="P1"><part-name>Piano</part-name></score-part></part-list>
  <part id="P1">
    <measure number="1">
      <attributes><divisions>2</divisions><time><beats>4</beats><beat-type>4</beat-type></time></attributes>
      <direction><direction-type><pedal type="start" line="yes"/></direction-type></direction>
      <note><pitch><step>C</step><octave>4</octave></pitch><duration>4</duration><voice>1</voice></note>
      <note><pitch><step>E</step><octave>4</octave></pitch><duration>3</duration><voice>1</voice></note>
      <direction><direction-type><pedal type="stop" line="yes"/></direction-type></direction>
      <note><pitch><step>G</step><octave>4</octave></pitch><duration>1</duration><voice>1</voice></note>
    </measure>
    <measure number="2">
      <direction><direction-type><pedal type="start" line="yes"/></direction-type></direction>
      <note><pitch><step>C</step><octave>5</octave></pitch><duration>8</duration><voice>1</voice></note>
      <direction><direction-type><pedal type="stop" line="yes"/></direction-type></direction>
    </measure>
  </part>
</score-partwise>
"""


def test_written_pedal_from_musicxml_marks_and_score_midi_cc64(tmp_path):
    """'Ped.' .. '*' marks and a score MIDI's CC64 both give (down, up) intervals in quarters; slicing bars
    clips and rebases them; a score without any pedal says nothing (None), not 'never pedal'."""
    xml = tmp_path / "pedal.musicxml"
    xml.write_text(PEDAL_MUSICXML)
    score = load_score(str(xml))
    np.testing.assert_allclose(score.pedal_beats, [[0.0, 3.5], [4.0, 8.0]])
    np.testing.assert_allclose(slice_bars(score, 1, 1).pedal_beats, [[0.0, 4.0]])

    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=120.0)       # 0.5 s a quarter
    piano = pretty_midi.Instrument(0)
    piano.notes += [pretty_midi.Note(70, 60, 0.0, 2.0), pretty_midi.Note(70, 64, 2.0, 4.0)]
    piano.control_changes += [pretty_midi.ControlChange(64, v, t) for t, v in
                              [(0.0, 127), (1.0, 100), (1.9, 0), (2.0, 127), (2.5, 30)]]   # 100: still down
    pm.instruments.append(piano)
    midi = tmp_path / "pedal.mid"
    pm.write(str(midi))
    np.testing.assert_allclose(load_score(str(midi)).pedal_beats, [[0.0, 3.8], [4.0, 5.0]])
    assert load_score(str(write_generated_midi(tmp_path / "plain.mid"))).pedal_beats is None


def _xml_note(step: str, duration: int, voice: int = 1, notations: str = "", chord: bool = False) -> str:
    return (f"<note>{'<chord/>' if chord else ''}<pitch><step>{step}</step><octave>4</octave></pitch>"
            f"<duration>{duration}</duration><voice>{voice}</voice>"
            f"{f'<notations>{notations}</notations>' if notations else ''}</note>")


ARTICULATION_MUSICXML = f"""<?xml version="1.0" encoding="UTF-8"?>
<score-partwise version="3.1">
  <part-list><score-part id="P1"><part-name>Piano</part-name></score-part></part-list>
  <part id="P1">
    <measure number="1">
      <attributes><divisions>1</divisions><time><beats>4</beats><beat-type>4</beat-type></time></attributes>
      {_xml_note("C", 1, notations='<slur type="start" number="1"/>')}
      {_xml_note("D", 1)}
      {_xml_note("E", 1, notations='<slur type="stop" number="1"/>')}
      {_xml_note("F", 1, notations='<articulations><staccato/></articulations>')}
      <backup><duration>4</duration></backup>
      {_xml_note("A", 4, voice=2)}
    </measure>
    <measure number="2">
      {_xml_note("G", 1, notations='<articulations><staccatissimo/></articulations>')}
      {_xml_note("A", 1, notations='<slur type="start" number="1"/><articulations><staccato/></articulations>')}
      {_xml_note("B", 2, notations='<slur type="stop" number="1"/>')}
    </measure>
  </part>
</score-partwise>
"""


def test_musicxml_articulation_marks_become_note_marks(tmp_path):
    """Slurred notes (all but a slur's last, slurred staccato included) are legato, staccato-family marks
    outside slurs are staccato, the rest (another voice under the slur too) unmarked; a score MIDI marks
    nothing; marks follow their notes through slicing."""
    from pipelines.io.notes import MARK_LEGATO as L, MARK_NONE as N, MARK_STACCATO as S

    xml = tmp_path / "marks.musicxml"
    xml.write_text(ARTICULATION_MUSICXML)
    score = load_score(str(xml))
    by_onset = {(float(n["onset_beat"]), int(n["pitch"])): int(n["mark"]) for n in score.notes}
    assert by_onset == {(0.0, 60): L, (0.0, 69): N, (1.0, 62): L, (2.0, 64): N, (3.0, 65): S,
                        (4.0, 67): S, (5.0, 69): L, (6.0, 71): N}
    assert list(slice_bars(score, 1, 1).notes["mark"]) == [S, L, N]
    tremolo = ARTICULATION_MUSICXML.replace(
        _xml_note("A", 4, voice=2), _xml_note("A", 4, voice=2, notations='<ornaments><tremolo type="single">3'
                                               '</tremolo></ornaments>') + _xml_note("C", 4, voice=2, chord=True))
    (tmp_path / "tremolo.musicxml").write_text(tremolo)
    marks = {(float(n["onset_beat"]), int(n["pitch"])): int(n["mark"])
             for n in load_score(str(tmp_path / "tremolo.musicxml")).notes}
    assert marks[(0.0, 69)] == marks[(0.0, 60)] == 3                 # the chord mate too
    assert marks[(1.0, 62)] == L
    assert not load_score(str(write_generated_midi(tmp_path / "plain.mid"))).notes["mark"].any()


def test_percepiano_written_pedal_agrees_between_musicxml_and_midi(percepiano_dir):
    """PercePiano's marked scores (Schubert D960 mvt. 2): the MusicXML marks and the MIDI twin's CC64 agree."""
    xml_path = sorted((percepiano_dir / "scores_xml").glob("Schubert_D960_mv2_8bars_Score_*.musicxml"))[0]
    xml, midi = load_score(str(xml_path)), load_score(str(percepiano_dir / "scores_midi" / f"{xml_path.stem}.mid"))
    assert xml.pedal_beats is not None and midi.pedal_beats is not None
    assert len(xml.pedal_beats) == len(midi.pedal_beats) >= 4
    np.testing.assert_allclose(midi.pedal_beats, xml.pedal_beats, atol=0.02)


@pytest.mark.parametrize("suffix, content, cause", [
    (".mid", b"MThd\x00\x00\x00\x06garbage", "not a readable MIDI"),
    (".mid", b"", "not a readable MIDI"),
    (".musicxml", b"<score-partwise><part-list>", "not a readable MusicXML"),
    (".mxl", b"PK\x03\x04 not really a zip", "not a readable MusicXML"),
])
def test_broken_files_raise_one_line_errors(tmp_path, suffix, content, cause):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(content)
    with pytest.raises(ScoreError, match=cause) as info:
        load_score(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_empty_and_unsupported_inputs(tmp_path):
    with pytest.raises(ScoreError, match="no such file"):
        load_score(str(tmp_path / "missing.mid"))
    with pytest.raises(ScoreError, match="unsupported score extension"):
        load_score(str(tmp_path / "score.pdf"))
    empty = pretty_midi.PrettyMIDI()
    empty.instruments.append(pretty_midi.Instrument(0))
    empty.write(str(tmp_path / "empty.mid"))
    with pytest.raises(ScoreError, match="no notes"):
        load_score(str(tmp_path / "empty.mid"))


def test_load_from_s3(s3_bucket, tmp_path):
    from pipelines.io import storage

    local = write_generated_musicxml(tmp_path / "g.musicxml")
    storage.upload_file(str(local), f"{s3_bucket}/scores/g.musicxml")
    storage.upload_file(str(write_generated_midi(tmp_path / "g.mid")), f"{s3_bucket}/scores/g.mid")
    assert load_score(f"{s3_bucket}/scores/g.musicxml").n_bars == 4
    assert load_score(f"{s3_bucket}/scores/g.mid").n_bars == 4
    with pytest.raises(ScoreError, match="missing.mid"):
        load_score(f"{s3_bucket}/scores/missing.mid")
