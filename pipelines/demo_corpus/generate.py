"""The demo corpus: real piano scores, performances with known deviations, ground-truth labels.

**Pieces.** Real music (see `DEMO_PIECES`): a human performance of Mozart K265 var. 1 aligned to its
score (parangonar's bundled match file), and music21-corpus piano scores (Joplin, J. S. Bach, Mozart,
C. P. E. Bach, Clara Schumann, Chopin, Schoenberg). Repeats are expanded where music21 can (else the
score is read straight through), ties are merged, grace notes are dropped, and a pickup bar is skipped.
Each piece is cut to its first bars that fit in `max_seconds` at the piece's tempo.

**Takes.** Take 0 of every piece is clean: for K265 the human performance itself; for the others a
*natural rendition* of the score (`natural_rendition`): phrase-level rubato and final ritardandi,
dynamic arches, downbeat accents, melody voicing and lead, slight legato, legato pedalling (a change
every `pedal_beats` quarters), with small seeded variation, so expressive but correct playing is
clean. Every further take draws a severity s from a stratified grid over (0.1, 1] and a random subset
of deviation families (`sample_deviation_spec`), and `apply_deviations` applies them to its own
natural rendition (K265: to the human performance):

| family | spec fields | what changes |
| --- | --- | --- |
| notes | wrong_rate, missed_rate, extra_rate | pitch +-1/2 semitones; note removed; slip note added near a played one |
| timing | onset_jitter_ms, tempo_drift | N(0, sigma) onset shifts; tempo ratio 1 -> 1 + drift across the take |
| dynamics | dynamics_flatten, velocity_noise | velocities pulled to their mean; N(0, sigma) velocity noise |
| tone | voicing_loss, harshness | top note of each chord pulled below the others; velocities pushed up |
| articulation | duration_scale, duration_jitter | sounding durations x scale x exp(N(0, sigma)) |
| pedal | pedal_missing, pedal_blur | pedal presses dropped; pedal held through changes (blur) |
| expression | deadpan | rubato and dynamic shaping removed (interpretive only) |

**Labels** (formula `LABEL_FORMULA_VERSION`). Each take yields *measures* of what was applied: the note
error rate (wrong + missed + extra) / played score notes, the RMS of the drawn onset shifts (ms), |drift|,
the flatten fraction, the RMS of the drawn velocity noise, the voicing loss, the harshness (velocity
units), |ln duration_scale|, the RMS of the drawn log-duration factors, the fraction of pedal presses
dropped and of pedal changes blurred, and the deadpan fraction. A dimension's label is

    label = 100 * 2 ** ( - sum over its measures m of  m / h[dimension][m] )

with the half-lives h of `LABEL_HALF_LIVES` (the amount of a measure that alone halves the label):

| dimension | measure: half-life |
| --- | --- |
| note_accuracy | note_error_rate: 0.08 |
| rhythmic_precision | onset_jitter_ms: 30; tempo_drift: 0.20 |
| dynamics_control | dynamics_flatten: 0.6; velocity_noise: 12 |
| articulation | duration_log_scale: 0.40; duration_log_jitter: 0.30 |
| pedaling | pedal_missing: 0.40; pedal_blur: 0.40 |
| tone | voicing_loss: 0.5; harshness: 18; velocity_noise: 30 |
| phrasing (proxy) | deadpan: 0.6; tempo_drift: 0.40; dynamics_flatten: 1.2 |
| expressiveness (proxy) | deadpan: 0.5; dynamics_flatten: 0.8 |
| musicality (proxy) | deadpan: 1.0; note_error_rate: 0.25; onset_jitter_ms: 90; voicing_loss: 1.2; pedal_blur: 1.2 |
| overall (proxy) | mean of the other nine |

A clean take scores 100 on every dimension and any deviation lowers the dimensions it touches, more
for more (a larger rate keeps the smaller rate's choices, drawn noise scales with its sigma). The six
technical seed10 dimensions depend only on technical deviations. The interpretive ones are **synthetic
proxies** (deadpan playing plus some technical measures): they exercise the interpretive heads and
the aggregate, they are not musical judgements. Measures are of what was applied, so a deviation
with nothing to act on scores nothing (a piece whose clean rendition has no pedal keeps pedaling 100).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from model.schema import SEED10
from pipelines import constants as C
from pipelines.io import storage
from pipelines.io.notes import PEDAL_DTYPE, PERF_NOTE_DTYPE, SCORE_NOTE_DTYPE, Performance, Score

LABEL_FORMULA_VERSION = "demo-labels-v1"
CONVERTER_VERSION = 2                   # bump to invalidate cached score conversions
DEFAULT_MAX_SECONDS = 40.0
LEAD_IN_S = 0.5                         # silence before the first note of a natural rendition
PHRASE_BARS = 4                         # bars per phrase for rubato and dynamic arches
TIME_GRID_BEATS = 1.0 / 48.0            # resolution of the beat -> seconds map, quarter notes
MIN_NOTE_S = 0.03                       # shortest sounding note
PEDAL_PRESS_DELAY_S = 0.09              # legato pedalling: re-press after the change's attack
PEDAL_RELEASE_DELAY_S = 0.03            # ... and release just after it
FINAL_PEDAL_HOLD_S = 0.4                # last release after the end of the excerpt
VELOCITY_MIN, VELOCITY_MAX = 1, 127
DYNAMIC_VELOCITIES = {"ppp": 28, "pp": 38, "p": 50, "mp": 60, "mf": 70, "f": 84, "ff": 98, "fff": 110}
DEFAULT_SCORE_VELOCITY = 64
HUMAN_PERFORMER = "k265-human"          # the pianist of parangonar's K265 recording
DEMO_YEAR = 2025                        # MAESTRO's `year` column for generated recordings
AUDIO_FORMAT = "flac"
RENDER_THREADS = 2                      # FluidSynth renders in parallel (it releases the GIL)
TECHNICAL_DIMS = ("note_accuracy", "rhythmic_precision", "dynamics_control", "articulation", "pedaling", "tone")

# Half-lives: the amount of each measure that alone halves a dimension's label.
LABEL_HALF_LIVES: dict[str, dict[str, float]] = {
    "note_accuracy": {"note_error_rate": 0.08},
    "rhythmic_precision": {"onset_jitter_ms": 30.0, "tempo_drift": 0.20},
    "dynamics_control": {"dynamics_flatten": 0.6, "velocity_noise": 12.0},
    "articulation": {"duration_log_scale": 0.40, "duration_log_jitter": 0.30},
    "pedaling": {"pedal_missing": 0.40, "pedal_blur": 0.40},
    "tone": {"voicing_loss": 0.5, "harshness": 18.0, "velocity_noise": 30.0},
    "phrasing": {"deadpan": 0.6, "tempo_drift": 0.40, "dynamics_flatten": 1.2},
    "expressiveness": {"deadpan": 0.5, "dynamics_flatten": 0.8},
    "musicality": {"deadpan": 1.0, "note_error_rate": 0.25, "onset_jitter_ms": 90.0, "voicing_loss": 1.2,
                   "pedal_blur": 1.2},
}
OVERALL_DIM = "overall"                 # mean of the other nine
MEASURE_NAMES = ("note_error_rate", "onset_jitter_ms", "tempo_drift", "dynamics_flatten", "velocity_noise",
                 "voicing_loss", "harshness", "duration_log_scale", "duration_log_jitter", "pedal_missing",
                 "pedal_blur", "deadpan")


class CorpusGenerationError(ValueError):
    """The demo corpus could not be generated; one line naming the input and the cause."""


# --- pieces ----------------------------------------------------------------------------------

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


# --- renditions ------------------------------------------------------------------------------

@dataclasses.dataclass
class Rendition:
    """A correct performance of a score, the base that deviations act on.

    notes: PERF_NOTE_DTYPE [n] sorted by onset; score_index: i8 [n], the score note each performed note
    plays (-1 for a note the score lacks); pedal: PEDAL_DTYPE [m] sorted by time.
    """
    notes: np.ndarray
    score_index: np.ndarray
    pedal: np.ndarray


def _sort_rendition(notes: np.ndarray, score_index: np.ndarray, pedal: np.ndarray) -> Rendition:
    order = np.lexsort((notes["pitch"], notes["onset_s"]))
    pedal = pedal[np.argsort(pedal["time_s"], kind="stable")]
    return Rendition(notes=notes[order], score_index=score_index[order].astype(np.int64), pedal=pedal)


def _expression_params(seed: int) -> dict[str, float]:
    rng = np.random.default_rng([seed, 7])
    return {"tempo_factor": rng.uniform(0.95, 1.05), "rubato": rng.uniform(0.02, 0.05),
            "ritardando": rng.uniform(0.06, 0.12), "arch": rng.uniform(6.0, 12.0),
            "accent": rng.uniform(3.0, 6.0), "melody": rng.uniform(8.0, 14.0),
            "melody_lead_s": rng.uniform(0.005, 0.015), "legato": rng.uniform(0.88, 0.96)}


def _phrase_position(beats: np.ndarray, phrase_starts: np.ndarray) -> np.ndarray:
    """Position in [0, 1) of each beat within its phrase."""
    idx = np.clip(np.searchsorted(phrase_starts, beats, side="right") - 1, 0, len(phrase_starts) - 2)
    span = phrase_starts[idx + 1] - phrase_starts[idx]
    return np.clip((beats - phrase_starts[idx]) / span, 0.0, 1.0 - 1e-9)


def _phrase_starts(score: Score) -> np.ndarray:
    end = score_end_beat(score)
    starts = score.bar_starts_beat[::PHRASE_BARS]
    return np.append(starts, max(end, starts[-1] + 1e-3))


def beat_time_map(score: Score, expression_seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """Score quarters -> performed seconds with phrase rubato (faster mid-phrase, ritardando at its end)."""
    p = _expression_params(expression_seed)
    phrases = _phrase_starts(score)
    grid = np.arange(0.0, score_end_beat(score) + 16.0, TIME_GRID_BEATS)
    x = _phrase_position(grid, phrases)
    rate = 1.0 + p["rubato"] * np.sin(np.pi * x) - p["ritardando"] * np.clip((x - 0.75) / 0.25, 0, 1) ** 2
    sec_per_beat = 60.0 / (score.tempo_qpm * p["tempo_factor"] * rate)
    times = LEAD_IN_S + np.concatenate([[0.0], np.cumsum(sec_per_beat[:-1] * TIME_GRID_BEATS)])
    return lambda beats: np.interp(beats, grid, times)


def onset_groups(beats: np.ndarray) -> np.ndarray:
    """Group index per note: notes with the same score onset share one (NaN beats get their own)."""
    keys = np.where(np.isnan(beats), np.arange(len(beats)) + 1e9, np.round(beats, 6))
    _, inverse = np.unique(keys, return_inverse=True)
    return inverse


def top_of_chord(pitch: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """True for the highest note of each onset group that has two or more notes."""
    top = np.zeros(len(pitch), dtype=bool)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        if len(members) >= 2:
            top[members[np.argmax(pitch[members])]] = True
    return top


def pedal_change_beats(score: Score, pedal_beats: float | None) -> np.ndarray:
    """Score quarters at which the sustain pedal changes: every bar start, and every `pedal_beats` within."""
    end = score_end_beat(score)
    bounds = np.append(score.bar_starts_beat, end)
    changes = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        step = pedal_beats if pedal_beats else stop - start
        changes.extend(np.arange(start, stop - 1e-6, step))
    return np.asarray(changes + [end])


def natural_rendition(score: Score, expression_seed: int = 0, pedal_beats: float | None = None) -> Rendition:
    """A correct, expressive performance of `score`: rubato, dynamic arches, accents, voicing, pedalling.

    Deterministic for (score, expression_seed). Times in seconds from a LEAD_IN_S lead-in.
    """
    if not len(score.notes):
        raise CorpusGenerationError("cannot render a score without notes")
    p = _expression_params(expression_seed)
    rng = np.random.default_rng([expression_seed, 11])
    sn = score.notes
    to_time = beat_time_map(score, expression_seed)
    groups = onset_groups(sn["onset_beat"].astype(float))
    top = top_of_chord(sn["pitch"], groups)
    onset = to_time(sn["onset_beat"]) + rng.normal(0.0, 0.004, len(sn)) - p["melody_lead_s"] * top
    offset = to_time(sn["onset_beat"] + sn["duration_beat"] * p["legato"])
    offset = np.maximum(offset, onset + MIN_NOTE_S)
    x = _phrase_position(sn["onset_beat"], _phrase_starts(score))
    velocity = (sn["velocity"] + p["arch"] * (np.sin(np.pi * x) - 0.5) + p["accent"] * (sn["position_beat"] == 0)
                + p["melody"] * top + 3.0 * (sn["voice"] == 1) + rng.normal(0.0, 2.5, len(sn)))
    notes = np.zeros(len(sn), dtype=PERF_NOTE_DTYPE)
    notes["onset_s"], notes["offset_s"], notes["pitch"] = np.maximum(onset, 0.0), offset, sn["pitch"]
    notes["velocity"] = np.clip(np.round(velocity), 20, 115)
    changes = to_time(pedal_change_beats(score, pedal_beats))
    press = changes[:-1] + PEDAL_PRESS_DELAY_S
    release = np.append(changes[1:-1] + PEDAL_RELEASE_DELAY_S, max(changes[-1], offset.max()) + FINAL_PEDAL_HOLD_S)
    pedal = np.zeros(2 * len(press), dtype=PEDAL_DTYPE)
    pedal["time_s"] = np.stack([press, release], axis=1).ravel()
    pedal["controller"] = C.CC_SUSTAIN
    pedal["value"] = np.tile([127, 0], len(press))
    return _sort_rendition(notes, np.arange(len(sn)), pedal)


def human_rendition(arrays: dict[str, np.ndarray], first: int, last: int, score: Score) -> Rendition:
    """The recorded performance cut to bars [first, last) of the excerpt `score` (from `build_score`).

    Nothing is invented: notes the recording adds stay (score_index -1), unplayed score notes stay
    unplayed; pedal events after the cut are dropped and the pedals released.
    """
    origin = arrays["bar_start_q"][first]
    end_q = arrays["bar_start_q"][last - 1] + arrays["bar_len_q"][last - 1]
    onset_q = arrays["onset_q"]
    in_excerpt = (onset_q >= origin - 1e-9) & (onset_q < end_q - 1e-9)
    excerpt_key = {(round(float(b), 6), int(p)): i
                   for i, (b, p) in enumerate(zip(score.notes["onset_beat"], score.notes["pitch"]))}
    position = {i: excerpt_key.get((round(float(onset_q[i] - origin), 6), int(arrays["pitch"][i])), -1)
                for i in np.flatnonzero(in_excerpt)}
    ps = arrays["perf_score_index"]
    matched_in = np.array([i >= 0 and bool(in_excerpt[i]) for i in ps])
    after = np.array([i >= 0 and onset_q[i] >= end_q - 1e-9 for i in ps])
    cut_s = float(arrays["perf_onset_s"][after].min()) if after.any() else float("inf")
    keep = matched_in | ((ps < 0) & (arrays["perf_onset_s"] < cut_s))
    notes = np.zeros(int(keep.sum()), dtype=PERF_NOTE_DTYPE)
    notes["onset_s"] = arrays["perf_onset_s"][keep]
    notes["offset_s"] = np.minimum(arrays["perf_offset_s"][keep], cut_s)
    notes["pitch"] = arrays["perf_pitch"][keep]
    notes["velocity"] = arrays["perf_velocity"][keep]
    score_index = np.array([position.get(int(i), -1) if i >= 0 else -1 for i in ps[keep]])
    ped_keep = arrays["pedal_time_s"] < cut_s
    pedal = np.zeros(int(ped_keep.sum()), dtype=PEDAL_DTYPE)
    pedal["time_s"] = arrays["pedal_time_s"][ped_keep]
    pedal["controller"] = arrays["pedal_controller"][ped_keep]
    pedal["value"] = arrays["pedal_value"][ped_keep]
    if np.isfinite(cut_s):
        release = np.zeros(3, dtype=PEDAL_DTYPE)
        release["time_s"] = notes["offset_s"].max() + FINAL_PEDAL_HOLD_S
        release["controller"] = (C.CC_SUSTAIN, C.CC_SOSTENUTO, C.CC_SOFT)
        pedal = np.concatenate([pedal, release])
    return _sort_rendition(notes, score_index, pedal)


# --- deviations ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DeviationSpec:
    """Controlled deviations applied to a rendition (all zero / 1.0 scale = the clean take)."""
    wrong_rate: float = 0.0            # fraction of played score notes struck at a wrong pitch
    missed_rate: float = 0.0           # fraction of played score notes left out
    extra_rate: float = 0.0            # added slip notes per played score note
    onset_jitter_ms: float = 0.0       # std of random onset shifts, ms
    tempo_drift: float = 0.0           # tempo ratio at the end minus 1 (+ rushing, - dragging)
    dynamics_flatten: float = 0.0      # 0..1: velocities pulled to their mean
    velocity_noise: float = 0.0        # std of random velocity changes, MIDI units
    voicing_loss: float = 0.0          # 0..1: chord top note pulled down to (at 1: below) the others
    harshness: float = 0.0             # velocity added to every note, MIDI units
    duration_scale: float = 1.0        # sounding-duration factor (< 1 clipped, > 1 over-held)
    duration_jitter: float = 0.0       # std of random log duration factors
    pedal_missing: float = 0.0         # fraction of pedal presses dropped
    pedal_blur: float = 0.0            # fraction of pedal changes not made (held through)
    deadpan: float = 0.0               # 0..1: rubato and dynamic shaping removed
    seed: int = 0

    def __post_init__(self) -> None:
        unit = ("wrong_rate", "missed_rate", "extra_rate", "dynamics_flatten", "voicing_loss",
                "pedal_missing", "pedal_blur", "deadpan")
        for name in unit:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise CorpusGenerationError(f"deviation {name}={value} must be in [0, 1]")
        for name in ("onset_jitter_ms", "velocity_noise", "harshness", "duration_jitter"):
            if getattr(self, name) < 0.0:
                raise CorpusGenerationError(f"deviation {name}={getattr(self, name)} must be >= 0")
        if not -0.9 < self.tempo_drift < 0.9:
            raise CorpusGenerationError(f"deviation tempo_drift={self.tempo_drift} must be in (-0.9, 0.9)")
        if not 0.05 <= self.duration_scale <= 20.0:
            raise CorpusGenerationError(f"deviation duration_scale={self.duration_scale} must be in [0.05, 20]")

    @property
    def is_clean(self) -> bool:
        return self == DeviationSpec(seed=self.seed)

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DeviationSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CorpusGenerationError(f"unknown deviation field {unknown[0]!r}")
        return cls(**data)

    def scaled(self, factor: float) -> "DeviationSpec":
        """The same deviations (same seed) at `factor` times the magnitude."""
        values = self.to_dict()
        for name, value in values.items():
            if name == "seed":
                continue
            values[name] = math.exp(math.log(value) * factor) if name == "duration_scale" else value * factor
        return DeviationSpec(**values)


@dataclasses.dataclass
class Take:
    """One generated performance: notes + pedal, the applied deviations, their measures and labels."""
    notes: np.ndarray                  # PERF_NOTE_DTYPE [n]
    pedal: np.ndarray                  # PEDAL_DTYPE [m]
    spec: DeviationSpec
    measures: dict[str, float]
    labels: dict[str, float]
    counts: dict[str, int]

    def performance(self) -> Performance:
        return Performance(notes=self.notes, pedal=self.pedal, source="midi")


def _rng(spec: DeviationSpec, stream: int) -> np.random.Generator:
    """Independent streams per family, so switching one family on leaves the others' draws alone."""
    return np.random.default_rng([spec.seed, stream])


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(values ** 2))) if len(values) else 0.0


