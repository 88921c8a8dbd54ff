"""Score <-> performance note alignment and the local tempo it implies.

`align(score, perf)` matches written to performed notes with parangonar (DualDTWNoteMatcher by default:
an onset-level DTW on pitch sets in both directions, then pitch-wise matching; see
benchmarks/bench_alignment.py for the measured comparison with AutomaticNoteMatcher) and returns one
token per symbolic event: a matched score note, a missed (unplayed) score note or an extra (unwritten)
performed note, sorted by performed onset (estimated from the local tempo for missed notes).

Local tempo: the matched (score beat, performed onset) pairs are reduced to one onset per score onset
(the median over a chord) and fitted with a robust, locally weighted quadratic regression (Gaussian
kernel of `TEMPO_BANDWIDTH_BEATS` quarter notes, bisquare re-weighting as in LOWESS). The fit gives,
at every score onset, the expected performed time and the seconds per beat (the local slope, clipped
to a plausible range and made monotone). Phrase-level rubato is absorbed by the fit; what remains is
note-level timing, which `pipelines.features.attributes` measures.

`match_fscore` scores matched pairs against ground-truth pairs. Built on an alignment elsewhere: per-token
performance attributes (`pipelines.features.attributes.note_attributes`), OctupleMIDI tokens
(`pipelines.features.octuple.encode_alignment`); the K265 reference example with ground-truth matches is
`pipelines.demo_corpus.k265.k265_example`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Iterable

import numba
import numpy as np

from pipelines.io.notes import (
    ALIGNED_NOTE_DTYPE,
    EXTRA,
    MATCHED,
    MISSED,
    Performance,
    Score,
)

# --- alignment and tempo constants ----------------------------------------------------------------
DEFAULT_MATCHER = "dualdtw"           # parangonar matcher (see MATCHERS)
PARTITURA_DIVS_PER_QUARTER = 480      # tick resolution of the note arrays handed to parangonar
TEMPO_BANDWIDTH_BEATS = 2.0           # std of the Gaussian kernel of the local tempo fit, quarter notes
TEMPO_KERNEL_SPAN = 4.0               # the kernel is cut at this many bandwidths
TEMPO_ROBUST_ITERATIONS = 2           # bisquare re-weighting passes
TEMPO_BISQUARE_SCALE = 6.0            # residuals beyond this many median-absolute-residuals get weight 0
TEMPO_MIN_RESIDUAL_S = 0.01          # floor of the median absolute residual in the bisquare scale
MIN_SECONDS_PER_BEAT = 0.05           # 1200 qpm: faster local slopes are clipped
MAX_SECONDS_PER_BEAT = 5.0            # 12 qpm
REFINE_MAX_DEV_BEATS = 1.0            # a re-decided match may deviate at most this much from the local tempo
REFINE_REACH_BEATS = 2.0              # same-pitch notes this close to an unmatched note are re-decided


# --- local tempo -----------------------------------------------------------------------------------
@dataclasses.dataclass
class LocalTempo:
    """A monotone map from score beats (quarter notes) to performed seconds, with its local slope."""
    beats: np.ndarray        # f8 [G]: distinct score onsets with a matched note, ascending
    times: np.ndarray        # f8 [G]: fitted performed time of each onset, seconds, non-decreasing
    spb: np.ndarray          # f8 [G]: local seconds per beat at each onset

    def time_at(self, beats: np.ndarray) -> np.ndarray:
        """Expected performed time (s) of score positions `beats` [n]; linear beyond the ends."""
        beats = np.asarray(beats, dtype=np.float64)
        out = np.interp(beats, self.beats, self.times)
        before, after = beats < self.beats[0], beats > self.beats[-1]
        out[before] = self.times[0] - (self.beats[0] - beats[before]) * self.spb[0]
        out[after] = self.times[-1] + (beats[after] - self.beats[-1]) * self.spb[-1]
        return out

    def beat_at(self, times_s: np.ndarray) -> np.ndarray:
        """Score position (beats) performed at `times_s` [n]: the inverse of `time_at`."""
        times_s = np.asarray(times_s, dtype=np.float64)
        out = np.interp(times_s, self.times, self.beats)
        before, after = times_s < self.times[0], times_s > self.times[-1]
        out[before] = self.beats[0] - (self.times[0] - times_s[before]) / self.spb[0]
        out[after] = self.beats[-1] + (times_s[after] - self.times[-1]) / self.spb[-1]
        return out

    def spb_at_beat(self, beats: np.ndarray) -> np.ndarray:
        """Local seconds per beat at score positions `beats` [n]."""
        return np.interp(np.asarray(beats, dtype=np.float64), self.beats, self.spb)

    def spb_at_time(self, times_s: np.ndarray) -> np.ndarray:
        """Local seconds per beat at performed times `times_s` [n]."""
        return np.interp(np.asarray(times_s, dtype=np.float64), self.times, self.spb)

    @property
    def median_spb(self) -> float:
        return float(np.median(self.spb))


def fit_local_tempo(score_beats: np.ndarray, perf_onsets_s: np.ndarray, default_spb: float = 0.5,
                    bandwidth_beats: float = TEMPO_BANDWIDTH_BEATS) -> LocalTempo:
    """Robust local-linear fit of performed onset (s) against score onset (beats) of matched notes [n].

    Chords are reduced to their median performed onset first. With fewer than two distinct onsets the
    slope is `default_spb` (the written tempo).
    """
    beats, times = median_per_onset(np.asarray(score_beats, float), np.asarray(perf_onsets_s, float))
    if len(beats) == 0:
        return LocalTempo(np.zeros(1), np.zeros(1), np.full(1, default_spb))
    if len(beats) == 1:
        return LocalTempo(beats, times, np.full(1, default_spb))
    global_spb = float(np.clip(np.polyfit(beats, times, 1)[0], MIN_SECONDS_PER_BEAT, MAX_SECONDS_PER_BEAT))
    robust = _bisquare_weights(times - _neighbour_prediction(beats, times))
    for _ in range(TEMPO_ROBUST_ITERATIONS + 1):
        fitted, slope = _local_quadratic(beats, times, robust, bandwidth_beats, global_spb)
        robust = _bisquare_weights(times - fitted)
    slope = np.clip(slope, MIN_SECONDS_PER_BEAT, MAX_SECONDS_PER_BEAT)
    return LocalTempo(beats, np.maximum.accumulate(fitted), slope)


def median_per_onset(beats: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct score onsets [G] (ascending) and the median performed time of the notes at each [G]."""
    if len(beats) == 0:
        return beats, times
    order = np.lexsort((times, beats))
    beats, times = beats[order], times[order]
    unique, start = np.unique(beats, return_index=True)
    medians = np.array([np.median(chunk) for chunk in np.split(times, start[1:])])
    return unique, medians


