"""Per-bar feedback benchmark: are the bars with inserted errors flagged, and only those?

    .venv/bin/python -m benchmarks.bench_bar_feedback [--quick] [--pieces N] [--no-audio] [--out DIR]
    .venv/bin/python -m benchmarks.bench_bar_feedback --percepiano 150

`--percepiano N`: instead, the flags on N rated human PercePiano segments (sampled with seed 3), read once
with the corpus's score MIDIs and once with its MusicXML scores (slurs and staccato marks): skilled pianists,
so every flag that is not a note error is a likely false alarm; per kind, the share of bars flagged (each
segment's last bar, cut from a longer performance, counted apart), and the human percentiles of each
bar measurement behind the articulation flags.

The takes come from `pipelines.demo_corpus.bar_errors.bar_error_takes`: per demo piece (real scores:
K265 var. 1 and the music21 pieces, 30 s excerpts) a clean natural rendition, one with wrong / missed /
extra notes (4 / 4 / 2 % of the written notes), one with 2-3 bars rushed or dragged by 15-25 % inside
the bar only, and one with both. Each is analysed by `pipelines.scoring.feedback.analyse` twice:

- **MIDI**: the performance MIDI (with its pedal) against the score;
- **audio**: the performance rendered with FluidSynth (`pipelines.features.render.render_midi`, the
  default soundfont) and transcribed with basic-pitch (`transcribe_blocks`, keeping the onset evidence,
  as the scoring job does) against the score.

Per kind, bar-level: a truth bar (one holding an inserted error of that kind; timing = rushing or
dragging) is found when a flag of that kind covers it; recall = found / truth bars, precision = flagged
bars holding a truth error of that kind / flagged bars, over the takes with errors. Clean takes count
their false flags (every flag is one). Flags of kinds never inserted (unsteady, dynamics, articulation,
pedal) on the takes with errors are counted too. `--quick`: the first 3 pieces.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

from benchmarks.common import machine, markdown_table

QUICK_PIECES = 3
NOT_INSERTED = ("unsteady", "dynamics", "articulation", "pedal")


def _names() -> list[str]:
    from model.schema import SEED10
    return list(SEED10.names)


def _midi_analysis(takes) -> list[dict[str, Any]]:
    from pipelines.scoring.feedback import analyse

    names = _names()
    return [analyse(t.score, t.take.performance(), names) for t in takes]


def _audio_analysis(takes, soundfont: str | None = None) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Render, transcribe and analyse every take; returns the analyses and the seconds each stage took."""
    from pipelines import constants as C
    from pipelines.demo_corpus.generate import performance_midi_bytes, render_all
    from pipelines.features import render
    from pipelines.features.transcribe import Transcriber, transcribe_blocks
    from pipelines.scoring.feedback import analyse

    sr = C.CQT_SAMPLE_RATE_HZ
    seconds = {}
    started = time.perf_counter()
    audios = render_all([performance_midi_bytes(t.take.notes, t.take.pedal) for t in takes],
                        render.check_soundfont(soundfont), sr)
    seconds["render_s"] = time.perf_counter() - started
    seconds["audio_s"] = sum(len(a) for a in audios) / sr
    transcriber = Transcriber()
    started = time.perf_counter()
    perfs = [transcribe_blocks(transcriber, [audio], sr, keep_evidence=True) for audio in audios]
    seconds["transcribe_s"] = time.perf_counter() - started
    names = _names()
    started = time.perf_counter()
    out = [analyse(t.score, perf, names, evidence=perf.onset_evidence) for t, perf in zip(takes, perfs)]
    seconds["analyse_s"] = time.perf_counter() - started
    return out, seconds