def _drift_map(drift: float, total_s: float) -> Callable[[np.ndarray], np.ndarray]:
    """t -> performed time when the tempo ratio goes linearly from 1 to 1 + drift over total_s."""
    if drift == 0.0 or total_s <= 0.0:
        return lambda t: t
    return lambda t: (total_s / drift) * np.log1p(drift * np.clip(t, 0.0, None) / total_s)


def _deadpan_map(onsets: np.ndarray, beats: np.ndarray, amount: float) -> Callable[[np.ndarray], np.ndarray]:
    """t -> t moved `amount` of the way from the played timing to a steady tempo (least squares fit)."""
    known = ~np.isnan(beats)
    if amount == 0.0 or known.sum() < 2:
        return lambda t: t
    uniq, inverse = np.unique(np.round(beats[known], 6), return_inverse=True)
    if len(uniq) < 2:
        return lambda t: t
    mean_t = np.maximum.accumulate(np.bincount(inverse, onsets[known]) / np.bincount(inverse))
    slope, intercept = np.polyfit(uniq, mean_t, 1)

    def mapping(t: np.ndarray) -> np.ndarray:
        beat = np.interp(t, mean_t, uniq, left=np.nan, right=np.nan)
        beat = np.where(t < mean_t[0], uniq[0] + (t - mean_t[0]) / slope, beat)
        beat = np.where(t > mean_t[-1], uniq[-1] + (t - mean_t[-1]) / slope, beat)
        played = np.interp(beat, uniq, mean_t, left=np.nan, right=np.nan)
        played = np.where(np.isnan(played), t, played)
        return t + amount * (intercept + slope * beat - played)
    return mapping


