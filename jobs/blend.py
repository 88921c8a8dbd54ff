"""Fit (or refit) the feature model of a trained expert checkpoint, then calibrate its blended scores.

    python jobs/blend.py --checkpoint pp/runs/fold0/<checkpoint>/model --data pp/features \
        --splits pp/splits/piece/fold0.csv [--weight 0.5]

What `jobs/train.py` does after an expert stage with `train.feature_blend` > 0, for a checkpoint trained
without it (or to try another weight): gradient boosting on whole-performance descriptors, fitted on the
train and val splits' recordings (pipelines/training/feature_model.py), is blended into each recording's
score by jobs/evaluate.py and jobs/score.py; the val split then calibrates the blended sigma (its trees
fitted on train alone). --weight 0 removes the feature model (the network's scores alone) and recalibrates.
Pass the --splits and --labels the checkpoint was trained with.
"""
from __future__ import annotations

import argparse

import _common


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint URI (a model/ directory or a Ray checkpoint)")
    parser.add_argument("--data", required=True, help="preprocessed features URI (with the perf_features column)")
    parser.add_argument("--splits", default=None, help="the splits table the checkpoint was trained with")
    parser.add_argument("--labels", default=None, help="the labels table the checkpoint was trained with")
    parser.add_argument("--weight", type=float, default=0.5,
                        help="the feature model's share of each recording's score, 0..1 (default 0.5; 0: remove it)")
    parser.add_argument("--rank", type=int, default=0,
                        help="project the trees' predictions onto this many leading principal components of the "
                             "training ratings (train.feature_rank; default 0: each dimension's trees as they are)")
    parser.add_argument("--seed", type=int, default=0)
    _common.add_verbose_arg(parser)
    args = parser.parse_args(argv)
    if not 0.0 <= args.weight <= 1.0:
        parser.error(f"--weight must be in [0, 1], got {args.weight}")
    if args.rank < 0:
        parser.error(f"--rank must be >= 0, got {args.rank}")

    from pipelines.io import storage
    from pipelines.io.splits_table import read_splits_table
    from pipelines.training.feature_model import remove_feature_model
    from pipelines.training.run import (_labels_lookup, calibrate_best, fit_feature_model_best, model_dir_uri)

    checkpoint = model_dir_uri(args.checkpoint)
    _common.start_console("blend", storage.parent(checkpoint), args.verbose)
    splits = read_splits_table(args.splits) if args.splits else None
    lookup = None
    if args.labels:
        from pipelines.io.model_files import read_checkpoint_meta
        from model.schema import DimensionSchema
        names = DimensionSchema.from_dict(read_checkpoint_meta(checkpoint)["schema"]).names
        lookup = _labels_lookup(args.labels, names)
    if args.weight > 0:
        record = fit_feature_model_best(checkpoint, args.data, args.weight, labels_lookup=lookup, splits=splits,
                                        seed=args.seed, rank=args.rank)
        if record and "error" in record:
            raise SystemExit(f"{checkpoint}: the feature model was not fitted: {record['error']}")
    elif remove_feature_model(checkpoint):
        print(f"{checkpoint}: feature model removed; its scores are the network's alone", flush=True)
    calibration = calibrate_best(checkpoint, args.data, labels_lookup=lookup, splits=splits)
    if calibration and calibration.get("uri"):
        print(f"calibrated on {calibration['recordings']} val recordings: ECE {calibration['ece_before_mean']:.3f} "
              f"-> {calibration['ece_after_mean']:.3f} ({calibration['uri']})", flush=True)
    elif calibration:
        print(f"calibration: {calibration.get('skipped') or calibration.get('error')}", flush=True)
    print(_common.log_line())
    return 0


if __name__ == "__main__":
    _common.run_main(main)
