"""Pseudo-labels against the demo corpus's known ground truth: Pearson / Spearman per technical
dimension, over recordings (labels computed on each recording's whole aligned performance); and, as
outside evidence, against the expert ratings of real human PercePiano performances (within passage).

Run: `python -m benchmarks.bench_pseudo_labels [--percepiano N] [--percepiano-scores musicxml] [--pieces 0]`
(N rated human segments, sampled with a fixed seed; 0 skips the table; default 400, about half a minute;
`--percepiano-scores musicxml` reads PercePiano's MusicXML scores, with their slurs and staccato marks,
instead of its score MIDIs; `--pieces 0` skips the demo corpus)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
import tempfile

import numpy as np

from benchmarks.common import markdown_table


PERCEPIANO_DIR = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "percepiano")   # as bench_percepiano
# (pseudo-label, PercePiano rating, sign that makes "better" agree: -1 where the rating's high end is worse)
PERCEPIANO_PAIRS = (
    ("rhythmic_precision", "timing", -1),                 # stable <-> unstable
    ("pedaling", "pedal_clarity", -1),                    # clean <-> blurred
    ("pedaling", "pedal_amount", +1),                     # sparse/dry <-> saturated/wet (descriptive)
    ("articulation", "articulation_length", +1),          # short <-> long (descriptive)
    ("articulation", "articulation_touch", +1),           # soft/cushioned <-> hard/solid (descriptive)
    ("dynamics_control", "dynamic_range", +1),            # little <-> large range
    ("tone", "dynamic_sophistication", -1),               # sophisticated/mellow <-> raw/crude
)
# (statistic of `technical_statistics`, rating, sign): the fault measures behind the two-sided pedaling label
PERCEPIANO_STATISTICS = (
    ("pedal_blur", "pedal_clarity", +1),
    ("pedal_dry", "pedal_clarity", -1),
    ("pedal_dry", "pedal_amount", -1),
    ("timing_rms_s", "timing", +1),
    ("tempo_drift", "timing", +1),
    ("pedal_written_dry", "pedal_clarity", -1),       # only segments whose score marks the pedal
    ("pedal_written_dry", "pedal_amount", -1),
    ("pedal_written_held", "pedal_clarity", +1),
)
# (statistic, rating, +1): descriptive touch statistics (log key-down / written length; + = longer) against
# "articulation short <-> long"; the written ones need MusicXML scores (slurs, staccato marks)
PERCEPIANO_DESCRIPTIVE = (
    ("duration_bias", "articulation_length", +1),
    ("legato_ratio", "articulation_length", +1),
    ("staccato_ratio", "articulation_length", +1),
)


def percepiano_table(n: int, root: str = PERCEPIANO_DIR, seed: int = 0, scores: str = "midi") -> dict:
    """Within-passage Spearman of each pseudo-label against its matching PercePiano rating over n sampled
    rated human segments (each passage's mean removed from both; passages with >= 3 sampled players).
    scores: "midi" (the corpus's score MIDIs) or "musicxml" (its MusicXML scores, with articulation marks)."""
    from collections import defaultdict

    from scipy.stats import spearmanr

    from pipelines.features import align as A
    from pipelines.features import pseudo_labels as L
    from pipelines.io.corpora import read_percepiano
    from pipelines.io.notation import load_score
    from pipelines.io.performance import load_performance

    recs = [r for r in read_percepiano(root, use_xml_scores=scores == "musicxml")
            if r.labels and r.score_uri and not r.extra["player"].startswith("Score")]
    recs = [recs[i] for i in np.random.default_rng(seed).permutation(len(recs))[:n]]
    by_passage = defaultdict(list)
    for rec in recs:
        score, perf = load_score(rec.score_uri), load_performance(rec.midi_uri)
        stats = L.technical_statistics(score, perf, A.align(score, perf))
        stats = {k: abs(v) if k == "tempo_drift" else v for k, v in stats.items()}
        labels = {d: L.score_from_penalty(penalty(stats)) for d, penalty in L.PENALTIES.items()}
        by_passage[rec.piece_id].append(({**stats, **labels}, rec.labels))
    rows = []
    for label, rating, sign in PERCEPIANO_PAIRS + PERCEPIANO_STATISTICS + PERCEPIANO_DESCRIPTIVE:
        x, y = [], []
        for pairs in by_passage.values():
            pts = np.array([(p[label], r[rating]) for p, r in pairs if not np.isnan(p[label])])
            if len(pts) >= 3:
                x.extend(pts[:, 0] - pts[:, 0].mean())
                y.extend(pts[:, 1] - pts[:, 1].mean())
        rho = spearmanr(x, y)[0] if len(x) > 2 else float("nan")
        kind = ("label" if (label, rating, sign) in PERCEPIANO_PAIRS else "statistic (a fault: + = worse)"
                if (label, rating, sign) not in PERCEPIANO_DESCRIPTIVE else "statistic (descriptive: + = longer)")
        rows.append([label, kind, rating, rho, sign * rho, len(x)])
    labels = [p for v in by_passage.values() for p, _ in v]
    medians = {d: float(np.nanmedian([p[d] for p in labels])) for d in L.TECHNICAL_DIMENSIONS}
    table = markdown_table(["pseudo-label / statistic", "kind", "PercePiano rating", "Spearman rho (within passage)",
                            "agreement (sign-oriented)", "segments"], rows)
    md = (f"### Pseudo-labels vs PercePiano expert ratings ({len(recs)} rated human segments, seed {seed}, "
          f"{'MusicXML' if scores == 'musicxml' else 'score MIDI'} scores)\n\n"
          f"{table}\n\nMedian label of these human segments: "
          + ", ".join(f"{d} {v:.0f}" for d, v in medians.items()) + ".\n")
    return {"markdown": md, "rows": rows, "medians": medians}


def articulation_ceiling(corpora: int = 300, pieces: int = 6, takes: int = 6, seed: int = 0) -> dict:
    """The best Pearson r any articulation label with this revision's human-calibrated constants can reach
    against the demo corpus's articulation truth: takes drawn as `make_corpus` draws them (severities,
    deviation families, the truth formula), and an oracle that measures each take's duration scale and
    jitter exactly (no alignment, tempo or pedal noise) and feeds them to the label's own penalty, for
    four scores: unmarked (the demo's score MIDIs, its renditions at 0.92x), all slurred (renditions
    0.97x), half slurred and half staccato (0.97x / 0.30x), and all slurred with the short-legato
    tolerance lowered until r reaches 0.80. Median r over `corpora` corpora of pieces x takes."""
    import math

    from scipy.stats import pearsonr

    from pipelines.demo_corpus.deviations import sample_deviation_spec
    from pipelines.demo_corpus.generate import take_severities
    from pipelines.demo_corpus.labels import labels_from_measures
    from pipelines.features import pseudo_labels as L

    def penalty(scale: float, jitter: float, marks: str, short_tol: float) -> float:
        st = {"duration_bias": math.nan, "duration_spread": jitter, "legato_ratio": math.nan,
              "staccato_ratio": math.nan, "notated_lengths": float(marks != "none")}
        if marks == "none":
            st["duration_bias"] = math.log(0.92 * scale)
            return L._articulation_penalty(st)
        st["legato_ratio"] = math.log(0.97 * scale)
        if marks == "mixed":
            st["staccato_ratio"] = math.log(0.30 * scale)
        saved = L.LEGATO_SHORT_TOL
        L.LEGATO_SHORT_TOL = short_tol
        try:
            return L._articulation_penalty(st)
        finally:
            L.LEGATO_SHORT_TOL = saved

    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(corpora):
        corpus = []
        for _piece in range(pieces):
            for severity in take_severities(takes, rng):
                spec = sample_deviation_spec(rng, severity, 0) if severity > 0 else None
                scale = spec.duration_scale if spec else 1.0
                jitter = spec.duration_jitter if spec else 0.0
                truth = labels_from_measures({"duration_log_scale": abs(math.log(scale)),
                                              "duration_log_jitter": jitter})["articulation"]
                corpus.append((truth, scale, jitter))
        draws.append(corpus)

    def median_r(marks: str, short_tol: float) -> float:
        rs = []
        for corpus in draws:
            t = np.array([c[0] for c in corpus])
            p = np.array([L.score_from_penalty(penalty(c[1], c[2], marks, short_tol)) for c in corpus])
            if np.std(p) > 0:
                rs.append(pearsonr(t, p)[0])
        return float(np.median(rs))

    rows = [["unmarked (score MIDI)", "-", median_r("none", L.LEGATO_SHORT_TOL)],
            ["all slurred", f"{L.LEGATO_SHORT_TOL:.2f}", median_r("legato", L.LEGATO_SHORT_TOL)],
            ["half slurred, half staccato", f"{L.LEGATO_SHORT_TOL:.2f}", median_r("mixed", L.LEGATO_SHORT_TOL)]]
    for tol in (0.2, 0.15, 0.1, 0.05, 0.0):
        r = median_r("mixed", tol)
        rows.append(["half slurred, half staccato", f"{tol:.2f}", r])
        if r >= 0.8:
            break
    return {"rows": rows, "markdown": markdown_table(
        ["score", "short-legato tolerance (log)", "median Pearson r, oracle label vs truth"], rows)}


def main(pieces: int = 6, takes: int = 6, seed: int = 1, percepiano: int = 400,
         percepiano_scores: str = "midi") -> dict:
    from scipy.stats import pearsonr, spearmanr

    from model.schema import SEED10
    from pipelines.demo_corpus.generate import make_corpus
    from pipelines.features import align as A
    from pipelines.features import pseudo_labels as L
    from pipelines.features.attributes import note_attributes
    from pipelines.features.cqt import CQTExtractor
    from pipelines.io.audio import load_and_prepare
    from pipelines.io.corpora import read_corpus
    from pipelines.io.notation import load_score
    from pipelines.io.performance import load_performance

    if pieces <= 0:
        human = percepiano_table(percepiano, scores=percepiano_scores)
        return {"markdown": human["markdown"], "rows": [], "percepiano_rows": human["rows"]}
    out = os.path.join(tempfile.mkdtemp(prefix="bench-pseudo-"), "corpus")
    make_corpus(out, pieces=pieces, takes=takes, seed=seed)
    import json

    from pipelines.io import storage

    manifest = json.loads(storage.read_text(f"{out}/manifest.json"))
    counts = {r["recording_id"]: r["counts"] for r in manifest["recordings"]}
    cqt = CQTExtractor()
    truth, with_audio, symbolic, unmarked = [], [], [], []
    found = {"missed": [0, 0], "extra": [0, 0]}       # [found by the alignment, inserted by the generator]
    for rec in read_corpus(out):
        score, perf = load_score(rec.score_uri), load_performance(rec.midi_uri)
        alignment = A.align(score, perf)
        c = counts[rec.recording_id]            # a wrong note is a missed score note plus an extra one
        found["missed"][0] += alignment.n_missed
        found["missed"][1] += c["n_missed"] + c["n_wrong"]
        found["extra"][0] += alignment.n_extra
        found["extra"][1] += c["n_extra"] + c["n_wrong"]
        attrs = note_attributes(score, perf, alignment)
        audio = load_and_prepare(rec.audio_uri, 1.0, 3600.0)
        feats = {"cqt": cqt(audio.cqt)[0]}
        with_audio.append(L.pseudo_labels(score, perf, alignment, attrs, feats))
        symbolic.append(L.pseudo_labels(score, perf, alignment, attrs, None))
        unmarked.append(L.pseudo_labels(dataclasses.replace(score, pedal_beats=None), perf, alignment, attrs, None))
        truth.append(rec.labels)
    rows = []
    for dim in SEED10.pseudo_names:
        t = np.array([x[dim] for x in truth])
        row = [dim]
        for preds in (with_audio, symbolic, unmarked):
            p = np.array([x[dim] for x in preds])
            ok = ~np.isnan(p)
            if ok.sum() > 2 and np.std(p[ok]) > 0 and np.std(t[ok]) > 0:
                row += [pearsonr(t[ok], p[ok])[0], spearmanr(t[ok], p[ok])[0]]
            else:
                row += [float("nan"), float("nan")]
        rows.append(row)
    table = markdown_table(["dimension", "Pearson r", "Spearman rho", "Pearson r (no audio features)",
                            "Spearman rho (no audio features)", "Pearson r (pedal marks ignored)",
                            "Spearman rho (pedal marks ignored)"], rows)
    md = (f"### Pseudo-labels vs the demo corpus's ground truth ({len(truth)} recordings, "
          f"{pieces} pieces x {takes} takes, seed {seed})\n\n{table}\n\n"
          "Alignment on the same recordings against the errors the generator inserted (totals over recordings; "
          "a wrong note counts as one missed and one extra note): missed notes found "
          f"{found['missed'][0]} of {found['missed'][1]} inserted, extra notes found {found['extra'][0]} of "
          f"{found['extra'][1]} inserted.\n")
    out = {"markdown": md, "rows": rows}
    if percepiano > 0 and os.path.isdir(PERCEPIANO_DIR):
        human = percepiano_table(percepiano, scores=percepiano_scores)
        out["markdown"] += "\n" + human["markdown"]
        out["percepiano_rows"] = human["rows"]
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--percepiano", type=int, default=400, help="rated human PercePiano segments (0: skip)")
    parser.add_argument("--percepiano-scores", choices=("midi", "musicxml"), default="midi",
                        help="PercePiano's score MIDIs or its MusicXML scores (with articulation marks)")
    parser.add_argument("--pieces", type=int, default=6, help="demo corpus pieces (0: skip the demo corpus)")
    parser.add_argument("--articulation-ceiling", action="store_true",
                        help="only the best r an articulation label with these constants can reach (seconds)")
    args = parser.parse_args()
    if args.articulation_ceiling:
        print(articulation_ceiling()["markdown"])
        raise SystemExit(0)
    print(main(pieces=args.pieces, percepiano=args.percepiano, percepiano_scores=args.percepiano_scores)["markdown"])