def _apply_deadpan_velocity(velocity: np.ndarray, groups: np.ndarray, amount: float) -> np.ndarray:
    """Move each onset group's mean velocity `amount` of the way to the overall mean (voicing kept)."""
    group_mean = np.bincount(groups, velocity) / np.bincount(groups)
    return velocity + amount * (velocity.mean() - group_mean[groups])


def _pedal_segments(values: np.ndarray) -> list[tuple[int, int]]:
    """(first event index down, first index up again) of each press; the end is len() if never released."""
    down = values >= C.PEDAL_DOWN_THRESHOLD
    segments, start = [], None
    for i, is_down in enumerate(down):
        if is_down and start is None:
            start = i
        elif not is_down and start is not None:
            segments.append((start, i))
            start = None
    if start is not None:
        segments.append((start, len(values)))
    return segments


def _apply_pedal(pedal: np.ndarray, spec: DeviationSpec) -> tuple[np.ndarray, int, int, int, int]:
    """Drop presses and skip changes of the sustain pedal. Returns pedal, n_presses, n_dropped,
    n_changes, n_blurred."""
    pedal = pedal.copy()
    sustain = np.flatnonzero(pedal["controller"] == C.CC_SUSTAIN)
    values = pedal["value"][sustain].astype(np.int64)
    segments = _pedal_segments(values)
    n_seg = len(segments)
    rng = _rng(spec, 6)
    drop_order, blur_order = rng.permutation(n_seg), rng.permutation(max(n_seg - 1, 0))
    dropped = set(drop_order[: int(round(spec.pedal_missing * n_seg))].tolist())
    for k in dropped:
        start, end = segments[k]
        values[start:end] = 0
    blurred = blur_order[: int(round(spec.pedal_blur * max(n_seg - 1, 0)))]
    for c in blurred:                   # next to a dropped press this becomes a late press / late release
        values[segments[c][1]: segments[c + 1][0]] = 127
    pedal["value"][sustain] = values
    return pedal, n_seg, len(dropped), max(n_seg - 1, 0), len(blurred)


