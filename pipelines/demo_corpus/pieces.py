"""Real pieces for the demo corpus: the piece list, their loaders with an on-disk cache, excerpts, scores.

**Pieces.** Real music (see `DEMO_PIECES`): a human performance of Mozart K265 var. 1 aligned to its
score (parangonar's bundled match file), and music21-corpus piano scores (Joplin, J. S. Bach, Mozart,
C. P. E. Bach, Clara Schumann, Chopin, Schoenberg). Repeats are expanded where music21 can (else the
score is read straight through), ties are merged, grace notes are dropped, and a pickup bar is skipped.
Each piece is cut to its first bars that fit in `max_seconds` at the piece's tempo (`excerpt_bars`),
and `build_score` writes those bars as a `Score`.

Whole-piece arrays (`piece_arrays`: notes in quarters, bars, time signatures; for K265 also the human
performance, its alignment to the score and its pedal) are cached under $PIANOEVAL_CACHE_DIR or
~/.cache/pianoeval. `CorpusGenerationError` is the one error type of the demo corpus package.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import os
from pathlib import Path
from typing import Callable

import numpy as np

from pipelines import constants as C
from pipelines.io.notes import SCORE_NOTE_DTYPE, Score

CONVERTER_VERSION = 2                   # bump to invalidate cached score conversions
DYNAMIC_VELOCITIES = {"ppp": 28, "pp": 38, "p": 50, "mp": 60, "mf": 70, "f": 84, "ff": 98, "fff": 110}
DEFAULT_SCORE_VELOCITY = 64


class CorpusGenerationError(ValueError):
    """The demo corpus could not be generated; one line naming the input and the cause."""


@dataclasses.dataclass(frozen=True)
class PieceSpec:
    piece_id: str
    composer: str
    title: str
    source: str                         # music21 | match
    path: str                           # music21 corpus path, or 'parangonar:EXAMPLE'
    tempo_qpm: float | None             # None: estimated from the human performance
    pedal_beats: float | None           # quarters between pedal changes; None: one per bar


DEMO_PIECES: tuple[PieceSpec, ...] = (
    PieceSpec("mozart_k265_var1", "Wolfgang Amadeus Mozart",
              "12 Variations on 'Ah vous dirai-je, Maman' K265, var. 1 (human performance)",
              "match", "parangonar:EXAMPLE", None, None),
    PieceSpec("joplin_maple_leaf_rag", "Scott Joplin", "Maple Leaf Rag", "music21",
              "joplin/maple_leaf_rag.mxl", 92.0, 1.0),
    PieceSpec("bach_bwv846_prelude", "Johann Sebastian Bach", "Prelude in C major BWV 846", "music21",
              "bach/bwv846.mxl", 66.0, 4.0),
    PieceSpec("mozart_k545_mvt1", "Wolfgang Amadeus Mozart", "Sonata in C major K545, mvt. 1 (exposition)",
              "music21", "mozart/k545/movement1_exposition.mxl", 126.0, 2.0),
    PieceSpec("cpe_bach_h186_mvt2", "Carl Philipp Emanuel Bach", "Sonata in A major H186, mvt. 2 (Poco adagio)",
              "music21", "cpebach/h186.mxl", 58.0, 2.0),
    PieceSpec("clara_schumann_op1_no1", "Clara Schumann", "Polonaise op. 1 no. 1", "music21",
              "schumann_clara/polonaise_op1n1.mxl", 104.0, 3.0),
    PieceSpec("chopin_mazurka_op6_no2", "Frederic Chopin", "Mazurka in C-sharp minor op. 6 no. 2", "music21",
              "chopin/mazurka06-2.krn", 132.0, 3.0),
    PieceSpec("schoenberg_op19_no2", "Arnold Schoenberg", "Six Little Piano Pieces op. 19 no. 2", "music21",
              "schoenberg/opus19/movement2.mxl", 56.0, 2.0),
    PieceSpec("schoenberg_op19_no6", "Arnold Schoenberg", "Six Little Piano Pieces op. 19 no. 6", "music21",
              "schoenberg/opus19/movement6.mxl", 44.0, 4.0),
)


def _cache_dir() -> Path | None:
    root = os.environ.get("PIANOEVAL_CACHE_DIR") or os.path.join(Path.home(), ".cache", "pianoeval")
    path = Path(root) / "demo-scores"
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:
        return None                     # caching is an optimisation only


def _cached(key: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays from the cache file `key`, else built and (when the cache is writable) stored."""
    folder = _cache_dir()
    path = folder / f"{key}.npz" if folder else None
    if path is not None and path.exists():
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError):
            pass                        # a corrupt cache entry is rebuilt below
    arrays = build()
    if path is not None:
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        except OSError:
            pass
    return arrays


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _music21_arrays(corpus_path: str) -> dict[str, np.ndarray]:
    """Whole-piece arrays from a music21 corpus score: notes (quarters) and bars."""
    from music21 import corpus

    try:
        score = corpus.parse(corpus_path)
    except Exception as exc:
        raise CorpusGenerationError(f"music21 corpus {corpus_path}: cannot parse ({exc})") from None
    try:
        score = score.expandRepeats()
    except Exception:
        pass                            # badly formed repeats (the Chopin mazurka): read straight through
    score = score.stripTies()
    measures = list(score.parts[0].getElementsByClass("Measure"))
    bar_start, bar_len, ts_num, ts_den = [], [], [], []
    num, den = 4, 4
    for m in measures:
        if m.timeSignature is not None:
            num, den = int(m.timeSignature.numerator), int(m.timeSignature.denominator)
        bar_start.append(float(m.offset))
        bar_len.append(float(m.barDuration.quarterLength))
        ts_num.append(num)
        ts_den.append(den)
    # a bar's actual length is the distance to the next one (a pickup is shorter than its signature)
    bar_len[:-1] = list(np.diff(bar_start))
    marks = sorted((float(d.offset), DYNAMIC_VELOCITIES.get(str(d.value), DEFAULT_SCORE_VELOCITY))
                   for d in score.flatten().getElementsByClass("Dynamic"))
    onset, dur, pitch, voice = [], [], [], []
    for part_index, part in enumerate(score.parts):
        for element in part.flatten().notes:
            if element.duration.isGrace or element.quarterLength <= 0:
                continue
            for p in element.pitches:
                onset.append(float(element.offset))
                dur.append(float(element.quarterLength))
                pitch.append(int(p.midi))
                voice.append(part_index + 1)
    onset_a = np.asarray(onset)
    mark_times = np.asarray([t for t, _ in marks] or [0.0])
    mark_vels = np.asarray([v for _, v in marks] or [DEFAULT_SCORE_VELOCITY])
    idx = np.searchsorted(mark_times, onset_a, side="right") - 1
    velocity = np.where(idx >= 0, mark_vels[np.clip(idx, 0, None)], DEFAULT_SCORE_VELOCITY)
    return {"onset_q": onset_a, "duration_q": np.asarray(dur), "pitch": np.asarray(pitch),
            "voice": np.asarray(voice), "velocity": velocity.astype(np.int64),
            "bar_start_q": np.asarray(bar_start), "bar_len_q": np.asarray(bar_len),
            "ts_num": np.asarray(ts_num), "ts_den": np.asarray(ts_den)}


