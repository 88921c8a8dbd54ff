"""Score a library of recordings with a trained checkpoint (incremental: unchanged recordings are skipped).

    python jobs/score.py --input s3://bucket/library/ --out s3://bucket/scores/ --checkpoint s3://bucket/runs/expert/best
    ray job submit --working-dir . -- python jobs/score.py --input ... --out ... --checkpoint ... --gpu

--input is a prefix (listed recursively: audio files, each with an optional same-stem score) or a manifest
(CSV / Parquet: recording_id, audio_uri and/or performance_midi_uri, optional score_uri). Results:
<out>/runs/<run_id>/results/*.parquet and manifest.json, then <out>/latest.json (see README, "Scoring"), and
the HTML report <out>/runs/<run_id>/report/index.html (--no-report to skip it).
Exit status: 0 when every input has a row and the error share is at most --max-error-rate; 1 when the
error share is higher (the run is still published); 2 when the run could not complete.
"""
from __future__ import annotations

import argparse
import logging

import _common


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="library prefix (local or s3://) or a manifest .csv/.parquet")
    parser.add_argument("--out", required=True, help="output prefix (local or s3://)")
    parser.add_argument("--checkpoint", required=True,
                        help="a checkpoint of the training job (model/ directory, Ray checkpoint or a sweep's best/)")
    parser.add_argument("--gpu", action="store_true", help="run the model actors on GPUs (one each)")
    parser.add_argument("--num-actors", type=int, default=None, help="model actors (default: scoring.num_actors)")
    parser.add_argument("--limit", type=int, default=None,
                        help="score only the first N recordings (a trial: published under runs/, not as latest)")
    parser.add_argument("--max-error-rate", type=float, default=0.1,
                        help="exit 1 when more than this share of the inputs end in errors (default 0.1)")
    parser.add_argument("--soundfont", default=None, help="soundfont for rendering performance-MIDI-only entries")
    parser.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                        help="write the HTML report beside the results (<out>/runs/<run_id>/report/index.html)")
    _common.add_config_args(parser, default=None)
    args = parser.parse_args(argv)
    if not 0.0 <= args.max_error_rate <= 1.0:
        parser.error("--max-error-rate must be in [0, 1]")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be >= 1")

    from model.errors import CheckpointError, ConfigError
    from pipelines.config import config_from_dict, load_config
    from pipelines.io.storage import StorageError
    from pipelines.scoring.inputs import InputError
    from pipelines.io.model_files import read_checkpoint_meta
    from pipelines.scoring.publish import read_table, run_uri
    from pipelines.scoring.run import format_summary, run_scoring
    from pipelines.training.run import model_dir_uri

    from pipelines.io import storage
    if not storage.exists(args.input):              # before starting Ray: a wrong path is one line at once
        raise InputError(f"{args.input}: no such file or prefix")
    checkpoint = model_dir_uri(args.checkpoint)
    overrides = list(args.overrides)
    if args.num_actors is not None:
        overrides.append(f"scoring.num_actors={args.num_actors}")
    if args.gpu:
        overrides.append("scoring.use_gpu=true")
    if args.config:
        config = load_config(args.config, overrides)
    else:   # the checkpoint's own config, with scoring settings from the command line
        saved = {k: v for k, v in read_checkpoint_meta(checkpoint)["config"].items()
                 if k not in ("scoring", "score")}   # scoring settings come from here, not from training
        config = load_config(None, overrides, extra=config_from_dict(saved).to_dict())
    _common.start_console("score", args.out, args.verbose)
    print(f"scoring {args.input} with {checkpoint} -> {args.out}", flush=True)
    _common.init_ray(args.address)
    try:
        manifest = run_scoring(args.input, args.out, checkpoint, config, limit=args.limit, soundfont=args.soundfont)
    except (ConfigError, StorageError, InputError, CheckpointError):
        raise                                      # bad input: one line from run_main
    except Exception as exc:                       # the run could not complete: say so, keep the details in the log
        logging.getLogger("pianoeval.score").exception("scoring run failed")
        cause = str(exc).splitlines()[0] if str(exc) else ""
        from pipelines.console import CONSOLE
        CONSOLE.error(f"error: the scoring run could not complete ({type(exc).__name__}: {cause}); "
                      f"{args.out}/latest.json still points at the previous complete run"
                      + (f" (details in {CONSOLE.where})" if CONSOLE.active else ""))
        return 2
    run = run_uri(args.out, manifest["run_id"])
    rows = None
    if manifest["result_files"]:
        import pyarrow as pa
        rows = pa.concat_tables([read_table(storage.join(run, f)) for f in manifest["result_files"]])
        rows = rows.sort_by("recording_id")
    print(format_summary(manifest, args.out, rows))
    if args.report:
        from pipelines.scoring.report import write_run_report
        try:
            print(f"report: {write_run_report(args.out, manifest['run_id'])}")
        except Exception as exc:   # the results stand without their report; `jobs/report.py --run` can retry
            logging.getLogger("pianoeval.score").exception("report failed")
            from pipelines.console import CONSOLE
            CONSOLE.error(f"warning: the HTML report could not be written ({type(exc).__name__}: {exc}); "
                          f"retry with python jobs/report.py --run {run}")
    print(_common.log_line())
    if not manifest["complete"]:
        print(f"error: run {manifest['run_id']} is incomplete: {len(manifest['missing'])} inputs without a row, "
              f"{len(manifest['duplicated'])} with two; not published as latest")
        return 2
    if manifest["error_rate"] > args.max_error_rate:
        print(f"error: {manifest['counts']['error']} of {manifest['inputs']} recordings failed "
              f"({manifest['error_rate']:.0%} > --max-error-rate {args.max_error_rate:.0%}); see {run}/manifest.json")
        return 1
    return 0


if __name__ == "__main__":
    _common.run_main(main)