def _note_errors(onset: np.ndarray, offset: np.ndarray, pitch: np.ndarray, velocity: np.ndarray,
                 score_index: np.ndarray, spec: DeviationSpec
                 ) -> tuple[tuple[np.ndarray, ...], tuple[int, int, int]]:
    """Missed, wrong (+-1/2 semitones) and extra (slip) notes among the played score notes.

    Returns (onset, offset, pitch, velocity, score_index) with extra notes appended (score_index -1),
    and (n_wrong, n_missed, n_extra). Each kind draws from its own stream; the chosen notes are a
    prefix of a fixed permutation, so a larger rate keeps the smaller rate's choices.
    """
    scored = np.flatnonzero(score_index >= 0)
    n_ref = len(scored)
    rng_missed, rng_wrong, rng_extra = _rng(spec, 1), _rng(spec, 2), _rng(spec, 3)
    missed = scored[rng_missed.permutation(n_ref)[: int(round(spec.missed_rate * n_ref))]]
    missed_set = set(missed.tolist())
    wrong_pool = [i for i in scored[rng_wrong.permutation(n_ref)] if i not in missed_set]
    wrong = np.asarray(wrong_pool[: int(round(spec.wrong_rate * n_ref))], dtype=np.int64)
    steps = rng_wrong.choice([-2, -1, 1, 2], size=len(pitch))
    pitch = pitch.copy()
    for i in wrong:
        candidate = pitch[i] + steps[i]
        clash = np.any((pitch == candidate) & (np.abs(onset - onset[i]) < 0.05))
        pitch[i] = np.clip(pitch[i] - steps[i] if clash else candidate, C.PIANO_MIN_PITCH, C.PIANO_MAX_PITCH)
    n_extra = int(round(spec.extra_rate * n_ref))
    anchors = scored[rng_extra.permutation(n_ref)] if n_ref else scored
    extra_steps = rng_extra.choice([-2, -1, 1, 2], size=n_ref)
    extra_shift = rng_extra.uniform(-0.03, 0.06, size=n_ref)
    extra_len = rng_extra.uniform(0.06, 0.20, size=n_ref)
    extra_gain = rng_extra.uniform(0.5, 0.85, size=n_ref)
    a = anchors[:n_extra]
    keep = np.ones(len(pitch), dtype=bool)
    keep[missed] = False
    new_onset = np.maximum(onset[a] + extra_shift[:n_extra], 0.0)
    out = (np.concatenate([onset[keep], new_onset]),
           np.concatenate([offset[keep], new_onset + extra_len[:n_extra]]),
           np.concatenate([pitch[keep], np.clip(pitch[a] + extra_steps[:n_extra], C.PIANO_MIN_PITCH,
                                                C.PIANO_MAX_PITCH)]),
           np.concatenate([velocity[keep], np.maximum(velocity[a] * extra_gain[:n_extra], VELOCITY_MIN)]),
           np.concatenate([score_index[keep], np.full(n_extra, -1)]))
    return out, (len(wrong), len(missed), n_extra)