def _match_arrays() -> dict[str, np.ndarray]:
    """Score, human performance, alignment and pedal of parangonar's K265 match file."""
    import parangonar
    import partitura

    try:
        perf, alignment, score = partitura.load_match(parangonar.EXAMPLE, create_score=True)
    except Exception as exc:
        raise CorpusGenerationError(f"{parangonar.EXAMPLE}: cannot load the match file ({exc})") from None
    part = score[0] if hasattr(score, "__getitem__") else score
    sna = part.note_array(include_time_signature=True)
    pna = perf.note_array()
    measures = list(part.measures)
    starts = np.asarray(part.quarter_map([m.start.t for m in measures]), dtype=float)
    ends = np.asarray(part.quarter_map([m.end.t for m in measures]), dtype=float)
    note_bar = np.searchsorted(starts, sna["onset_quarter"], side="right") - 1
    ts_num = np.full(len(measures), 4)
    ts_den = np.full(len(measures), 4)
    ts_num[note_bar] = sna["ts_beats"]
    ts_den[note_bar] = sna["ts_beat_type"]
    score_pos = {str(sid): i for i, sid in enumerate(sna["id"])}
    perf_pos = {str(pid): i for i, pid in enumerate(pna["id"])}
    perf_score = np.full(len(pna), -1)
    for a in alignment:
        if a["label"] == "match":
            perf_score[perf_pos[str(a["performance_id"])]] = score_pos[str(a["score_id"])]
    controls = [c for pp in perf for c in pp.controls if int(c["number"]) in (C.CC_SUSTAIN, C.CC_SOSTENUTO, C.CC_SOFT)]
    return {"onset_q": np.asarray(sna["onset_quarter"], float),
            "duration_q": np.asarray(sna["duration_quarter"], float),
            "pitch": np.asarray(sna["pitch"], np.int64), "voice": np.asarray(sna["voice"], np.int64),
            "velocity": np.full(len(sna), DEFAULT_SCORE_VELOCITY),
            "bar_start_q": starts, "bar_len_q": ends - starts, "ts_num": ts_num, "ts_den": ts_den,
            "perf_onset_s": np.asarray(pna["onset_sec"], float),
            "perf_offset_s": np.asarray(pna["onset_sec"] + pna["duration_sec"], float),
            "perf_pitch": np.asarray(pna["pitch"], np.int64), "perf_velocity": np.asarray(pna["velocity"], np.int64),
            "perf_score_index": perf_score,
            "pedal_time_s": np.asarray([float(c["time"]) for c in controls]),
            "pedal_controller": np.asarray([int(c["number"]) for c in controls], np.int64),
            "pedal_value": np.asarray([int(c["value"]) for c in controls], np.int64)}


