"""Write the folds of an evaluation protocol as splits tables, for `jobs/train.py --splits` and
`jobs/evaluate.py --splits` (one feature set, many folds; no preprocessing again).

    python jobs/splits.py --input ../shared/data/percepiano --protocol work --out splits/work
    python jobs/splits.py --input ../shared/data/percepiano --protocol performer --folds 5 --out splits/performer

Protocols (pipelines/evaluation/protocols.py): piece (grouped by piece id; PercePiano: by passage),
performer (no player on both sides), work (train on the other works, test on one; one fold per work).
Writes <out>/fold<k>.csv and prints each fold's recordings per split.
"""
from __future__ import annotations

import argparse
from collections import Counter

import _common


def main(argv: list[str] | None = None) -> int:
    from pipelines.evaluation.protocols import PROTOCOLS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="corpus URI (MAESTRO layout, PercePiano, or a library)")
    parser.add_argument("--layout", default="auto", choices=["auto", "maestro", "percepiano", "library"])
    parser.add_argument("--protocol", required=True, choices=PROTOCOLS)
    parser.add_argument("--folds", type=int, default=None,
                        help="number of folds (default: 5 for piece and performer, one per work for work)")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="share of the training side for val")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="folder for fold<k>.csv (local or s3://)")
    args = parser.parse_args(argv)
    if not 0.0 < args.val_fraction < 0.5:
        parser.error("--val-fraction must be in (0, 0.5)")

    from pipelines.evaluation.protocols import protocol_folds
    from pipelines.io import storage
    from pipelines.io.corpora import read_corpus
    from pipelines.io.splits_table import write_splits_table

    recordings = read_corpus(args.input, args.layout)
    folds = protocol_folds(recordings, args.protocol, args.folds, args.val_fraction, args.seed)
    for k, splits in enumerate(folds):
        uri = storage.join(args.out, f"fold{k}.csv")
        write_splits_table(splits, uri)
        counts = Counter(splits.values())
        print(f"{uri}: {counts['train']} train, {counts['val']} val, {counts['test']} test recordings")
    return 0


if __name__ == "__main__":
    _common.run_main(main)