def _limit_same_pitch_overlap(onset: np.ndarray, offset: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """End each note before the next onset of the same key (a MIDI key cannot sound twice)."""
    offset = offset.copy()
    order = np.lexsort((onset, pitch))
    same = pitch[order][1:] == pitch[order][:-1]
    nxt = onset[order][1:]
    cur = order[:-1][same]
    offset[cur] = np.minimum(offset[cur], np.maximum(nxt[same] - 0.005, onset[cur] + 0.01))
    return np.maximum(offset, onset + 0.01)


@dataclasses.dataclass
class _Notes:
    """Working arrays of a take while deviations are applied (seconds, MIDI units)."""
    onset: np.ndarray
    offset: np.ndarray
    pitch: np.ndarray
    velocity: np.ndarray
    score_index: np.ndarray
    pedal_times: np.ndarray

    def warp(self, mapping: Callable[[np.ndarray], np.ndarray]) -> None:
        self.onset, self.offset, self.pedal_times = mapping(self.onset), mapping(self.offset), mapping(self.pedal_times)


def _apply_expression_loss(w: _Notes, beats: np.ndarray, groups: np.ndarray, amount: float) -> None:
    """Deadpan: timing toward a steady tempo, onset-group loudness toward the mean."""
    w.warp(_deadpan_map(w.onset, beats, amount))
    w.velocity = _apply_deadpan_velocity(w.velocity, groups, amount)


def _apply_timing(w: _Notes, spec: DeviationSpec) -> np.ndarray:
    """Tempo drift across the take, then onset jitter (durations kept). Returns the jitter, seconds."""
    total = float(max(w.offset.max(), w.pedal_times.max() if len(w.pedal_times) else 0.0))
    w.warp(_drift_map(spec.tempo_drift, total))
    jitter = _rng(spec, 4).normal(0.0, 1.0, len(w.onset)) * spec.onset_jitter_ms / 1000.0
    w.onset, w.offset = w.onset + jitter, w.offset + jitter
    shift = min(float(w.onset.min()), 0.0)
    w.onset, w.offset, w.pedal_times = w.onset - shift, w.offset - shift, np.maximum(w.pedal_times - shift, 0.0)
    return jitter


def _apply_articulation(w: _Notes, spec: DeviationSpec) -> np.ndarray:
    """Sounding durations x scale x exp(N(0, jitter)). Returns the drawn log factors."""
    log_factor = _rng(spec, 5).normal(0.0, 1.0, len(w.onset)) * spec.duration_jitter
    w.offset = w.onset + np.maximum((w.offset - w.onset) * spec.duration_scale * np.exp(log_factor), MIN_NOTE_S)
    return log_factor


def _voicing_loss(velocity: np.ndarray, pitch: np.ndarray, groups: np.ndarray, amount: float) -> np.ndarray:
    """Pull each chord's top note down by 2 x amount x its lead over the others (1: mirrored below)."""
    velocity = velocity.copy()
    top = top_of_chord(pitch, groups)
    for t in np.flatnonzero(top):
        others = velocity[(groups == groups[t]) & ~top].mean()
        if velocity[t] > others:
            velocity[t] -= 2.0 * amount * (velocity[t] - others)
    return velocity


def _apply_dynamics(w: _Notes, spec: DeviationSpec, groups: np.ndarray) -> np.ndarray:
    """Flatten, add noise, lose voicing, add harshness. Returns the drawn velocity noise."""
    w.velocity = w.velocity + spec.dynamics_flatten * (w.velocity.mean() - w.velocity)
    noise = _rng(spec, 7).normal(0.0, 1.0, len(w.onset)) * spec.velocity_noise
    w.velocity = _voicing_loss(w.velocity + noise, w.pitch, groups, spec.voicing_loss) + spec.harshness
    return noise


def _score_beats(score: Score, score_index: np.ndarray) -> np.ndarray:
    """Written onset (quarters) of each performed note; NaN where the note is not in the score."""
    if not len(score.notes):
        return np.full(len(score_index), np.nan)
    return np.where(score_index >= 0, score.notes["onset_beat"][np.clip(score_index, 0, None)], np.nan)


def apply_deviations(score: Score, spec: DeviationSpec, base: Rendition | None = None,
                     expression_seed: int = 0, pedal_beats: float | None = None) -> Take:
    """Apply `spec` to a correct rendition of `score` (pure; deterministic for the inputs).

    score: the written notes; base: the correct performance to deviate from (default: the natural
    rendition for `expression_seed` and `pedal_beats`). Returns the performed notes (PERF_NOTE_DTYPE,
    seconds), the pedal (PEDAL_DTYPE), the measures of what was applied and the labels (0..100).
    Order: expression loss, tempo drift and jitter, articulation, dynamics and tone, note errors, pedal.
    """
    base = base if base is not None else natural_rendition(score, expression_seed, pedal_beats)
    n = base.notes
    w = _Notes(n["onset_s"].astype(float), n["offset_s"].astype(float), n["pitch"].astype(np.int64),
               n["velocity"].astype(float), base.score_index, base.pedal["time_s"].astype(float))
    beats = _score_beats(score, base.score_index)
    groups = onset_groups(beats)
    _apply_expression_loss(w, beats, groups, spec.deadpan)
    jitter = _apply_timing(w, spec)
    log_factor = _apply_articulation(w, spec)
    noise = _apply_dynamics(w, spec, groups)
    (onset, offset, pitch, velocity, _), (n_wrong, n_missed, n_extra) = _note_errors(
        w.onset, w.offset, w.pitch, w.velocity, w.score_index, spec)
    pedal = base.pedal.copy()
    pedal["time_s"] = w.pedal_times
    pedal, n_presses, n_dropped, n_changes, n_blurred = _apply_pedal(pedal, spec)
    notes = np.zeros(len(onset), dtype=PERF_NOTE_DTYPE)
    notes["onset_s"], notes["pitch"] = onset, pitch
    notes["offset_s"] = _limit_same_pitch_overlap(onset, offset, pitch)
    notes["velocity"] = np.clip(np.round(velocity), VELOCITY_MIN, VELOCITY_MAX)
    n_ref = int((base.score_index >= 0).sum())
    measures = {
        "note_error_rate": (n_wrong + n_missed + n_extra) / max(n_ref, 1),
        "onset_jitter_ms": _rms(jitter) * 1000.0,
        "tempo_drift": abs(spec.tempo_drift),
        "dynamics_flatten": spec.dynamics_flatten,
        "velocity_noise": _rms(noise),
        "voicing_loss": spec.voicing_loss,
        "harshness": spec.harshness,
        "duration_log_scale": abs(math.log(spec.duration_scale)),
        "duration_log_jitter": _rms(log_factor),
        "pedal_missing": n_dropped / n_presses if n_presses else 0.0,
        "pedal_blur": n_blurred / n_changes if n_changes else 0.0,
        "deadpan": spec.deadpan,
    }
    counts = {"n_score_notes_played": n_ref, "n_wrong": n_wrong, "n_missed": n_missed, "n_extra": n_extra,
              "n_pedal_presses": n_presses, "n_pedal_dropped": n_dropped, "n_pedal_changes": n_changes,
              "n_pedal_blurred": n_blurred}
    return Take(notes=notes[np.lexsort((notes["pitch"], notes["onset_s"]))], pedal=pedal, spec=spec,
                measures=measures, labels=labels_from_measures(measures), counts=counts)


def labels_from_measures(measures: dict[str, float]) -> dict[str, float]:
    """seed10 labels (0..100, 2 decimals): 100 * 2^-(sum m / half-life); overall = mean of the others."""
    unknown = sorted(set(measures) - set(MEASURE_NAMES))
    if unknown:
        raise CorpusGenerationError(f"unknown deviation measure {unknown[0]!r}")
    labels = {}
    for dim, half_lives in LABEL_HALF_LIVES.items():
        exponent = sum(measures.get(m, 0.0) / h for m, h in half_lives.items())
        labels[dim] = 100.0 * 2.0 ** (-exponent)
    labels[OVERALL_DIM] = float(np.mean(list(labels.values())))
    return {d: round(labels[d], 2) for d in SEED10.names}


# --- sampling takes --------------------------------------------------------------------------

FAMILY_PROBABILITY = 0.55               # chance that a family of deviations is active in a take
MAX_DEVIATIONS = {                      # magnitudes at severity 1 (each drawn x U(0.5, 1))
    "wrong_rate": 0.08, "missed_rate": 0.08, "extra_rate": 0.05, "onset_jitter_ms": 60.0,
    "tempo_drift": 0.35, "dynamics_flatten": 0.9, "velocity_noise": 20.0, "voicing_loss": 1.0,
    "harshness": 30.0, "duration_log_scale": 0.7, "duration_jitter": 0.5, "pedal_missing": 1.0,
    "pedal_blur": 0.9, "deadpan": 1.0,
}
FAMILIES = {
    "notes": ("wrong_rate", "missed_rate", "extra_rate"),
    "timing": ("onset_jitter_ms", "tempo_drift"),
    "dynamics": ("dynamics_flatten", "velocity_noise"),
    "tone": ("voicing_loss", "harshness"),
    "articulation": ("duration_log_scale", "duration_jitter"),
    "pedal": ("pedal_missing", "pedal_blur"),
    "expression": ("deadpan",),
}


def sample_deviation_spec(rng: np.random.Generator, severity: float, seed: int) -> DeviationSpec:
    """A random set of deviation families (at least one), each field at severity x U(0.5, 1) x max."""
    families = [f for f in FAMILIES if rng.random() < FAMILY_PROBABILITY]
    if not families:
        families = [list(FAMILIES)[int(rng.integers(len(FAMILIES)))]]
    values: dict[str, float] = {}
    for family in families:
        names = list(FAMILIES[family])
        if family == "notes":           # one to three of the note error kinds
            names = [n for n in names if rng.random() < 0.7] or [names[int(rng.integers(len(names)))]]
        for name in names:
            values[name] = severity * rng.uniform(0.5, 1.0) * MAX_DEVIATIONS[name]
    if "tempo_drift" in values and rng.random() < 0.5:
        values["tempo_drift"] = -values["tempo_drift"]
    if "duration_log_scale" in values:
        sign = 1.0 if rng.random() < 0.5 else -1.0
        values["duration_scale"] = math.exp(sign * values.pop("duration_log_scale"))
    return DeviationSpec(**{k: float(v) for k, v in values.items()}, seed=int(seed))


def take_severities(n_takes: int, rng: np.random.Generator) -> list[float]:
    """0 for the clean take, then one severity per stratum of (0.1, 1] so the takes span the range."""
    k = n_takes - 1
    return [0.0] + [0.1 + 0.9 * (i + rng.random()) / k for i in range(k)]


# --- MIDI ------------------------------------------------------------------------------------

def score_midi_bytes(score: Score) -> bytes:
    """Score MIDI: written notes at the score tempo, time signatures at their bars."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(initial_tempo=score.tempo_qpm)
    sec_per_beat = 60.0 / score.tempo_qpm
    last = None
    for bar, start in enumerate(score.bar_starts_beat):
        in_bar = score.notes[score.notes["bar"] == bar]
        if not len(in_bar):
            continue
        ts = (int(in_bar["ts_num"][0]), int(in_bar["ts_den"][0]))
        if ts != last:
            pm.time_signature_changes.append(pretty_midi.TimeSignature(ts[0], ts[1], float(start * sec_per_beat)))
            last = ts
    piano = pretty_midi.Instrument(program=0, name="score")
    for note in score.notes:
        start = float(note["onset_s"])
        piano.notes.append(pretty_midi.Note(int(note["velocity"]), int(note["pitch"]), start,
                                            start + max(float(note["duration_s"]), MIN_NOTE_S)))
    pm.instruments.append(piano)
    return _midi_bytes(pm)


def performance_midi_bytes(notes: np.ndarray, pedal: np.ndarray) -> bytes:
    """Performance MIDI: notes (PERF_NOTE_DTYPE) and pedal controllers (PEDAL_DTYPE), times in seconds."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    piano = pretty_midi.Instrument(program=0, name="performance")
    for note in notes:
        piano.notes.append(pretty_midi.Note(int(note["velocity"]), int(note["pitch"]),
                                            float(note["onset_s"]), float(note["offset_s"])))
    for event in pedal:
        piano.control_changes.append(pretty_midi.ControlChange(int(event["controller"]), int(event["value"]),
                                                               float(event["time_s"])))
    pm.instruments.append(piano)
    return _midi_bytes(pm)


def _midi_bytes(pm) -> bytes:
    buffer = io.BytesIO()
    pm.write(buffer)
    return buffer.getvalue()


# --- the generator ---------------------------------------------------------------------------

@dataclasses.dataclass
class PieceTakes:
    spec: PieceSpec
    score: Score
    takes: list[Take]
    severities: list[float]
    expression_seeds: list[int | None]


def plan_piece(spec: PieceSpec, piece_index: int, n_takes: int, seed: int, max_seconds: float) -> PieceTakes:
    """The score excerpt and every take (notes, pedal, labels) of one piece; no audio."""
    arrays = piece_arrays(spec)
    tempo = spec.tempo_qpm if spec.tempo_qpm is not None else human_tempo_qpm(arrays)
    first, last = excerpt_bars(arrays, tempo, max_seconds)
    score = build_score(arrays, first, last, tempo)
    human = human_rendition(arrays, first, last, score) if spec.source == "match" else None
    rng = np.random.default_rng([seed, piece_index])
    severities = take_severities(n_takes, rng)
    takes, expression_seeds = [], []
    for k, severity in enumerate(severities):
        take_seed = int(np.random.SeedSequence([seed, piece_index, k]).generate_state(1)[0])
        dev = DeviationSpec(seed=take_seed) if k == 0 else sample_deviation_spec(rng, severity, take_seed)
        expression_seed = None if human is not None else take_seed
        base = human if human is not None else natural_rendition(score, expression_seed, spec.pedal_beats)
        takes.append(apply_deviations(score, dev, base=base))
        expression_seeds.append(expression_seed)
    return PieceTakes(spec, score, takes, severities, expression_seeds)


def _flac_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf
    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def _check_arguments(pieces: int, takes: int, max_seconds: float) -> None:
    if not 1 <= pieces <= len(DEMO_PIECES):
        raise CorpusGenerationError(f"--pieces {pieces}: choose 1..{len(DEMO_PIECES)}")
    if takes < 1:
        raise CorpusGenerationError(f"--takes {takes}: need at least 1 take per piece")
    if not 2.0 <= max_seconds <= 600.0:
        raise CorpusGenerationError(f"--max-seconds {max_seconds}: choose 2..600")


def render_all(midis: list[bytes], soundfont: str, sample_rate: int, workers: int | None = None) -> list[np.ndarray]:
    """Render MIDI files on `workers` threads (FluidSynth runs outside the GIL); order is kept."""
    from concurrent.futures import ThreadPoolExecutor

    from pipelines.features import render

    workers = workers or min(RENDER_THREADS, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda midi: render.render_midi(midi, soundfont, sample_rate), midis))


