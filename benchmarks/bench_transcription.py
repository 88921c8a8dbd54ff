"""Transcription benchmark: note F1 of the basic-pitch transcriber on rendered real piano music.

Run `python -m benchmarks.bench_transcription` (or call `main()`): it renders ~30 s excerpts of
- real scores from music21's corpus (Joplin, Mozart K545, Bach BWV 846, Clara Schumann op. 1 no. 1),
  played deadpan at their written tempo (velocity 64, no pedal), and
- real human performances from the PercePiano copy (velocities and sustain/soft pedal), from pieces
  not used to tune the thresholds,
with two different pianos (FluidSynth with FluidR3_GM and with MuseScore_General), transcribes them
with `pipelines.features.transcribe.Transcriber`, and prints and returns a Markdown table of mir_eval note
scores per soundfont: onset F1 (50 ms), onset+offset F1 against the sustain-extended reference (how
the notes sound), and speed in times real time (steady state, after one warm-up call; the first call
of a process also pays about 1 s of imports).

`tune(...)` is the threshold sweep behind the Transcriber's defaults. It uses only the tuning set
(Schubert D960 mvt. 2 performances, FluidR3), never the excerpts the table reports.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine, markdown_table
from pipelines.features.transcribe import Transcriber, onset_f1
from pipelines.io.notation import load_score
from pipelines.io.notes import Performance, empty_pedal, make_perf_notes
from pipelines.io.performance import load_performance, with_sustain

SOUNDFONTS = {
    "FluidR3_GM": Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    "MuseScore_General": Path("/usr/share/sounds/sf3/MuseScore_General.sf3"),
}
RENDER_RATE_HZ = 44_100
EXCERPT_S = 30.0
CORPUS_PIECES = ("joplin/maple_leaf_rag", "mozart/k545", "bach/bwv846", "schumann_clara/polonaise_op1n1")
PERCEPIANO_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "percepiano"
# evaluation: other compositions than the tuning set; tuning: Schubert D960 mvt. 2
PERCEPIANO_EVAL_PATTERNS = ("Beethoven_WoO80_var*_8bars_*_*.mid", "Schubert_D960_mv3_8bars_*_*.mid")
PERCEPIANO_TUNE_PATTERN = "Schubert_D960_mv2_8bars_*_*.mid"


@dataclasses.dataclass
class Excerpt:
    name: str
    kind: str                 # "score (deadpan)" or "human performance"
    reference: Performance    # notes as played (pedal events kept)


def corpus_excerpt(piece: str, seconds: float = EXCERPT_S) -> Excerpt:
    """The first `seconds` of a music21 corpus score, played at its written tempo with velocity 64."""
    from music21 import corpus

    path = corpus.getWork(piece)
    path = path[0] if isinstance(path, list) else path
    notes = load_score(str(path)).notes
    notes = notes[(notes["onset_s"] < seconds) & (notes["duration_s"] > 0)]
    perf = make_perf_notes(notes["onset_s"], np.minimum(notes["onset_s"] + notes["duration_s"], seconds + 2.0),
                           notes["pitch"], np.full(len(notes), 64))
    return Excerpt(piece, "score (deadpan)", Performance(perf, empty_pedal()))


def percepiano_excerpts(pattern: str, count: int, seed: int = 0) -> list[Excerpt]:
    """`count` PercePiano performance segments matching `pattern` (human players only), chosen at random."""
    files = sorted(p for p in (PERCEPIANO_DIR / "performances").glob(pattern) if "_Score" not in p.name)
    chosen = np.random.default_rng(seed).choice(len(files), size=min(count, len(files)), replace=False)
    return [Excerpt(files[i].stem, "human performance", load_performance(str(files[i]))) for i in sorted(chosen)]


def render(perf: Performance, soundfont: Path, seconds: float | None = None) -> np.ndarray:
    """Mono float audio at RENDER_RATE_HZ of a performance (notes + pedal) with FluidSynth."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    piano.notes = [pretty_midi.Note(int(n["velocity"]), int(n["pitch"]), float(n["onset_s"]), float(n["offset_s"]))
                   for n in perf.notes]
    piano.control_changes = [pretty_midi.ControlChange(int(e["controller"]), int(e["value"]), float(e["time_s"]))
                             for e in perf.pedal]
    pm.instruments.append(piano)
    audio = pm.fluidsynth(fs=RENDER_RATE_HZ, synthesizer=str(soundfont))
    return audio if seconds is None else audio[: int((seconds + 2.0) * RENDER_RATE_HZ)]


def evaluate(transcriber: Transcriber, excerpt: Excerpt, audio: np.ndarray) -> dict[str, float]:
    """Transcribe one rendering; scores against the notes (onsets) and the sustained notes (offsets)."""
    started = time.perf_counter()
    estimate = transcriber(audio, RENDER_RATE_HZ)
    seconds = time.perf_counter() - started
    onsets = onset_f1(excerpt.reference, estimate)
    sounding = onset_f1(with_sustain(excerpt.reference), estimate)
    return {"f1": onsets["f1"], "precision": onsets["precision"], "recall": onsets["recall"],
            "offset_f1": sounding["offset_f1"], "x_realtime": len(audio) / RENDER_RATE_HZ / seconds}


