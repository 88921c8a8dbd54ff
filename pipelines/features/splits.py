"""Train / validation / test splits grouped by piece.

No piece sits on two sides: every recording of a piece goes where the piece goes. Pieces are shuffled
with a seed and assigned greedily to the split furthest below its target share of recordings, so the
proportions follow `fractions` as closely as whole pieces allow. When labels are known, pieces are first
ordered into strata by their mean label and the greedy pass walks the strata in turn, so each split
gets pieces from the whole range of quality (stratified where possible).
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Iterable

import numpy as np

SPLITS = ("train", "val", "test")
_CORPUS_SPLIT_NAMES = {"train": "train", "training": "train", "validation": "val", "val": "val",
                       "valid": "val", "test": "test", "testing": "test"}


def normalise_split_name(name: str | None) -> str | None:
    """Map a corpus's split name (MAESTRO: train/validation/test) to train/val/test, or None."""
    if not name:
        return None
    return _CORPUS_SPLIT_NAMES.get(str(name).strip().lower())


def assign_splits(piece_ids: Iterable[str], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                  seed: int = 0, piece_scores: dict[str, float] | None = None) -> dict[str, str]:
    """{piece_id: split} for the pieces of a corpus, grouped by piece.

    piece_ids: one entry per recording (repeats count toward the piece's weight).
    piece_scores: optional mean label per piece, used to stratify.
    With 3 or more pieces and non-zero fractions, val and test each get at least one piece.
    """
    counts = Counter(piece_ids)
    pieces = sorted(counts)
    rng = np.random.default_rng(seed)
    order = [pieces[i] for i in rng.permutation(len(pieces))]
    if piece_scores:
        n_strata = max(1, min(len(order) // 3, 5))
        ranked = sorted(order, key=lambda p: piece_scores.get(p, math.inf))   # shuffled ties
        bands = np.array_split(np.array(ranked, dtype=object), n_strata)       # contiguous quality bands
        bands = [list(band[rng.permutation(len(band))]) for band in bands]
        # walk the bands in turn: any run of n_strata consecutive pieces spans the quality range
        order = [band[i] for i in range(max(map(len, bands))) for band in bands if i < len(band)]
    total = sum(counts.values())
    assigned: dict[str, str] = {}
    filled: dict[str, int] = defaultdict(int)
    active = [s for s, f in zip(SPLITS, fractions) if f > 0]
    # seed val/test with one piece each so evaluation always has held-out pieces
    queue = list(order)
    if len(queue) >= 3:
        for split in ("val", "test"):
            if split in active:
                piece = queue.pop(0)
                assigned[piece] = split
                filled[split] += counts[piece]
    target = dict(zip(SPLITS, fractions))
    for piece in queue:
        split = max(active, key=lambda s: target[s] * total - filled[s])
        assigned[piece] = split
        filled[split] += counts[piece]
    return assigned
