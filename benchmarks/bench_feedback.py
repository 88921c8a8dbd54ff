"""Per-bar feedback against takes whose errors are known bar by bar (pipelines/scoring/feedback.py).

    .venv/bin/python -m benchmarks.bench_feedback [--quick]

For every demo piece (music21 scores and the K265 human take's score) and several expression seeds: a clean
rendition, and the same rendition with errors inserted in known bars by `pipelines.demo_corpus.library.
inserted_errors` (two missed notes in one bar, a wrong note in another, one bar dragged 35 %, the bars drawn
at random per take, apart from each other and from the ends). Each take is analysed twice: from its
performance MIDI (digital-piano mode) and from its audio (FluidSynth render -> basic-pitch transcription with
onset evidence). A truth bar is found when a flag of its kind covers it; precision is over the flagged bars of
that kind. Clean takes count every flag they get.
"""
from __future__ import annotations

import sys
import time
from collections import Counter

import numpy as np

from benchmarks.common import machine, markdown_table

NAMES = ["note_accuracy", "rhythmic_precision", "dynamics_control", "articulation", "pedaling", "tone"]
KINDS = {"missed": ("missed",), "wrong": ("wrong",), "timing": ("rushing", "dragging")}


def takes(seeds: list[int]):
    from pipelines.demo_corpus.generate import plan_piece
    from pipelines.demo_corpus.library import inserted_errors
    from pipelines.demo_corpus.pieces import DEMO_PIECES
    from pipelines.demo_corpus.renditions import natural_rendition
    from pipelines.io.notes import Performance

    for i, spec in enumerate(DEMO_PIECES):
        score = plan_piece(spec, i, 1, 0, 30.0).score
        if score.n_bars < 6:
            continue
        for seed in seeds:
            rng = np.random.default_rng([seed, i])
            inner = rng.permutation(np.arange(1, score.n_bars - 1))
            picked = []
            for b in inner:                        # three bars at least two apart
                if all(abs(int(b) - p) >= 2 for p in picked):
                    picked.append(int(b))
                if len(picked) == 3:
                    break
            base = natural_rendition(score, seed, spec.pedal_beats)
            perf, truth = inserted_errors(score, base, missed_bars=picked[:1], wrong_bars=picked[1:2],
                                          dragged_bar=picked[2] if len(picked) > 2 else None)
            yield f"{i}/{seed}", score, Performance(base.notes, base.pedal), {}
            yield f"{i}/{seed}", score, perf, truth


def main(argv: list[str] | None = None) -> dict:
    from pipelines.demo_corpus.generate import performance_midi_bytes
    from pipelines.features.render import render_midi
    from pipelines.features.transcribe import Transcriber, transcribe_blocks
    from pipelines.scoring.feedback import analyse

    quick = "--quick" in (argv if argv is not None else sys.argv[1:])
    seeds = [1] if quick else [1, 2, 3]
    transcriber = Transcriber()
    counts = {m: Counter() for m in ("midi", "audio")}
    clean_flags = {m: Counter() for m in ("midi", "audio")}
    n_clean = n_err = 0
    started = time.time()
    for name, score, perf, truth in takes(seeds):
        audio = render_midi(performance_midi_bytes(perf.notes, perf.pedal), sample_rate=44_100)
        heard = transcribe_blocks(transcriber, [audio], 44_100, keep_evidence=True)
        n_clean += not truth
        n_err += bool(truth)
        for mode, p in (("midi", perf), ("audio", heard)):
            flags = analyse(score, p, NAMES, evidence=p.onset_evidence)["flags"]
            if not truth:
                clean_flags[mode].update(f["kind"] for f in flags)
                continue
            for group, kinds in KINDS.items():
                flagged = {b for f in flags if f["kind"] in kinds for b in range(f["bar"], f["last_bar"] + 1)}
                real = {int(b) for b, k in truth.items() if set(k) & set(kinds)}
                c = counts[mode]
                c[group, "tp"] += len(flagged & real)
                c[group, "fp"] += len(flagged - real)
                c[group, "fn"] += len(real - flagged)
    rows, figures = [], {}
    for mode in ("midi", "audio"):
        for group in KINDS:
            c = counts[mode]
            tp, fp, fn = c[group, "tp"], c[group, "fp"], c[group, "fn"]
            p, r = tp / max(1, tp + fp), tp / max(1, tp + fn)
            figures[f"{mode}_{group}"] = {"precision": p, "recall": r, "truth_bars": tp + fn}
            rows.append([mode, group, tp + fn, tp + fp, f"{p:.2f}", f"{r:.2f}"])
    clean = [[mode, n_clean, sum(clean_flags[mode].values()),
              ", ".join(f"{k} {v}" for k, v in sorted(clean_flags[mode].items())) or "-"] for mode in ("midi", "audio")]
    md = (f"{n_err} takes with inserted errors and {n_clean} clean takes ({len(seeds)} expression seed(s) x the demo "
          f"pieces of 6+ bars); goal: precision and recall >= 0.9 for missed and wrong notes, >= 0.8 for timing. "
          f"{machine()}; {time.time() - started:.0f} s.\n\n"
          + markdown_table(["mode", "kind", "truth bars", "flagged bars", "precision", "recall"], rows)
          + "\n\nFlags on clean takes (each is a false flag):\n\n"
          + markdown_table(["mode", "clean takes", "flags", "by kind"], clean) + "\n")
    return {"markdown": md, "figures": figures}


if __name__ == "__main__":
    print(main()["markdown"])
