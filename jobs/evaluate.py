"""Evaluate a checkpoint against baselines on a split of preprocessed features.

    python jobs/evaluate.py --checkpoint demo_out/runs/expert/<checkpoint>/model --data demo_out/features
"""
from __future__ import annotations

import argparse

import _common


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint URI (a model/ directory or a Ray checkpoint)")
    parser.add_argument("--data", required=True, help="preprocessed features URI")
    parser.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                        help="which recordings to evaluate (all: the whole feature set, e.g. a composition the "
                             "checkpoint never saw; the baselines still fit on its train split)")
    parser.add_argument("--splits", default=None,
                        help="a splits table (recording_id,split CSV; jobs/splits.py writes them) replacing the "
                             "feature set's splits")
    parser.add_argument("--target", default=None, choices=["pseudo", "expert"],
                        help="compare with pseudo-labels or expert labels (default: the checkpoint's stage)")
    parser.add_argument("--audio-only", action="store_true", help="ablation: ignore the score branch")
    parser.add_argument("--out", default=None, help="where to write evaluation.json/.md and PNGs "
                                                    "(default: <checkpoint>/../evaluation-<split>)")
    _common.add_verbose_arg(parser)
    args = parser.parse_args(argv)

    from pipelines.evaluation.evaluate import comparison_table, evaluate_checkpoint
    from pipelines.io import storage
    from pipelines.training.run import model_dir_uri

    checkpoint = model_dir_uri(args.checkpoint)
    out = args.out or storage.join(storage.parent(checkpoint), f"evaluation-{args.split}")
    _common.start_console("evaluate", out, args.verbose)
    from pipelines.io.splits_table import read_splits_table

    splits = read_splits_table(args.splits) if args.splits else None
    summary = evaluate_checkpoint(checkpoint, args.data, out, split=args.split, target=args.target,
                                  audio_only=True if args.audio_only else None, splits=splits)
    print(f"{summary['recordings']} recordings, target {summary['target']}")
    print(comparison_table(summary))
    print(f"written to {out}")
    print(_common.log_line())
    return 0


if __name__ == "__main__":
    _common.run_main(main)
