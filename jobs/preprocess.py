"""Preprocess a corpus into Parquet feature shards on Ray Data.

    python jobs/preprocess.py --input demo_out/corpus --out demo_out/features [--config tiny]
    ray job submit --working-dir . -- python jobs/preprocess.py --input s3://b/corpus --out s3://b/features

Every input recording yields rows: its segments, or one error row naming the problem. Exit status 0 when
the share of failed recordings is at most --max-error-rate, 1 above it, 2 when a recording yielded no row.
"""
from __future__ import annotations

import argparse

import _common


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="corpus URI (MAESTRO layout, PercePiano, or a library)")
    parser.add_argument("--out", required=True, help="output URI (local directory or s3://bucket/prefix)")
    parser.add_argument("--layout", default="auto", choices=["auto", "maestro", "percepiano", "library"])
    parser.add_argument("--num-actors", type=int, default=None, help="preprocessing actors (default: config)")
    parser.add_argument("--soundfont", default=None, help="soundfont for recordings rendered from MIDI")
    parser.add_argument("--max-error-rate", type=float, default=0.1,
                        help="exit 1 when more than this share of the recordings failed (default 0.1); the "
                             "features of the others are written either way")
    _common.add_config_args(parser)
    args = parser.parse_args(argv)
    if not 0.0 <= args.max_error_rate <= 1.0:
        parser.error("--max-error-rate must be in [0, 1]")

    from pipelines.config import load_config
    from pipelines.preprocess import format_summary, run_preprocess, verdict

    config = load_config(args.config, args.overrides)
    _common.start_console("preprocess", args.out, args.verbose)
    print(f"preprocessing {args.input} -> {args.out}", flush=True)
    _common.init_ray(args.address)
    manifest = run_preprocess(args.input, args.out, config, layout=args.layout, num_actors=args.num_actors,
                              soundfont=args.soundfont)
    print(format_summary(manifest, args.out))
    print(_common.log_line())
    code, reason = verdict(manifest, args.max_error_rate)
    if reason:
        print(f"error: {reason}; see {args.out}/manifest.json")
        return code
    return 0


if __name__ == "__main__":
    _common.run_main(main)