def _take_record(planned: PieceTakes, k: int, duration: float) -> dict[str, Any]:
    take, spec = planned.takes[k], planned.spec
    return {"recording_id": f"{spec.piece_id}/take{k:02d}", "piece_id": spec.piece_id, "take": k,
            "clean": take.spec.is_clean, "severity": round(planned.severities[k], 4),
            "base": "human" if spec.source == "match" else "natural",
            "expression_seed": planned.expression_seeds[k], "duration_s": duration,
            "deviations": take.spec.to_dict(), "measures": {m: round(v, 6) for m, v in take.measures.items()},
            "counts": take.counts, "labels": take.labels}


def _maestro_row(spec: PieceSpec, k: int, duration: float) -> dict[str, Any]:
    stem = f"{spec.piece_id}/{spec.piece_id}_take{k:02d}"
    return {"canonical_composer": spec.composer, "canonical_title": spec.title, "split": "", "year": DEMO_YEAR,
            "midi_filename": f"{stem}.mid", "audio_filename": f"{stem}.{AUDIO_FORMAT}", "duration": duration,
            "recording_id": f"{spec.piece_id}/take{k:02d}", "piece_id": spec.piece_id,
            "performer_id": HUMAN_PERFORMER if spec.source == "match" and k == 0 else f"demo-take{k:02d}",
            "score_filename": f"{spec.piece_id}/{spec.piece_id}_score.mid"}


