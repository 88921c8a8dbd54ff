"""Generate the demo corpus: real piano scores, performances with known deviations, rendered audio, labels.

The package `pipelines.demo_corpus`, one job per module:

- `pieces`: the real pieces (`DEMO_PIECES`), their loaders and cache, excerpts and written scores;
- `renditions`: correct performances of a score (the clean takes and the base of every other take);
- `deviations`: the seeded deviations applied to a rendition, and the sampling of each take's;
- `labels`: the label formula over the measured deviations (`LABEL_FORMULA_VERSION`);
- `generate` (this module): plans every take of every piece (`plan_piece`), writes score and
  performance MIDI, renders audio with FluidSynth (`pipelines.features.render`) as FLAC, and writes
  `labels.csv`, a MAESTRO-layout `maestro-v3.0.0.csv` and `manifest.json` (`make_corpus`).

The corpus is deterministic for (seed, pieces, takes, max_seconds, soundfont); `corpus_fingerprint`
hashes a manifest's deviations and labels.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from model.schema import SEED10
from pipelines import constants as C
from pipelines.demo_corpus.deviations import (
    DeviationSpec,
    Take,
    apply_deviations,
    sample_deviation_spec,
    take_severities,
)
from pipelines.demo_corpus.labels import LABEL_FORMULA_VERSION, LABEL_HALF_LIVES, OVERALL_DIM
from pipelines.demo_corpus.pieces import (
    DEMO_PIECES,
    CorpusGenerationError,
    PieceSpec,
    build_score,
    excerpt_bars,
    human_tempo_qpm,
    piece_arrays,
)
from pipelines.demo_corpus.renditions import MIN_NOTE_S, human_rendition, natural_rendition, written_pedal
from pipelines.io import storage
from pipelines.io.notes import Score

DEFAULT_MAX_SECONDS = 40.0
HUMAN_PERFORMER = "k265-human"          # the pianist of parangonar's K265 recording
DEMO_YEAR = 2025                        # MAESTRO's `year` column for generated recordings
AUDIO_FORMAT = "flac"
WRITTEN_RELEASE_LEAD_BEATS = 1 / 64     # a written '*' sounds just before the next 'Ped.' of a change
RENDER_THREADS = 2                      # FluidSynth renders in parallel (it releases the GIL)


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
    for down, up in (score.pedal_beats if score.pedal_beats is not None else []):
        piano.control_changes.append(pretty_midi.ControlChange(C.CC_SUSTAIN, 127, float(down * sec_per_beat)))
        release = max(float(up) - WRITTEN_RELEASE_LEAD_BEATS, float(down) + WRITTEN_RELEASE_LEAD_BEATS)
        piano.control_changes.append(pretty_midi.ControlChange(C.CC_SUSTAIN, 0, release * sec_per_beat))
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
    if human is None:                   # the edition marks the pedal that the natural renditions follow
        score.pedal_beats = written_pedal(score, spec.pedal_beats)
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
    from pipelines.features import render
    from pipelines.io import corpora

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
        "label_half_lives": LABEL_HALF_LIVES,
        "interpretive_labels": "synthetic proxies (see pipelines/demo_corpus/labels.py)",
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