def _local_quadratic(x: np.ndarray, y: np.ndarray, robust: np.ndarray, bandwidth: float,
                     fallback_slope: float, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-kernel weighted quadratic regression of y on x, evaluated at each x [G]: (fit, slope).

    A local quadratic keeps the fit unbiased through smooth accelerations (a local line lags behind a
    strong rubato by about f''h^2/2). Where fewer than three onsets carry weight it falls back to a
    local line, and to `fallback_slope` where even that is undetermined.
    """
    fitted, slope = np.empty_like(y), np.empty_like(y)
    reach = TEMPO_KERNEL_SPAN * bandwidth
    for lo in range(0, len(x), chunk):
        centre = x[lo:lo + chunk]
        a, b = np.searchsorted(x, centre[0] - reach), np.searchsorted(x, centre[-1] + reach, side="right")
        d = x[None, a:b] - centre[:, None]                                          # [c, m] beats
        w = np.exp(-0.5 * (d / bandwidth) ** 2) * robust[None, a:b]                  # [c, m]
        ys = y[None, a:b] - y[lo:lo + chunk, None]                                  # centred for precision
        moments = np.stack([(w * d ** k).sum(1) for k in range(5)], axis=1)         # [c, 5]
        rhs = np.stack([(w * d ** k * ys).sum(1) for k in range(3)], axis=1)        # [c, 3]
        gram = moments[:, [[0, 1, 2], [1, 2, 3], [2, 3, 4]]]                        # [c, 3, 3]
        quad_ok = np.linalg.cond(gram) < 1e8
        coef = np.zeros((len(centre), 3))
        if quad_ok.any():
            coef[quad_ok] = np.linalg.solve(gram[quad_ok], rhs[quad_ok][..., None])[..., 0]
        lin = ~quad_ok
        det = moments[lin, 0] * moments[lin, 2] - moments[lin, 1] ** 2
        lin_ok = det > 1e-9 * np.maximum(moments[lin, 0], 1e-12) ** 2
        b_lin = np.where(lin_ok, (moments[lin, 0] * rhs[lin, 1] - moments[lin, 1] * rhs[lin, 0])
                         / np.where(lin_ok, det, 1.0), fallback_slope)
        a_lin = (rhs[lin, 0] - b_lin * moments[lin, 1]) / np.maximum(moments[lin, 0], 1e-12)
        coef[lin, 0], coef[lin, 1] = a_lin, b_lin
        fitted[lo:lo + chunk] = y[lo:lo + chunk] + coef[:, 0]
        slope[lo:lo + chunk] = coef[:, 1]
    return fitted, slope


def _neighbour_prediction(x: np.ndarray, y: np.ndarray, reach: int = 3) -> np.ndarray:
    """Median over k = 1..reach of the straight-line interpolation of y[i] from y[i-k] and y[i+k] [G].

    A start for the robust weights that one misplaced onset cannot spoil: it only enters the
    predictions of its neighbours through one of their `reach` candidates. Ends use the nearest pairs.
    """
    n = len(x)
    candidates = np.full((reach, n), np.nan)
    for k in range(1, reach + 1):
        lo, hi = np.arange(n) - k, np.arange(n) + k
        ok = (lo >= 0) & (hi < n)
        a, b = lo[ok], hi[ok]
        frac = (x[ok] - x[a]) / np.maximum(x[b] - x[a], 1e-9)
        candidates[k - 1, ok] = y[a] + frac * (y[b] - y[a])
    known = ~np.isnan(candidates).all(axis=0)                       # the two end points have no pair
    prediction = y.astype(np.float64).copy()
    prediction[known] = np.nanmedian(candidates[:, known], axis=0)
    return prediction


def _bisquare_weights(residuals: np.ndarray) -> np.ndarray:
    scale = TEMPO_BISQUARE_SCALE * max(float(np.median(np.abs(residuals))), TEMPO_MIN_RESIDUAL_S)
    u = np.clip(residuals / scale, -1.0, 1.0)
    return (1.0 - u ** 2) ** 2


# --- alignment ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Alignment:
    """One token per symbolic event, sorted by performed (or, for missed notes, estimated) onset."""
    tokens: np.ndarray                  # ALIGNED_NOTE_DTYPE [n_tokens]
    n_matched: int
    n_missed: int
    n_extra: int
    tempo: LocalTempo | None = None     # fitted on the matched notes

    @property
    def n_tokens(self) -> int:
        return int(len(self.tokens))

    @property
    def matched_pairs(self) -> np.ndarray:
        """i8 [n_matched, 2]: (score_index, perf_index) of each matched note."""
        m = self.tokens[self.tokens["kind"] == MATCHED]
        return np.stack([m["score_index"], m["perf_index"]], axis=1).astype(np.int64)

    @property
    def n_score_notes(self) -> int:
        return self.n_matched + self.n_missed

    @property
    def n_perf_notes(self) -> int:
        return self.n_matched + self.n_extra

    @property
    def match_rate(self) -> float:
        """Fraction of score notes that were played (1.0 for an empty score)."""
        return self.n_matched / self.n_score_notes if self.n_score_notes else 1.0

    def mask(self, kind: int) -> np.ndarray:
        """bool [n_tokens]: tokens of `kind` (MATCHED, MISSED or EXTRA)."""
        return self.tokens["kind"] == kind


def align(score: Score, perf: Performance, matcher: str = DEFAULT_MATCHER, refine: bool = True) -> Alignment:
    """Align `perf` to `score` and build the token list with its local tempo.

    `refine` re-decides, pitch by pitch, the matches around each missed or extra note with the fitted
    local tempo (see `refine_pairs`).
    """
    pairs = match_notes(score, perf, matcher)
    tempo = _tempo(score, perf, pairs)
    if refine and len(score.notes) and len(perf.notes):
        # with no pair at all (the matcher leaves a lone note unmatched) the refinement still runs, against
        # the written tempo anchored at the first onset
        pairs = refine_pairs(score, perf, pairs, tempo)
        tempo = _tempo(score, perf, pairs)
    return Alignment(_build_tokens(score, perf, pairs, tempo), int(len(pairs)),
                     int(len(score.notes) - len(pairs)), int(len(perf.notes) - len(pairs)), tempo)


def _tempo(score: Score, perf: Performance, pairs: np.ndarray) -> LocalTempo:
    """The local tempo of the pairs; with none, the written tempo with the score's first onset at the first
    performed onset."""
    if len(pairs) or not len(perf.notes):
        return _tempo_of_pairs(score, perf, pairs)
    first_beat = float(score.notes["onset_beat"].min()) if len(score.notes) else 0.0
    return LocalTempo(np.full(1, first_beat), np.full(1, float(perf.notes["onset_s"][0])),
                      np.full(1, 60.0 / score.tempo_qpm))


def match_notes(score: Score, perf: Performance, matcher: str = DEFAULT_MATCHER) -> np.ndarray:
    """i8 [k, 2]: (score_index, perf_index) pairs found by the parangonar `matcher`, one-to-one."""
    if len(score.notes) == 0 or len(perf.notes) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    result = _matcher(matcher)(score_note_array(score), performance_note_array(perf))
    pairs = [(int(a["score_id"][1:]), int(a["performance_id"][1:])) for a in result if a["label"] == "match"]
    return _one_to_one(np.array(pairs, dtype=np.int64).reshape(-1, 2))


def _tempo_of_pairs(score: Score, perf: Performance, pairs: np.ndarray) -> LocalTempo:
    """Local tempo of matched pairs [k, 2], grace notes (written duration 0, played ahead of the beat) left out."""
    pairs = pairs[~is_grace(score.notes[pairs[:, 0]])]
    return fit_local_tempo(score.notes["onset_beat"][pairs[:, 0]], perf.notes["onset_s"][pairs[:, 1]],
                           default_spb=60.0 / score.tempo_qpm)


def is_grace(score_notes: np.ndarray) -> np.ndarray:
    """bool [n]: grace notes, which score readers give a written duration of 0."""
    return score_notes["duration_beat"] <= 0.0


def refine_pairs(score: Score, perf: Performance, pairs: np.ndarray, tempo: LocalTempo) -> np.ndarray:
    """Re-decide same-pitch matches near every unmatched note with an exact monotone alignment.

    For each pitch with an unmatched score or performed note, the same-pitch notes within
    `REFINE_REACH_BEATS` of it (and their current partners) form a small problem: a monotone
    sequence alignment whose match cost is the onset deviation from the local tempo in beats (allowed up
    to `REFINE_MAX_DEV_BEATS`; pairs the matcher proposed are always allowed, at most at that cost) and
    whose cost per unmatched note is half of it. Returns i8 [k', 2] pairs sorted by score index.
    """
    sn, pn = score.notes, perf.notes
    expected = tempo.time_at(sn["onset_beat"])
    spb = tempo.spb_at_beat(sn["onset_beat"])
    partner_of_score = np.full(len(sn), -1, dtype=np.int64)
    partner_of_score[pairs[:, 0]] = pairs[:, 1]
    partner_of_perf = np.full(len(pn), -1, dtype=np.int64)
    partner_of_perf[pairs[:, 1]] = pairs[:, 0]
    for pitch in np.unique(np.concatenate([sn["pitch"][partner_of_score < 0], pn["pitch"][partner_of_perf < 0]])):
        s_idx = np.flatnonzero(sn["pitch"] == pitch)
        p_idx = np.flatnonzero(pn["pitch"] == pitch)
        if len(s_idx) == 0 or len(p_idx) == 0:
            continue
        for s_sub, p_sub in _error_clusters(s_idx, p_idx, expected, spb, pn["onset_s"], partner_of_score,
                                            partner_of_perf):
            proposed = {(int(s), int(partner_of_score[s])) for s in s_sub if partner_of_score[s] >= 0}
            new = _monotone_pitch_alignment(s_sub, p_sub, expected, spb, pn["onset_s"], proposed)
            partner_of_score[s_sub], partner_of_perf[p_sub] = -1, -1
            for s, p in new:
                partner_of_score[s], partner_of_perf[p] = p, s
    matched = np.flatnonzero(partner_of_score >= 0)
    return np.stack([matched, partner_of_score[matched]], axis=1).astype(np.int64)


def _error_clusters(s_idx: np.ndarray, p_idx: np.ndarray, expected: np.ndarray, spb: np.ndarray,
                    onsets: np.ndarray, partner_of_score: np.ndarray, partner_of_perf: np.ndarray
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Disjoint groups of same-pitch (score, perf) indices around unmatched notes, closed under the
    current pairs (a note's partner is in its group), each sorted by time."""
    s_time, p_time = expected[s_idx], onsets[p_idx]
    reach = REFINE_REACH_BEATS * float(np.median(spb[s_idx]))
    seeds = np.concatenate([s_time[partner_of_score[s_idx] < 0], p_time[partner_of_perf[p_idx] < 0]])
    groups: list[tuple[set[int], set[int]]] = []
    for lo, hi in _merge_intervals(np.sort(seeds), reach):
        s_in = set(s_idx[(s_time >= lo) & (s_time <= hi)].tolist())
        p_in = set(p_idx[(p_time >= lo) & (p_time <= hi)].tolist())
        s_in |= {int(partner_of_perf[p]) for p in p_in if partner_of_perf[p] >= 0}
        p_in |= {int(partner_of_score[s]) for s in s_in if partner_of_score[s] >= 0}
        for other in [g for g in groups if g[0] & s_in or g[1] & p_in]:   # a pair reaching into another group
            groups.remove(other)
            s_in, p_in = s_in | other[0], p_in | other[1]
        groups.append((s_in, p_in))
    return [(np.array(sorted(s_in, key=lambda s: expected[s]), dtype=np.int64),
             np.array(sorted(p_in, key=lambda p: onsets[p]), dtype=np.int64)) for s_in, p_in in groups]


def _merge_intervals(points: np.ndarray, reach: float) -> list[tuple[float, float]]:
    """[point - reach, point + reach] intervals of sorted `points`, overlapping ones merged."""
    merged: list[list[float]] = []
    for t in points:
        if merged and t - reach <= merged[-1][1]:
            merged[-1][1] = t + reach
        else:
            merged.append([t - reach, t + reach])
    return [(lo, hi) for lo, hi in merged]


def _monotone_pitch_alignment(s_sub: np.ndarray, p_sub: np.ndarray, expected: np.ndarray, spb: np.ndarray,
                              onsets: np.ndarray, proposed: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """Minimum-cost order-preserving matching of same-pitch score and performed notes (edit-distance DP)."""
    n, m = len(s_sub), len(p_sub)
    gap = REFINE_MAX_DEV_BEATS / 2.0
    dev = np.abs(onsets[p_sub][None, :] - expected[s_sub][:, None]) / spb[s_sub][:, None]     # [n, m]
    is_proposed = np.array([[(int(s), int(p)) in proposed for p in p_sub] for s in s_sub]).reshape(n, m)
    cost = np.where(is_proposed, np.minimum(dev, REFINE_MAX_DEV_BEATS) - 1e-6,
                    np.where(dev <= REFINE_MAX_DEV_BEATS, dev, np.inf))
    total = np.full((n + 1, m + 1), np.inf)
    total[0, :] = gap * np.arange(m + 1)
    total[:, 0] = gap * np.arange(n + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            total[i, j] = min(total[i - 1, j - 1] + cost[i - 1, j - 1], total[i - 1, j] + gap, total[i, j - 1] + gap)
    pairs, i, j = [], n, m
    while i > 0 and j > 0:
        if np.isclose(total[i, j], total[i - 1, j - 1] + cost[i - 1, j - 1]):
            pairs.append((int(s_sub[i - 1]), int(p_sub[j - 1])))
            i, j = i - 1, j - 1
        elif np.isclose(total[i, j], total[i - 1, j] + gap):
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


MATCHERS = ("dualdtw", "automatic")


@functools.lru_cache(maxsize=None)
def _matcher(name: str):
    """A parangonar matcher; DualDTW's onset DTW runs on the compiled `PitchSetDTW` (same result)."""
    import parangonar
    from parangonar.match.matchers import OnsetMatcherDTW

    if name == "dualdtw":
        return parangonar.DualDTWNoteMatcher(onset_matcher=OnsetMatcherDTW(dtw=PitchSetDTW()))
    if name == "automatic":
        return parangonar.AutomaticNoteMatcher()
    raise ValueError(f"unknown matcher {name!r}: use one of {list(MATCHERS)}")


class PitchSetDTW:
    """DTW of performed pitches against score onsets' pitch sets, cost 0 if the pitch is in the set else 1.

    Computes the same accumulated cost and path as parangonar's pure-Python `DTWSL` with its
    element-of-set metric, compiled with numba (1000 notes x 500 onsets: 0.60 s -> 0.012 s here).
    """

    def __call__(self, X, Y, return_path: bool = True, return_cost_matrix: bool = False):
        from parangonar.dp.dtw import dtw_backtracking

        pitches = np.asarray(X, dtype=np.int64)
        member = np.zeros((len(Y), 128), dtype=np.bool_)
        for j, pitch_set in enumerate(Y):
            member[j, list(pitch_set)] = True
        dtwd = _pitch_set_dtw_matrix(pitches, member)
        out: tuple = (float(dtwd[-1, -1]),)
        if return_path:
            # parangonar's backtracking never ends on a 1 x 1 matrix (one performed note against one score onset):
            # it steps past (0, 0) and loops forever, growing its path
            out += (np.zeros((1, 2), dtype=int) if dtwd.shape == (1, 1) else dtw_backtracking(dtwd),)
        if return_cost_matrix:
            out += (dtwd,)
        return out


@numba.njit(cache=True)
def _pitch_set_dtw_matrix(pitches: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Accumulated DTW cost [M, N] of pitches [M] against onset pitch-membership rows [N, 128]."""
    m, n = len(pitches), member.shape[0]
    acc = np.full((m + 1, n + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, m + 1):
        p = pitches[i - 1]
        for j in range(1, n + 1):
            cost = 0.0 if member[j - 1, p] else 1.0
            acc[i, j] = cost + min(acc[i - 1, j], acc[i, j - 1], acc[i - 1, j - 1])
    return acc[1:, 1:]


def _one_to_one(pairs: np.ndarray) -> np.ndarray:
    """Drop repeated score or perf indices (keep the first), sorted by score index."""
    _, first_score = np.unique(pairs[:, 0], return_index=True)
    pairs = pairs[np.sort(first_score)]
    _, first_perf = np.unique(pairs[:, 1], return_index=True)
    pairs = pairs[np.sort(first_perf)]
    return pairs[np.argsort(pairs[:, 0], kind="stable")]


def score_note_array(score: Score) -> np.ndarray:
    """Score notes as partitura's note array (the fields parangonar reads); ids are 's<index>'."""
    sn = score.notes
    fields = [("onset_beat", "f4"), ("duration_beat", "f4"), ("onset_quarter", "f4"), ("duration_quarter", "f4"),
              ("onset_div", "i8"), ("duration_div", "i8"), ("pitch", "i4"), ("voice", "i4"), ("id", "U16"),
              ("is_grace", "i1"), ("grace_type", "U16"), ("steal_proportion", "f4"),
              ("local_grace_order", "i4"), ("divs_pq", "i4")]
    out = np.zeros(len(sn), dtype=fields)
    out["onset_beat"] = out["onset_quarter"] = sn["onset_beat"]
    out["duration_beat"] = out["duration_quarter"] = sn["duration_beat"]
    out["onset_div"] = np.round(sn["onset_beat"] * PARTITURA_DIVS_PER_QUARTER)
    out["duration_div"] = np.round(sn["duration_beat"] * PARTITURA_DIVS_PER_QUARTER)
    out["pitch"], out["voice"] = sn["pitch"], sn["voice"]
    out["id"] = [f"s{i}" for i in range(len(sn))]
    out["is_grace"] = is_grace(sn)
    out["grace_type"] = np.where(out["is_grace"], "acciaccatura", "")
    out["steal_proportion"], out["local_grace_order"] = -1.0, -1
    out["divs_pq"] = PARTITURA_DIVS_PER_QUARTER
    return out


def performance_note_array(perf: Performance) -> np.ndarray:
    """Performed notes as partitura's performance note array; ids are 'p<index>'."""
    pn = perf.notes
    fields = [("onset_sec", "f4"), ("duration_sec", "f4"), ("onset_tick", "i4"), ("duration_tick", "i4"),
              ("pitch", "i4"), ("velocity", "i4"), ("track", "i4"), ("channel", "i4"), ("id", "U16")]
    out = np.zeros(len(pn), dtype=fields)
    out["onset_sec"], out["duration_sec"] = pn["onset_s"], pn["offset_s"] - pn["onset_s"]
    out["onset_tick"] = np.round(pn["onset_s"] * PARTITURA_DIVS_PER_QUARTER * 2)   # 120 qpm ticks
    out["duration_tick"] = np.round(out["duration_sec"] * PARTITURA_DIVS_PER_QUARTER * 2)
    out["pitch"], out["velocity"] = pn["pitch"], pn["velocity"]
    out["id"] = [f"p{i}" for i in range(len(pn))]
    return out


def _build_tokens(score: Score, perf: Performance, pairs: np.ndarray, tempo: LocalTempo) -> np.ndarray:
    """ALIGNED_NOTE_DTYPE rows for matched, missed and extra notes, sorted by (onset, kind, pitch)."""
    sn, pn = score.notes, perf.notes
    missed = np.setdiff1d(np.arange(len(sn)), pairs[:, 0])
    extra = np.setdiff1d(np.arange(len(pn)), pairs[:, 1])
    tokens = np.zeros(len(pairs) + len(missed) + len(extra), dtype=ALIGNED_NOTE_DTYPE)
    m, k = len(pairs), len(pairs) + len(missed)
    tokens["kind"][:m], tokens["kind"][m:k], tokens["kind"][k:] = MATCHED, MISSED, EXTRA
    tokens["score_index"][:m], tokens["perf_index"][:m] = pairs[:, 0], pairs[:, 1]
    tokens["score_index"][m:k], tokens["perf_index"][m:k] = missed, -1
    tokens["score_index"][k:], tokens["perf_index"][k:] = -1, extra
    tokens["perf_onset_s"][:m] = pn["onset_s"][pairs[:, 1]]
    tokens["perf_onset_s"][m:k] = tempo.time_at(sn["onset_beat"][missed]) if len(missed) else 0.0
    tokens["perf_onset_s"][k:] = pn["onset_s"][extra]
    tokens["pitch"][:k] = sn["pitch"][tokens["score_index"][:k]]
    tokens["pitch"][k:] = pn["pitch"][extra]
    tokens["bar"][:k] = sn["bar"][tokens["score_index"][:k]]
    anchors = nearest_matched_score_note(pn["onset_s"][extra], pn["onset_s"][pairs[:, 1]], pairs[:, 0])
    tokens["bar"][k:] = np.where(anchors >= 0, sn["bar"][np.maximum(anchors, 0)], 0) if len(sn) else 0
    return tokens[np.lexsort((tokens["pitch"], tokens["kind"], tokens["perf_onset_s"]))]


TREMOLO_REACH_S = 0.15          # a tremolo's repeated notes may start this much before or end after its span


def tremolo_extras(score: Score, alignment: "Alignment", tempo: LocalTempo | None = None) -> np.ndarray:
    """bool [n_tokens]: the EXTRA tokens that play out a written tremolo (MARK_TREMOLO): the pitch of a
    tremolo note of the same voice group, struck inside the group's span (its consecutive tremolo notes,
    placed in time by the local tempo). The score lists a tremolo as one or two notes and the pianist
    plays many: those are the written notes, not extra ones."""
    from pipelines.io.notes import MARK_TREMOLO

    tokens = alignment.tokens
    out = np.zeros(len(tokens), bool)
    trem = np.flatnonzero(score.notes["mark"] == MARK_TREMOLO)
    extra = np.flatnonzero(tokens["kind"] == EXTRA)
    if not len(trem) or not len(extra):
        return out
    tempo = tempo if tempo is not None else alignment.tempo
    if tempo is None:
        return out
    sn = score.notes
    groups: list[tuple] = []            # (first beat, last beat, pitches, voice) of each run of tremolo notes
    for voice in np.unique(sn["voice"][trem]):
        idx = trem[sn["voice"][trem] == voice]
        idx = idx[np.argsort(sn["onset_beat"][idx], kind="stable")]
        for i in idx:
            a, b = float(sn["onset_beat"][i]), float(sn["onset_beat"][i] + sn["duration_beat"][i])
            if groups and groups[-1][3] == voice and a <= groups[-1][1] + 1e-6:
                start, end, pitches, _ = groups[-1]
                groups[-1] = (start, max(end, b), pitches | {int(sn["pitch"][i])}, voice)
            else:
                groups.append((a, b, {int(sn["pitch"][i])}, voice))
    t = tokens["perf_onset_s"][extra]
    pitch = tokens["pitch"][extra].astype(int)
    for a, b, pitches, _ in groups:
        t0, t1 = tempo.time_at(np.array([a, b]))
        inside = (t >= t0 - TREMOLO_REACH_S) & (t <= t1 + TREMOLO_REACH_S) & np.isin(pitch, list(pitches))
        out[extra[inside]] = True
    return out


def nearest_matched_score_note(times_s: np.ndarray, matched_onsets_s: np.ndarray,
                               matched_score_index: np.ndarray) -> np.ndarray:
    """i8 [n]: score index of the matched note whose performed onset is nearest each time; -1 if none."""
    if len(matched_onsets_s) == 0:
        return np.full(len(times_s), -1, dtype=np.int64)
    order = np.argsort(matched_onsets_s, kind="stable")
    onsets, index = matched_onsets_s[order], matched_score_index[order]
    right = np.clip(np.searchsorted(onsets, times_s), 0, len(onsets) - 1)
    left = np.clip(right - 1, 0, len(onsets) - 1)
    use_left = np.abs(times_s - onsets[left]) <= np.abs(onsets[right] - times_s)
    return np.where(use_left, index[left], index[right]).astype(np.int64)


def local_tempo(score: Score, perf: Performance, alignment: Alignment) -> LocalTempo:
    """The alignment's tempo, refitted from its matched pairs if it carries none."""
    if alignment.tempo is not None:
        return alignment.tempo
    return _tempo_of_pairs(score, perf, alignment.matched_pairs)


# --- evaluation ------------------------------------------------------------------------------------------
def match_fscore(predicted_pairs: Iterable, ground_truth_pairs: Iterable) -> dict[str, float]:
    """Precision, recall and F1 of predicted (score_index, perf_index) matches against the ground truth.

    Both empty counts as perfect (1, 1, 1).
    """
    predicted = {(int(s), int(p)) for s, p in predicted_pairs}
    truth = {(int(s), int(p)) for s, p in ground_truth_pairs}
    if not predicted and not truth:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    hit = len(predicted & truth)
    precision = hit / len(predicted) if predicted else 0.0
    recall = hit / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
