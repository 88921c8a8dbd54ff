"""Generate the demo corpus: real scores, performances with known deviations, rendered audio, labels.

    python jobs/make_corpus.py --out URI [--pieces N] [--takes N] [--soundfont PATH] [--seed S]
                               [--max-seconds T]

See pipelines/demo_corpus/pieces.py, deviations.py and labels.py for the pieces, the deviations and the
label formula.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.demo_corpus.generate import DEFAULT_MAX_SECONDS, make_corpus  # noqa: E402
from pipelines.demo_corpus.pieces import DEMO_PIECES  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder: local path or s3://bucket/prefix")
    parser.add_argument("--pieces", type=int, default=3, help=f"number of pieces, 1..{len(DEMO_PIECES)}")
    parser.add_argument("--takes", type=int, default=4, help="performances per piece (the first is clean)")
    parser.add_argument("--soundfont", default=None, help="soundfont (.sf2/.sf3); default FluidR3_GM")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                        help="longest excerpt per piece, cut on bar lines")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    manifest = make_corpus(args.out, pieces=args.pieces, takes=args.takes, soundfont=args.soundfont,
                           seed=args.seed, max_seconds=args.max_seconds,
                           log=None if args.quiet else print)
    print(f"wrote {manifest['n_recordings']} recordings to {args.out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
