"""Write the HTML report of a scoring run: an index page and one page per recording, viewable offline.

    python jobs/report.py --run s3://bucket/scores/                        # the published latest run
    python jobs/report.py --run s3://bucket/scores/runs/<run_id> --out ./report

--run is a scoring output prefix (its latest.json names the run) or a run directory <out>/runs/<run_id>.
Pages go to <out>/runs/<run_id>/report/ unless --out names another place (local or s3://). Prints the
index page's URI.
"""
from __future__ import annotations

import argparse

import _common


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="scoring output prefix or run directory (local or s3://)")
    parser.add_argument("--out", default=None, help="where to write the report (default: <run>/report/)")
    args = parser.parse_args(argv)

    from pipelines.scoring.report import locate_run, write_run_report

    out_uri, run_id = locate_run(args.run)
    print(write_run_report(out_uri, run_id, report_uri=args.out))
    return 0


if __name__ == "__main__":
    _common.run_main(main)