def evaluate(takes, analyses: list[dict[str, Any]]) -> dict[str, Any]:
    """Bar-level counts per kind over the takes with errors, and the flags on the clean takes."""
    from pipelines.demo_corpus.bar_errors import KIND_GROUPS, bar_hits, flagged_bars
    from pipelines.demo_corpus.deviations import bar_truth

    totals = {g: {"truth": 0, "flagged": 0, "hits": 0} for g in KIND_GROUPS}
    clean_flags: dict[str, int] = {}
    other_flags: dict[str, int] = {}
    n_clean = n_error = clean_bars = 0
    misses: list[str] = []
    for t, analysis in zip(takes, analyses):
        if t.take.spec.is_clean:
            n_clean += 1
            clean_bars += t.score.n_bars
            for f in analysis["flags"]:
                clean_flags[f["kind"]] = clean_flags.get(f["kind"], 0) + 1
            continue
        n_error += 1
        truth, flagged = bar_truth(t.take), flagged_bars(analysis)
        for group, counts in bar_hits(truth, flagged).items():
            for key, value in counts.items():
                totals[group][key] += value
        for f in analysis["flags"]:
            if f["kind"] in NOT_INSERTED:
                other_flags[f["kind"]] = other_flags.get(f["kind"], 0) + 1
        for b, kinds in truth.items():
            lost = sorted(k for k in kinds if k not in flagged.get(b, set())
                          and not (k in KIND_GROUPS["timing"] and flagged.get(b, set()) & set(KIND_GROUPS["timing"])))
            if lost:
                misses.append(f"{t.name} bar {b + 1}: {', '.join(lost)}")
    return {"kinds": totals, "n_error_takes": n_error, "n_clean_takes": n_clean, "clean_bars": clean_bars,
            "clean_flags": clean_flags, "other_flags_on_error_takes": other_flags, "missed_truth": misses}


def _ratio(a: int, b: int) -> float | str:
    return a / b if b else "-"


def _mode_markdown(title: str, result: dict[str, Any]) -> str:
    rows = [[g, c["truth"], c["flagged"], c["hits"], _ratio(c["hits"], c["truth"]), _ratio(c["hits"], c["flagged"])]
            for g, c in result["kinds"].items()]
    clean = result["clean_flags"]
    clean_words = ", ".join(f"{k} {v}" for k, v in sorted(clean.items())) or "none"
    other = ", ".join(f"{k} {v}" for k, v in sorted(result["other_flags_on_error_takes"].items())) or "none"
    return (f"#### {title}\n\n"
            + markdown_table(["kind", "truth bars", "flagged bars", "hits", "recall", "precision"], rows)
            + f"\n\nClean takes: {sum(clean.values())} false flags on {result['n_clean_takes']} takes "
              f"({result['clean_bars']} bars): {clean_words}. Flags of kinds never inserted on the "
              f"{result['n_error_takes']} takes with errors: {other}.\n")


def main(quick: bool = False, n_pieces: int | None = None, audio: bool = True, seed: int = 0,
         out: str | None = None) -> dict[str, Any]:
    """Run the benchmark; returns {"markdown": ..., "figures": ...}."""
    from pipelines.demo_corpus.bar_errors import DEFAULT_MAX_SECONDS, bar_error_takes, write_bar_error_takes
    from pipelines.demo_corpus.pieces import DEMO_PIECES

    started = time.time()
    n_pieces = n_pieces or (QUICK_PIECES if quick else len(DEMO_PIECES))
    takes = bar_error_takes(seed, n_pieces)
    if out:
        write_bar_error_takes(out, takes, audio=audio)
    figures: dict[str, Any] = {"n_pieces": n_pieces, "n_takes": len(takes), "seed": seed}
    t0 = time.perf_counter()
    figures["midi"] = evaluate(takes, _midi_analysis(takes))
    figures["midi"]["analyse_s"] = time.perf_counter() - t0
    parts = [_mode_markdown("Performance MIDI + score", figures["midi"])]
    if audio:
        analyses, seconds = _audio_analysis(takes)
        figures["audio"] = {**evaluate(takes, analyses), **seconds}
        parts.append(_mode_markdown("Rendered audio (FluidSynth) -> basic-pitch transcription + score",
                                    figures["audio"]))
        parts.append(f"Audio: {seconds['audio_s']:.0f} s rendered in {seconds['render_s']:.0f} s, transcribed in "
                     f"{seconds['transcribe_s']:.0f} s, analysed in {seconds['analyse_s']:.0f} s.\n")
    pieces = ", ".join(p.piece_id for p in DEMO_PIECES[:n_pieces])
    markdown = (f"### Per-bar feedback against inserted errors{', quick' if quick else ''}\n\n"
                f"Machine: {machine()}. {len(takes)} takes ({n_pieces} pieces x clean / notes / timing / both, "
                f"{DEFAULT_MAX_SECONDS:g} s excerpts, seed {seed}): {pieces}. Bar-level recall and precision per "
                f"kind over the takes with errors (timing = rushing or dragging). Wall time "
                f"{time.time() - started:.0f} s.\n\n" + "\n".join(parts))
    return {"markdown": markdown, "figures": figures}


