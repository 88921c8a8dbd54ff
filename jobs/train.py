"""Train the assessment model on Ray Train.

    python jobs/train.py --config tiny --data demo_out/features --storage demo_out/runs --stage pseudo
    python jobs/train.py --config tiny --data demo_out/features --storage demo_out/runs --stage expert \\
        --init demo_out/runs/pseudo/<checkpoint> --name expert
    ray job submit --working-dir . -- python jobs/train.py --config mert-v1-95m --data s3://b/features \\
        --storage s3://b/runs --gpu --num-workers 4

A rerun with the same --name resumes from the latest checkpoint (one with other settings is refused: use
--restart or a new --name). A NaN or inf loss stops the run in one line, its best checkpoint intact. At the
end the best checkpoint is evaluated on the test split against baselines (<storage>/<name>/evaluation).
Everything not on the command line is in the config (--set section.key=value to override).
"""
from __future__ import annotations

import argparse

import _common


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="preprocessed features URI (jobs/preprocess.py --out)")
    parser.add_argument("--storage", required=True, help="checkpoint/log storage URI (local or s3://)")
    parser.add_argument("--stage", choices=["pseudo", "expert"], default=None, help="default: config train.stage")
    parser.add_argument("--init", default=None, help="checkpoint to initialise from (e.g. the pseudo stage's best)")
    parser.add_argument("--labels", default=None, help="labels table (CSV/Parquet: recording_id + dimensions)")
    parser.add_argument("--splits", default=None,
                        help="splits table (CSV: recording_id,split; jobs/splits.py writes a protocol's folds) "
                             "replacing the feature set's train/val/test")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--gpu", action="store_true", help="train on GPUs (nccl, fp16 autocast)")
    parser.add_argument("--name", default=None, help="run name (default: <config>-<stage>)")
    parser.add_argument("--restart", action="store_true",
                        help="start the run of this --name over (its checkpoints are removed) instead of resuming it")
    parser.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                        help="skip the final evaluation of the best checkpoint on the test split")
    _common.add_config_args(parser)
    args = parser.parse_args(argv)

    from pipelines.training.run import check_rerun, run_fingerprint, run_training

    config = _common.training_config(args)
    name = args.name or f"{config.name}-{config.train.stage}"
    from pipelines.io import storage
    _common.start_console("train", storage.join(args.storage, name), args.verbose)
    print(f"training {name} ({config.train.stage} stage, {config.schema().name}, {config.train.num_workers} "
          f"workers) on {args.data}", flush=True)
    if not args.restart:       # a rerun with other settings is refused before a Ray is started for it
        check_rerun(storage.join(args.storage, name),
                    run_fingerprint(config, args.data, args.init, args.labels, args.splits))
    _common.init_ray(args.address)
    summary = run_training(config, args.data, args.storage, name=name, init=args.init, labels_uri=args.labels,
                           restart=args.restart, splits_uri=args.splits)
    print(training_summary(summary))
    if args.evaluate and summary["best_checkpoint"]:
        from pipelines.evaluation.evaluate import comparison_table, evaluate_checkpoint
        from pipelines.io import storage
        from pipelines.io.splits_table import read_splits_table

        out = storage.join(summary["run_dir"], "evaluation")
        result = evaluate_checkpoint(summary["best_checkpoint"], args.data, out,
                                     splits=read_splits_table(args.splits) if args.splits else None)
        print(comparison_table(result))
        print(f"evaluation written to {out}")
    print(_common.log_line())
    return 0


def training_summary(summary: dict) -> str:
    """A few lines: the best epoch and its metrics, where the checkpoints and TensorBoard logs are."""
    m = summary.get("best_metrics") or {}
    last = (summary.get("final_metrics") or {}).get("epoch", "?")
    return (f"{summary['name']}: best epoch {m.get('epoch', '?')} of {last}"
            f" (val loss {m.get('val_loss', float('nan')):.3f}, val MAE {m.get('val_mae', float('nan')):.1f})\n"
            f"  best checkpoint    {summary['best_checkpoint']}\n  latest checkpoint  {summary['latest_checkpoint']}\n"
            f"  tensorboard        tensorboard --logdir {summary['tensorboard']}")


if __name__ == "__main__":
    _common.run_main(main)
