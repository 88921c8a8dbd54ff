"""Search hyperparameters of the training job with Ray Tune (Optuna, seeded, + ASHA early stopping).

    python jobs/tune.py --config tiny --data demo_out/features --storage demo_out/tune --samples 4
    python jobs/tune.py --config mert-v1-95m --data s3://b/features --storage s3://b/tune --samples 32 \\
        --space mert --gpu --num-workers 2 --name mert-lr
    ray job submit --working-dir . -- python jobs/tune.py --config tiny --data s3://b/features \\
        --storage s3://b/tune --samples 16

Each trial is a real training run (jobs/train.py's TorchTrainer) with the sampled values set on the config;
ASHA stops the weak ones after `--grace-period` epochs. A rerun with the same --name resumes the sweep.
Watch it with `tensorboard --logdir <storage>/<name>` (HParams tab) and the Ray dashboard. The best trial's
resolved config and checkpoint land in <storage>/<name>/best/, which jobs/train.py --config, jobs/evaluate.py
--checkpoint and jobs/score.py --checkpoint take as they are. Search spaces: tune/spaces/*.yaml (or your own
YAML: config path -> {loguniform|uniform|quniform|randint|choice: [...]}).
"""
from __future__ import annotations

import argparse

import _common


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="preprocessed features URI (jobs/preprocess.py --out)")
    parser.add_argument("--storage", required=True, help="sweep storage URI (local or s3://)")
    parser.add_argument("--samples", type=int, required=True, help="number of trials")
    parser.add_argument("--name", default=None, help="sweep name (default: <config>-<stage>-sweep); "
                                                     "a rerun with the same name resumes")
    parser.add_argument("--space", default=None,
                        help="a search space in tune/spaces (default, lr, mert) or a YAML file "
                             "(default: mert for pretrained MERT presets, else default)")
    parser.add_argument("--metric", default="val_loss", choices=["val_loss", "val_mae"],
                        help="validation metric to minimise (default: val_loss, what training selects on)")
    parser.add_argument("--max-concurrent", type=int, default=None,
                        help="trials at once (default: as many as the cluster's CPUs/GPUs fit)")
    parser.add_argument("--grace-period", type=int, default=1, help="epochs before ASHA may stop a trial")
    parser.add_argument("--reduction-factor", type=int, default=2, help="ASHA keeps 1/N of trials per rung")
    parser.add_argument("--seed", type=int, default=0, help="Optuna sampler seed")
    parser.add_argument("--stage", choices=["pseudo", "expert"], default=None, help="default: config train.stage")
    parser.add_argument("--init", default=None, help="checkpoint every trial initialises from")
    parser.add_argument("--labels", default=None, help="labels table (CSV/Parquet: recording_id + dimensions)")
    parser.add_argument("--num-workers", type=int, default=None, help="training workers per trial")
    parser.add_argument("--gpu", action="store_true", help="train on GPUs (nccl, fp16 autocast)")
    _common.add_config_args(parser)
    args = parser.parse_args(argv)

    from pipelines.io import storage
    from tune.search import check_sweep, run_search, summary_table

    config = _common.training_config(args)
    name = args.name or f"{config.name}-{config.train.stage}-sweep"
    _common.start_console("tune", storage.join(args.storage, name), args.verbose)
    check_sweep(config, args.data, args.storage, name=name, samples=args.samples, space=args.space,   # before Ray
                metric=args.metric, init=args.init, labels_uri=args.labels)
    _common.init_ray(args.address)
    summary = run_search(config, args.data, args.storage, name=name, samples=args.samples, space=args.space,
                         max_concurrent=args.max_concurrent, metric=args.metric, seed=args.seed,
                         grace_period=args.grace_period, reduction_factor=args.reduction_factor, init=args.init,
                         labels_uri=args.labels, verbose=args.verbose)
    print(summary_table(summary))
    counts: dict[str, int] = {}
    for row in summary["rows"]:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    print(f"{len(summary['rows'])} trials in {summary['seconds']:.0f} s: "
          + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    sweep = summary["sweep"]
    print(f"summary   {storage.join(sweep, 'summary.csv')}  (plot: {storage.join(sweep, 'metric_vs_lr.png')})")
    best = summary.get("best")
    if best:
        print(f"best      trial {best['trial']} ({summary['metric']} {best.get(summary['metric'], float('nan')):.4f})"
              f" -> {storage.join(sweep, 'best')}\n"
              f"          python jobs/evaluate.py --checkpoint {best['model']} --data {args.data}\n"
              f"          python jobs/train.py --config {best['config']} --data {args.data} --storage ...")
    else:
        print("no trial produced a checkpoint: see the log")
    print(f"tensorboard --logdir {sweep}")
    print(_common.log_line())
    return 0 if best else 1


if __name__ == "__main__":
    _common.run_main(main)