def percepiano_flags(n: int = 150, seed: int = 3) -> dict[str, Any]:
    """Flag rates on rated human PercePiano segments, with score MIDIs and with MusicXML scores."""
    import os
    from collections import Counter
    from pathlib import Path

    import numpy as np

    from pipelines.io.corpora import read_percepiano
    from pipelines.io.notation import load_score
    from pipelines.io.performance import load_performance
    from pipelines.scoring.feedback import analyse

    root = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "percepiano")
    if not os.path.isdir(root):
        return {"markdown": f"{root}: not found\n", "rows": []}
    rows, measures = [], []
    for xml in (False, True):
        recs = [r for r in read_percepiano(root, use_xml_scores=xml)
                if r.labels and r.score_uri and not r.extra["player"].startswith("Score")]
        recs = [recs[i] for i in np.random.default_rng(seed).permutation(len(recs))[:n]]
        inner, last = Counter(), Counter()
        n_inner = n_last = 0
        values: dict[str, list[float]] = {"duration_ratio": [], "legato_ratio": [], "staccato_ratio": []}
        for rec in recs:
            out = analyse(load_score(rec.score_uri), load_performance(rec.midi_uri), _names())
            n_bars = len(out["bars"])
            n_inner, n_last = n_inner + n_bars - 1, n_last + 1
            for b in out["bars"][:-1]:
                for k in values:
                    if np.isfinite(b[k]):
                        values[k].append(b[k])
            for f in out["flags"]:
                for i in range(f["bar"], f["last_bar"] + 1):
                    is_last = i == out["bars"][-1]["bar"]
                    (last if is_last else inner)[f["kind"]] += 1
        scores = "MusicXML" if xml else "score MIDI"
        for kind in sorted(set(inner) | set(last)):
            rows.append([scores, kind, f"{inner[kind] / max(n_inner, 1):.3f}", f"{last[kind] / max(n_last, 1):.3f}"])
        for k, v in values.items():
            if v:
                q = np.percentile(v, [2, 5, 50, 95, 98])
                measures.append([scores, k, len(v)] + [f"{x:.3f}" for x in q])
    md = (f"### Flags on rated human performances ({n} PercePiano segments, seed {seed})\n\n"
          + markdown_table(["scores", "kind", "share of bars flagged (inner bars)", "share of last bars flagged"], rows)
          + "\n\nBar measurements behind the articulation flags (inner bars):\n\n"
          + markdown_table(["scores", "measure", "bars", "2 %", "5 %", "median", "95 %", "98 %"], measures) + "\n")
    return {"markdown": md, "rows": rows, "measures": measures}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"the first {QUICK_PIECES} pieces only")
    parser.add_argument("--pieces", type=int, default=None, help="number of demo pieces (default all)")
    parser.add_argument("--no-audio", action="store_true", help="performance MIDI only (no render / transcription)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the takes, scores and truth JSON here")
    parser.add_argument("--show-misses", action="store_true", help="list the truth errors not flagged")
    parser.add_argument("--percepiano", type=int, default=0,
                        help="instead: flag rates on this many rated human PercePiano segments")
    args = parser.parse_args()
    if args.percepiano:
        print(percepiano_flags(args.percepiano)["markdown"])
        raise SystemExit(0)
    result = main(args.quick, args.pieces, not args.no_audio, args.seed, args.out)
    print(result["markdown"])
    if args.show_misses:
        for mode in ("midi", "audio"):
            for line in result["figures"].get(mode, {}).get("missed_truth", []):
                print(f"{mode}: {line}")
