"""Pseudo-labels against the demo corpus's known ground truth: Pearson / Spearman per technical
dimension, over recordings (labels computed on each recording's whole aligned performance)."""
from __future__ import annotations

import os
import tempfile

import numpy as np

from benchmarks.common import markdown_table


def main(pieces: int = 6, takes: int = 6, seed: int = 1) -> dict:
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

    out = os.path.join(tempfile.mkdtemp(prefix="bench-pseudo-"), "corpus")
    make_corpus(out, pieces=pieces, takes=takes, seed=seed)
    import json

    from pipelines.io import storage

    counts = {r["recording_id"]: r["counts"] for r in json.loads(storage.read_text(f"{out}/manifest.json"))["recordings"]}
    cqt = CQTExtractor()
    truth, with_audio, symbolic = [], [], []
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
        truth.append(rec.labels)
    rows = []
    for dim in SEED10.pseudo_names:
        t = np.array([x[dim] for x in truth])
        row = [dim]
        for preds in (with_audio, symbolic):
            p = np.array([x[dim] for x in preds])
            ok = ~np.isnan(p)
            if ok.sum() > 2 and np.std(p[ok]) > 0 and np.std(t[ok]) > 0:
                row += [pearsonr(t[ok], p[ok])[0], spearmanr(t[ok], p[ok])[0]]
            else:
                row += [float("nan"), float("nan")]
        rows.append(row)
    table = markdown_table(["dimension", "Pearson r", "Spearman rho", "Pearson r (no audio features)",
                            "Spearman rho (no audio features)"], rows)
    md = (f"### Pseudo-labels vs the demo corpus's ground truth ({len(truth)} recordings, "
          f"{pieces} pieces x {takes} takes, seed {seed})\n\n{table}\n\n"
          "Alignment on the same recordings against the errors the generator inserted (totals over recordings; "
          "a wrong note counts as one missed and one extra note): missed notes found "
          f"{found['missed'][0]} of {found['missed'][1]} inserted, extra notes found {found['extra'][0]} of "
          f"{found['extra'][1]} inserted.\n")
    return {"markdown": md, "rows": rows}


if __name__ == "__main__":
    print(main()["markdown"])
