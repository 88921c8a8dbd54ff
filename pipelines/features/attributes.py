"""Per-token performance attributes of an alignment (`pipelines.features.align`).

`note_attributes` gives one float32 vector per alignment token in the order of
`constants.PERF_ATTR_NAMES`: played / missed / extra flags, velocity, note-level timing against the
alignment's local tempo (onset deviation, IOI and duration ratios, clipped) and the pedal states at the
token's onset. `matched_timing` gives the unclipped timing of matched tokens (the pseudo-labels use it).
"""
from __future__ import annotations

import numpy as np

from pipelines.constants import (
    CC_SOFT,
    CC_SOSTENUTO,
    CC_SUSTAIN,
    N_PERF_ATTRS,
    PERF_ATTR_NAMES,
)
from pipelines.features.align import Alignment, LocalTempo, is_grace, local_tempo, median_per_onset
from pipelines.io.notes import EXTRA, MATCHED, MISSED, Performance, Score

# --- attribute clipping (documented in constants.PERF_ATTR_NAMES) ---------------------------------
ONSET_DEV_CLIP_BEATS = 2.0            # onset deviation, beats
LOG_IOI_RATIO_CLIP = 2.0              # natural log of a ratio of seconds
LOG_DURATION_RATIO_CLIP = 3.0         # natural log of a ratio of seconds
MIN_DURATION_S = 1e-3                 # floor for performed/expected durations in log ratios
ATTR_INDEX = {name: i for i, name in enumerate(PERF_ATTR_NAMES)}


def note_attributes(score: Score, perf: Performance, alignment: Alignment) -> np.ndarray:
    """f4 [n_tokens, N_PERF_ATTRS]: performance attributes of each token, in PERF_ATTR_NAMES order.

    Matched: velocity/127; onset deviation from the local-tempo fit in beats (clipped +-2); log of the
    performed IOI to the next score onset over the written IOI at the piece's median tempo (clipped
    +-2; 0 for the last onset); log of performed over written duration at the local tempo (clipped +-3).
    Missed: only `missed` and the pedal state at the estimated onset. Extra: `extra`, velocity, pedal.
    Pedal columns are 0/1 states of CC64 / CC67 / CC66 at the token's (performed or estimated) onset.
    """
    tok = alignment.tokens
    attrs = np.zeros((len(tok), N_PERF_ATTRS), dtype=np.float32)
    kind = tok["kind"]
    matched, extra = kind == MATCHED, kind == EXTRA
    attrs[:, ATTR_INDEX["played"]] = matched
    attrs[:, ATTR_INDEX["missed"]] = kind == MISSED
    attrs[:, ATTR_INDEX["extra"]] = extra
    played = matched | extra
    attrs[played, ATTR_INDEX["velocity"]] = perf.notes["velocity"][tok["perf_index"][played]] / 127.0
    if matched.any():
        tempo = local_tempo(score, perf, alignment)
        timing = matched_timing(score, perf, tok[matched], tempo)
        for name, clip in (("onset_dev", ONSET_DEV_CLIP_BEATS), ("log_ioi_ratio", LOG_IOI_RATIO_CLIP),
                           ("log_duration_ratio", LOG_DURATION_RATIO_CLIP)):
            attrs[matched, ATTR_INDEX[name]] = np.clip(timing[name], -clip, clip)
    for name, controller in (("sustain", CC_SUSTAIN), ("soft", CC_SOFT), ("sostenuto", CC_SOSTENUTO)):
        attrs[:, ATTR_INDEX[name]] = _pedal_down_at(perf.pedal, tok["perf_onset_s"], controller)
    return attrs


def matched_timing(score: Score, perf: Performance, matched_tokens: np.ndarray,
                   tempo: LocalTempo) -> dict[str, np.ndarray]:
    """Unclipped timing of matched tokens [k]: onset_dev (beats), log_ioi_ratio, log_duration_ratio.

    Grace notes (written duration 0) get log ratios of 0: they have no written length or IOI.
    """
    sn, pn = score.notes[matched_tokens["score_index"]], perf.notes[matched_tokens["perf_index"]]
    spb = tempo.spb_at_beat(sn["onset_beat"])
    onset_dev = (pn["onset_s"] - tempo.time_at(sn["onset_beat"])) / spb
    written_s = np.maximum(sn["duration_beat"] * spb, MIN_DURATION_S)
    played_s = np.maximum(pn["offset_s"] - pn["onset_s"], MIN_DURATION_S)
    grace = is_grace(sn)
    log_ioi = np.zeros(len(sn))
    log_ioi[~grace] = _log_ioi_ratio(sn["onset_beat"][~grace], pn["onset_s"][~grace], tempo)
    return {"onset_dev": onset_dev, "log_ioi_ratio": log_ioi,
            "log_duration_ratio": np.where(grace, 0.0, np.log(played_s / written_s))}


def _log_ioi_ratio(beats: np.ndarray, onsets_s: np.ndarray, tempo: LocalTempo) -> np.ndarray:
    """log(performed IOI / written IOI at the median tempo) to the next distinct score onset [k]."""
    group_beats, group_times = median_per_onset(beats, onsets_s)
    nxt = np.searchsorted(group_beats, beats, side="right")
    has_next = nxt < len(group_beats)
    out = np.zeros(len(beats))
    j = nxt[has_next]
    performed = np.maximum(group_times[j] - onsets_s[has_next], MIN_DURATION_S)
    written = (group_beats[j] - beats[has_next]) * tempo.median_spb
    out[has_next] = np.log(performed / written)
    return out


def _pedal_down_at(pedal: np.ndarray, times_s: np.ndarray, controller: int) -> np.ndarray:
    """f4 [n]: 1 where `controller` (a CC number) is down at each time `times_s` [n] (seconds), else 0."""
    from pipelines.io.performance import pedal_down_at

    return pedal_down_at(pedal, np.asarray(times_s, dtype=np.float64), controller).astype(np.float32)
