"""Mozart K265 var. 1, parangonar's bundled match file: a real human performance of a real score with its
ground-truth note alignment, as (Score, Performance, matched index pairs).

A reference fixture for the alignment and pseudo-label tests and benchmarks/bench_alignment.py; the demo
corpus's K265 piece (`mozart_k265_var1`) comes from the same match file.
"""
from __future__ import annotations

import numpy as np

from pipelines.io.notes import PEDAL_DTYPE, PERF_NOTE_DTYPE, Performance, Score


def k265_example() -> tuple[Score, Performance, set[tuple[int, int]]]:
    """Mozart K265 var. 1 from parangonar: a human performance, its score and the ground-truth matches.

    The score goes through `pipelines.io.notation.score_from_partitura` (the production reader); ground-truth
    score ids are mapped to its notes by (onset, pitch). Returns (score, performance,
    {(score_index, perf_index)}), indices into the returned arrays.
    """
    import parangonar
    import partitura

    from pipelines.io.notation import score_from_partitura

    performance, ground_truth, part_score = partitura.load_match(parangonar.EXAMPLE, create_score=True)
    score = score_from_partitura(part_score, "k265")
    perf, perf_ids = _performance_from_partitura(performance)
    sna = part_score.note_array()
    origin = float(sna["onset_quarter"].min())
    by_onset_pitch = {(round(float(o), 6), int(p)): k for k, (o, p) in
                      enumerate(zip(score.notes["onset_beat"], score.notes["pitch"]))}
    score_ids = {str(n["id"]): by_onset_pitch[(round(float(n["onset_quarter"]) - origin, 6), int(n["pitch"]))]
                 for n in sna}
    truth = {(score_ids[a["score_id"]], perf_ids[a["performance_id"]])
             for a in ground_truth if a["label"] == "match"}
    return score, perf, truth


def _performance_from_partitura(performance) -> tuple[Performance, dict]:
    """Key-release offsets (`note_off`, not the pedal-extended `sound_off`) and all controller events."""
    raw = [n for part in performance.performedparts for n in part.notes]
    notes = np.zeros(len(raw), dtype=PERF_NOTE_DTYPE)
    notes["onset_s"] = [n["note_on"] for n in raw]
    notes["offset_s"] = [n["note_off"] for n in raw]
    notes["pitch"] = [n["midi_pitch"] for n in raw]
    notes["velocity"] = [n["velocity"] for n in raw]
    order = np.lexsort((notes["pitch"], notes["onset_s"]))
    controls = [c for part in performance.performedparts for c in part.controls]
    pedal = np.array([(c["time"], c["number"], c["value"]) for c in controls], dtype=PEDAL_DTYPE)
    pedal = pedal[np.argsort(pedal["time_s"], kind="stable")]
    return Performance(notes[order], pedal), {str(raw[i]["id"]): k for k, i in enumerate(order)}
