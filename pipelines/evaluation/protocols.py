"""Evaluation protocols: grouped folds of a corpus, written as splits tables (`pipelines.io.splits_table`).

A protocol names what may not sit on both sides of a fold:

- **piece**: the piece id (PercePiano: the passage, every player's performance of one 4/8/16-bar segment;
  the grouping of the published "piece split");
- **performer**: the performer id (no player in train and test);
- **work**: `extra["work"]` (PercePiano: Schubert D960 mvt. 2, mvt. 3, Beethoven WoO 80): train on the
  other works, test on this one; one fold per work.

Fold k tests on the k-th group of groups (balanced by recording count); validation is taken from the
remaining recordings, grouped by the protocol's key where enough groups remain and else by piece, so
early stopping never sees a test recording. Deterministic for a seed.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np

from pipelines.features.splits import assign_splits

PROTOCOLS = ("piece", "performer", "work")


def group_key(recording, protocol: str) -> str:
    """The group of a corpus `Recording` (or its dict) under `protocol`."""
    get = recording.get if isinstance(recording, dict) else lambda k, d=None: getattr(recording, k, d)
    if protocol == "piece":
        return str(get("piece_id"))
    if protocol == "performer":
        return str(get("performer_id"))
    if protocol == "work":
        extra = get("extra") or {}
        return str(extra.get("work") or extra.get("composition") or get("piece_id"))
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


def balanced_group_folds(groups: Iterable[str], n_folds: int, seed: int = 0) -> dict[str, int]:
    """{group: fold}: groups shuffled with `seed`, then each, largest first, to the fold with fewest recordings."""
    counts = Counter(groups)
    names = sorted(counts)
    if n_folds < 2 or n_folds > len(names):
        raise ValueError(f"{n_folds} folds need 2..{len(names)} groups")
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    order.sort(key=lambda g: -counts[g])            # stable: ties keep the shuffled order
    load = [0] * n_folds
    folds: dict[str, int] = {}
    for group in order:
        k = min(range(n_folds), key=lambda i: (load[i], i))
        folds[group] = k
        load[k] += counts[group]
    return folds


def protocol_folds(recordings: list, protocol: str, n_folds: int | None = None, val_fraction: float = 0.15,
                   seed: int = 0) -> list[dict[str, str]]:
    """One {recording_id: split} per fold. n_folds defaults to 5 (piece, performer) or one per work."""
    ids = [r["recording_id"] if isinstance(r, dict) else r.recording_id for r in recordings]
    keys = [group_key(r, protocol) for r in recordings]
    pieces = [group_key(r, "piece") for r in recordings]
    n_groups = len(set(keys))
    if n_folds is None:
        n_folds = n_groups if protocol == "work" else min(5, n_groups)
    fold_of = balanced_group_folds(keys, n_folds, seed)
    out = []
    for k in range(n_folds):
        rest = [i for i, g in enumerate(keys) if fold_of[g] != k]
        rest_keys = [keys[i] for i in rest]
        by = rest_keys if len(set(rest_keys)) >= 4 else [pieces[i] for i in rest]
        val_of = assign_splits(by, (1.0 - val_fraction, val_fraction, 0.0), seed=seed + k)
        splits = {ids[i]: "test" for i, g in enumerate(keys) if fold_of[g] == k}
        for i, group in zip(rest, by):
            splits[ids[i]] = val_of[group]
        out.append(splits)
    return out