def tune(grid: dict[str, tuple] | None = None, count: int = 6) -> list[tuple[dict, float]]:
    """Mean onset F1 of each threshold setting on the tuning set (FluidR3 renderings), best first."""
    grid = grid or {"onset_threshold": (0.3, 0.4, 0.5, 0.6), "frame_threshold": (0.2, 0.3, 0.4),
                    "min_note_ms": (35.0, 58.0, 127.7), "melodia_trick": (True, False)}
    excerpts = percepiano_excerpts(PERCEPIANO_TUNE_PATTERN, count, seed=1)
    audio = [render(e.reference, SOUNDFONTS["FluidR3_GM"]) for e in excerpts]
    results = []
    for values in itertools.product(*grid.values()):
        setting = dict(zip(grid, values))
        transcriber = Transcriber(**setting)
        score = statistics.mean(onset_f1(e.reference, transcriber(a, RENDER_RATE_HZ))["f1"]
                                for e, a in zip(excerpts, audio))
        results.append((setting, score))
    return sorted(results, key=lambda r: -r[1])


def demo_corpus_table(transcriber: Transcriber, pieces: int = 3, takes: int = 3, seed: int = 0) -> str:
    """Onset F1 on the demo corpus (takes with deviations, K265 human take) rendered with each soundfont,
    against each take's performance MIDI."""
    import tempfile

    from pipelines.demo_corpus.generate import make_corpus
    from pipelines.io.audio import load_audio
    from pipelines.io.corpora import read_corpus
    from pipelines.io.performance import load_performance

    rows = []
    for font_name, font in SOUNDFONTS.items():
        if not font.exists():
            continue
        out = os.path.join(tempfile.mkdtemp(prefix="bench-tr-"), "corpus")
        make_corpus(out, pieces=pieces, takes=takes, seed=seed, soundfont=str(font))
        scores = []
        for rec in read_corpus(out):
            y, sr = load_audio(rec.audio_uri)
            scores.append(onset_f1(load_performance(rec.midi_uri), transcriber(y, sr)))
        rows.append([font_name, len(scores), statistics.mean(x["precision"] for x in scores),
                     statistics.mean(x["recall"] for x in scores), statistics.mean(x["f1"] for x in scores),
                     min(x["f1"] for x in scores)])
    return (f"Demo corpus ({pieces} pieces x {takes} takes, seed {seed}, rendered with each soundfont), mean over "
            "recordings, against each take's performance MIDI:\n\n" +
            markdown_table(["soundfont", "recordings", "onset P", "onset R", "onset F1", "worst onset F1"], rows))


def main(n_percepiano: int = 4, settings: dict | None = None) -> str:
    """Run the benchmark; print and return its Markdown table. `settings`: Transcriber arguments
    (default: its tuned defaults; basic-pitch's own are onset_threshold=0.5, frame_threshold=0.3,
    min_note_ms=127.7, melodia_trick=True)."""
    excerpts = [corpus_excerpt(piece) for piece in CORPUS_PIECES]
    if PERCEPIANO_DIR.exists():
        for i, pattern in enumerate(PERCEPIANO_EVAL_PATTERNS):
            excerpts += percepiano_excerpts(pattern, n_percepiano // len(PERCEPIANO_EVAL_PATTERNS), seed=i)
    transcriber = Transcriber(**(settings or {}))
    rows = []
    per_font: dict[str, list[dict[str, float]]] = {}
    for font_name, font in SOUNDFONTS.items():
        if not font.exists():
            continue
        for excerpt in excerpts:
            audio = render(excerpt.reference, font, EXCERPT_S)
            if not per_font.get(font_name):
                transcriber(audio, RENDER_RATE_HZ)                    # warm-up: imports, ONNX session
            scores = evaluate(transcriber, excerpt, audio)
            per_font.setdefault(font_name, []).append(scores)
            rows.append([font_name, excerpt.name, excerpt.kind, len(excerpt.reference.notes), scores["precision"],
                         scores["recall"], scores["f1"], scores["offset_f1"], f"{scores['x_realtime']:.0f}x"])
    for font_name, scores in per_font.items():
        rows.append([font_name, "**mean**", f"{len(scores)} excerpts", "", statistics.mean(s["precision"] for s in scores),
                     statistics.mean(s["recall"] for s in scores), statistics.mean(s["f1"] for s in scores),
                     statistics.mean(s["offset_f1"] for s in scores),
                     f"{statistics.mean(s['x_realtime'] for s in scores):.0f}x"])
    header = ["soundfont", "excerpt", "kind", "notes", "onset P", "onset R", "onset F1", "onset+offset F1",
              "speed (x real time)"]
    table = (f"Transcription (basic-pitch ONNX, {transcriber._backend.onset_threshold}/"
             f"{transcriber._backend.frame_threshold} thresholds) on ~{EXCERPT_S:.0f} s excerpts; "
             f"{machine()}\n\n" + markdown_table(header, rows))
    table += "\n\n" + demo_corpus_table(transcriber)
    print(table)
    return table


if __name__ == "__main__":
    main()
