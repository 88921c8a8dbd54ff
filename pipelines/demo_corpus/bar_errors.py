"""Evaluation takes for per-bar feedback: the demo's real pieces played with errors known bar by bar.

`bar_error_takes` plays each piece (`DEMO_PIECES`, excerpts of `max_seconds`) four times from one
natural rendition (K265 too: its human recording has timing and notes of its own that no truth lists):

| variant | deviations |
| --- | --- |
| clean | none: every flag on it is a false one |
| notes | wrong, missed and extra notes at `NOTE_RATES` (sparse: most bars with an error hold one) |
| timing | `LOCAL_TEMPO_BARS` bars rushed or dragged by `LOCAL_TEMPO_PCT` % inside the bar only |
| notes_timing | both: the same notes as `notes` and the same bars as `timing` (one deviation seed per piece) |

Each take's truth is `Take.events` (`pipelines.demo_corpus.deviations`): every inserted error with its
0-based score bar. `truth_record` turns it into the bar numbers the score prints (MIDI scores: index + 1,
as the per-bar feedback numbers them) and `write_bar_error_takes` writes, per piece, the score MIDI and
per take the performance MIDI, optionally the FluidSynth-rendered audio, and `<take>.truth.json`:
`{"bars": {"<bar number>": ["missed", ...]}, "events": [...]}` (events with "bar_number" added).
"""
from __future__ import annotations

import json
from typing import Any, Callable, NamedTuple

import numpy as np

from pipelines import constants as C
from pipelines.demo_corpus.deviations import DeviationSpec, Take, apply_deviations, bar_truth
from pipelines.demo_corpus.pieces import DEMO_PIECES, CorpusGenerationError, PieceSpec
from pipelines.demo_corpus.renditions import natural_rendition
from pipelines.io import storage
from pipelines.io.notes import Score

VARIANTS = ("clean", "notes", "timing", "notes_timing")
NOTE_RATES = {"wrong_rate": 0.04, "missed_rate": 0.04, "extra_rate": 0.02}   # per played written note
LOCAL_TEMPO_BARS = (2, 3)               # bars off tempo per take, drawn from this range (inclusive)
LOCAL_TEMPO_PCT = (15.0, 25.0)          # how far off, %, drawn uniformly per piece
DEFAULT_MAX_SECONDS = 30.0              # excerpt length at the written tempo
INDEX_FILE = "bar_errors.json"
_SALT = 265                             # keeps these seeds apart from the corpus's own takes


class EvalTake(NamedTuple):
    """One evaluation take: `name` is "<piece_id>/<variant>"."""
    name: str
    score: Score
    take: Take


def piece_score(spec: PieceSpec, piece_index: int, max_seconds: float) -> Score:
    """The written excerpt of a demo piece, as the demo corpus cuts it."""
    from pipelines.demo_corpus.generate import plan_piece

    return plan_piece(spec, piece_index, 1, 0, max_seconds).score


def variant_specs(seed: int, piece_index: int) -> dict[str, DeviationSpec]:
    """The four deviation specs of a piece (`VARIANTS`), sharing one deviation seed."""
    rng = np.random.default_rng([seed, piece_index, _SALT])
    take_seed = int(np.random.SeedSequence([seed, piece_index, _SALT]).generate_state(1)[0])
    timing = {"local_tempo_bars": int(rng.integers(LOCAL_TEMPO_BARS[0], LOCAL_TEMPO_BARS[1] + 1)),
              "local_tempo_pct": float(rng.uniform(*LOCAL_TEMPO_PCT))}
    return {"clean": DeviationSpec(seed=take_seed), "notes": DeviationSpec(**NOTE_RATES, seed=take_seed),
            "timing": DeviationSpec(**timing, seed=take_seed),
            "notes_timing": DeviationSpec(**NOTE_RATES, **timing, seed=take_seed)}