def piece_arrays(spec: PieceSpec) -> dict[str, np.ndarray]:
    """Whole-piece arrays (cached on disk under $PIANOEVAL_CACHE_DIR or ~/.cache/pianoeval)."""
    if spec.source == "music21":
        key = f"{spec.piece_id}-m21-{_version('music21')}-v{CONVERTER_VERSION}"
        return _cached(key, lambda: _music21_arrays(spec.path))
    if spec.source == "match":
        key = f"{spec.piece_id}-match-{_version('partitura')}-{_version('parangonar')}-v{CONVERTER_VERSION}"
        return _cached(key, _match_arrays)
    raise CorpusGenerationError(f"piece {spec.piece_id}: unknown source {spec.source!r}")


def human_tempo_qpm(arrays: dict[str, np.ndarray]) -> float:
    """Quarter notes per minute of a human performance: slope of onset seconds vs score quarters."""
    matched = arrays["perf_score_index"] >= 0
    quarters = arrays["onset_q"][arrays["perf_score_index"][matched]]
    seconds = arrays["perf_onset_s"][matched]
    slope = np.polyfit(quarters, seconds, 1)[0]
    return float(round(60.0 / slope, 1))


def excerpt_bars(arrays: dict[str, np.ndarray], tempo_qpm: float, max_seconds: float) -> tuple[int, int]:
    """[first, last) bar indices: skip a pickup bar, then as many whole bars as fit in max_seconds."""
    starts, lengths = arrays["bar_start_q"], arrays["bar_len_q"]
    full = lengths[0] >= arrays["ts_num"][0] * 4.0 / arrays["ts_den"][0] - 1e-6
    first = 0 if full or len(starts) == 1 else 1
    budget_q = max_seconds * tempo_qpm / 60.0
    ends = starts[first:] + lengths[first:] - starts[first]
    count = max(1, int(np.sum(ends <= budget_q + 1e-6)))
    return first, first + count


def build_score(arrays: dict[str, np.ndarray], first: int, last: int, tempo_qpm: float) -> Score:
    """A Score (SCORE_NOTE_DTYPE) of bars [first, last), beats rebased to the excerpt start."""
    origin = float(arrays["bar_start_q"][first])
    end_q = float(arrays["bar_start_q"][last - 1] + arrays["bar_len_q"][last - 1])
    onset = arrays["onset_q"]
    keep = (onset >= origin - 1e-9) & (onset < end_q - 1e-9)
    bar_starts = arrays["bar_start_q"][first:last] - origin
    notes = np.zeros(int(keep.sum()), dtype=SCORE_NOTE_DTYPE)
    notes["onset_beat"] = onset[keep] - origin
    notes["duration_beat"] = np.minimum(arrays["duration_q"][keep], end_q - onset[keep])
    notes["pitch"] = arrays["pitch"][keep]
    notes["velocity"] = arrays["velocity"][keep]
    notes["voice"] = arrays["voice"][keep]
    notes = _dedupe_score_notes(notes[np.lexsort((notes["pitch"], notes["onset_beat"]))])
    bar = np.searchsorted(bar_starts, notes["onset_beat"] + 1e-9, side="right") - 1
    notes["bar"] = bar
    notes["position_beat"] = notes["onset_beat"] - bar_starts[bar]
    notes["ts_num"] = arrays["ts_num"][first:last][bar]
    notes["ts_den"] = arrays["ts_den"][first:last][bar]
    notes["onset_s"] = notes["onset_beat"] * 60.0 / tempo_qpm
    notes["duration_s"] = notes["duration_beat"] * 60.0 / tempo_qpm
    notes["id"] = np.arange(len(notes))
    return Score(notes=notes, bar_starts_beat=bar_starts.astype(float), tempo_qpm=float(tempo_qpm))


def _dedupe_score_notes(notes: np.ndarray) -> np.ndarray:
    """Keep one note per (onset, pitch) - the longest - when two voices write the same key."""
    if len(notes) < 2:
        return notes
    order = np.lexsort((-notes["duration_beat"], notes["pitch"], np.round(notes["onset_beat"], 6)))
    ranked = notes[order]
    key = np.stack([np.round(ranked["onset_beat"], 6), ranked["pitch"].astype(float)], axis=1)
    first = np.ones(len(ranked), dtype=bool)
    first[1:] = np.any(key[1:] != key[:-1], axis=1)
    kept = ranked[first]
    return kept[np.lexsort((kept["pitch"], kept["onset_beat"]))]


def score_end_beat(score: Score) -> float:
    """End of the last bar (quarters): the last bar start plus its time signature's length."""
    if not len(score.notes):
        return 0.0
    last = score.notes[-1]
    bar_len = last["ts_num"] * 4.0 / last["ts_den"]
    last_offset = np.max(score.notes["onset_beat"] + score.notes["duration_beat"])
    return float(max(score.bar_starts_beat[-1] + bar_len, last_offset))