def make_corpus(out: str, pieces: int = 3, takes: int = 4, soundfont: str | None = None, seed: int = 0,
                max_seconds: float = DEFAULT_MAX_SECONDS, sample_rate: int = C.CQT_SAMPLE_RATE_HZ,
                log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Generate the demo corpus under `out` (local path or s3://) and return its manifest.

    Writes `<piece>/<piece>_score.mid`, `<piece>/<piece>_takeNN.mid` (performance, with CC64) and
    `.flac` (rendered audio), `labels.csv`, a MAESTRO-like `maestro-v3.0.0.csv` that
    `corpora.read_maestro` reads, and `manifest.json`. Deterministic for (seed, pieces, takes,
    max_seconds, soundfont).
    """
    from pipelines.io import corpora
    from pipelines.features import render

    _check_arguments(pieces, takes, max_seconds)
    font = render.check_soundfont(soundfont)
    storage.check_bucket(out)
    log = log or (lambda message: None)
    planned = [plan_piece(spec, i, takes, seed, max_seconds) for i, spec in enumerate(DEMO_PIECES[:pieces])]
    jobs = [(p, k, performance_midi_bytes(t.notes, t.pedal)) for p in planned for k, t in enumerate(p.takes)]
    audios = render_all([midi for _, _, midi in jobs], font, sample_rate)
    rows, label_rows, records = [], [], []
    for p in planned:
        storage.write_bytes(storage.join(out, _maestro_row(p.spec, 0, 0.0)["score_filename"]),
                            score_midi_bytes(p.score))
    for (p, k, midi), audio in zip(jobs, audios):
        duration = round(len(audio) / sample_rate, 3)
        row = _maestro_row(p.spec, k, duration)
        storage.write_bytes(storage.join(out, row["midi_filename"]), midi)
        storage.write_bytes(storage.join(out, row["audio_filename"]), _flac_bytes(audio, sample_rate))
        rows.append(row)
        label_rows.append({"recording_id": row["recording_id"], **p.takes[k].labels})
        records.append(_take_record(p, k, duration))
        log(f"{row['recording_id']}: {duration:.1f} s, overall {p.takes[k].labels[OVERALL_DIM]:.1f}")
    storage.write_text(storage.join(out, corpora.MAESTRO_CSV), _csv_text(rows))
    storage.write_text(storage.join(out, corpora.LABELS_CSV), _csv_text(label_rows))
    manifest = {
        "generator": "pipelines.demo_corpus.generate.make_corpus", "formula_version": LABEL_FORMULA_VERSION,
        "label_formula": "label = 100 * 2^-(sum of measure / half-life); overall = mean of the other nine",
        "label_half_lives": LABEL_HALF_LIVES, "interpretive_labels": "synthetic proxies (see pipelines/demo_corpus/generate.py)",
        "seed": seed, "n_pieces": pieces, "takes_per_piece": takes, "n_recordings": len(records),
        "max_seconds": max_seconds, "sample_rate": sample_rate, "audio_format": AUDIO_FORMAT,
        "soundfont": font, "soundfont_name": Path(font).name, "label_schema": SEED10.name,
        "pieces": [dataclasses.asdict(s) for s in DEMO_PIECES[:pieces]],
        "recordings": records,
    }
    storage.write_text(storage.join(out, "manifest.json"), json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def _csv_text(rows: list[dict[str, Any]]) -> str:
    import csv
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def corpus_fingerprint(manifest: dict[str, Any]) -> str:
    """sha256 of a manifest's labels and deviations: equal for two runs with the same inputs."""
    payload = json.dumps([(r["recording_id"], r["deviations"], r["labels"]) for r in manifest["recordings"]],
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()