def bar_error_takes(seed: int = 0, n_pieces: int = len(DEMO_PIECES), max_seconds: float = DEFAULT_MAX_SECONDS,
                    variants: tuple[str, ...] = VARIANTS) -> list[EvalTake]:
    """Per piece (the first `n_pieces` of `DEMO_PIECES`) one take per variant, from one natural rendition.

    Deterministic for (seed, n_pieces, max_seconds)."""
    if not 1 <= n_pieces <= len(DEMO_PIECES):
        raise CorpusGenerationError(f"n_pieces {n_pieces}: choose 1..{len(DEMO_PIECES)}")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise CorpusGenerationError(f"unknown bar-error variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    out = []
    for i, spec in enumerate(DEMO_PIECES[:n_pieces]):
        score = piece_score(spec, i, max_seconds)
        expression_seed = int(np.random.SeedSequence([seed, i, _SALT, 1]).generate_state(1)[0])
        base = natural_rendition(score, expression_seed, spec.pedal_beats)
        specs = variant_specs(seed, i)
        out += [EvalTake(f"{spec.piece_id}/{v}", score, apply_deviations(score, specs[v], base=base))
                for v in variants]
    return out


def bar_number(score: Score, index: int) -> int:
    """The number the score prints for 0-based bar `index` (MIDI scores: index + 1)."""
    numbers = score.bar_numbers
    if numbers is not None and len(numbers) == score.n_bars:
        return int(numbers[index])
    return int(index) + 1


def truth_record(score: Score, take: Take) -> dict[str, Any]:
    """{"bars": {"<bar number>": sorted kinds}, "events": events with "bar_number"} (JSON-ready)."""
    bars = {str(bar_number(score, b)): sorted(kinds) for b, kinds in bar_truth(take).items()}
    events = [{**e, "bar_number": bar_number(score, e["bar"])} for e in take.events]
    return {"bars": bars, "events": events}


def write_bar_error_takes(out: str, takes: list[EvalTake], *, audio: bool = True, soundfont: str | None = None,
                          sample_rate: int = C.CQT_SAMPLE_RATE_HZ,
                          log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the takes under `out` (local path or s3://) and return the index written to `INDEX_FILE`.

    Per piece `<piece>/<piece>_score.mid`; per take `<piece>/<piece>_<variant>.mid` (performance, with
    CC64), `.flac` (FluidSynth, when `audio`) and `.truth.json` (`truth_record`)."""
    from pipelines.demo_corpus.generate import _flac_bytes, performance_midi_bytes, render_all, score_midi_bytes

    log = log or (lambda message: None)
    midis = [performance_midi_bytes(t.take.notes, t.take.pedal) for t in takes]
    font = None
    if audio:
        from pipelines.features import render
        font = render.check_soundfont(soundfont)
    audios = render_all(midis, font, sample_rate) if audio else [None] * len(takes)
    entries, scores_written = [], set()
    for t, midi, wave in zip(takes, midis, audios):
        piece_id, variant = t.name.split("/", 1)
        stem = f"{piece_id}/{piece_id}_{variant}"
        score_file = f"{piece_id}/{piece_id}_score.mid"
        if piece_id not in scores_written:
            storage.write_bytes(storage.join(out, score_file), score_midi_bytes(t.score))
            scores_written.add(piece_id)
        storage.write_bytes(storage.join(out, f"{stem}.mid"), midi)
        truth = truth_record(t.score, t.take)
        storage.write_text(storage.join(out, f"{stem}.truth.json"), json.dumps(truth, indent=1))
        entry = {"name": t.name, "piece_id": piece_id, "variant": variant, "n_bars": t.score.n_bars,
                 "score": score_file, "midi": f"{stem}.mid", "truth": f"{stem}.truth.json", "audio": None,
                 "deviations": t.take.spec.to_dict(), "bars": truth["bars"]}
        if wave is not None:
            entry["audio"] = f"{stem}.flac"
            storage.write_bytes(storage.join(out, entry["audio"]), _flac_bytes(wave, sample_rate))
        entries.append(entry)
        log(f"{t.name}: {len(truth['events'])} inserted errors in {len(truth['bars'])} bars")
    index = {"generator": "pipelines.demo_corpus.bar_errors.write_bar_error_takes", "sample_rate": sample_rate,
             "soundfont": font, "takes": entries}
    storage.write_text(storage.join(out, INDEX_FILE), json.dumps(index, indent=1))
    return index


# --- flagged bars against the truth ------------------------------------------------------------------

KIND_GROUPS = {"missed": ("missed",), "wrong": ("wrong",), "extra": ("extra",), "timing": ("rushing", "dragging")}


def flagged_bars(analysis: dict[str, Any]) -> dict[int, set[str]]:
    """0-based bar -> kinds flagged on it, from per-bar feedback (`pipelines.scoring.feedback.analyse`):
    a flag covers its bars `bar`..`last_bar` (the score's bar numbers, mapped back through `bars`)."""
    index_of = {int(b["bar"]): int(b["index"]) for b in analysis["bars"]}
    out: dict[int, set[str]] = {}
    for flag in analysis["flags"]:
        for i in range(index_of[int(flag["bar"])], index_of[int(flag["last_bar"])] + 1):
            out.setdefault(i, set()).add(flag["kind"])
    return out


def bar_hits(truth: dict[int, set[str]], flagged: dict[int, set[str]]) -> dict[str, dict[str, int]]:
    """Per group of `KIND_GROUPS`: {"truth": bars with an inserted error of the group, "flagged": bars
    flagged with the group, "hits": bars both} (recall = hits / truth, precision = hits / flagged)."""
    out = {}
    for group, kinds in KIND_GROUPS.items():
        t = {b for b, k in truth.items() if k & set(kinds)}
        f = {b for b, k in flagged.items() if k & set(kinds)}
        out[group] = {"truth": len(t), "flagged": len(f), "hits": len(t & f)}
    return out
