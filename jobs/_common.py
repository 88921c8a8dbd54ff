"""Shared bootstrap for the job entrypoints: import path, the console and its log file, Ray start-up,
one-line errors."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Mapping

ROOT = Path(__file__).resolve().parents[1]
# `python jobs/X.py` and `ray job submit --working-dir .`: the repository first, so that its packages win over
# the job scripts of the same name beside this file (`import tune` is tune/, not jobs/tune.py)
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p != str(ROOT)]
# workers' progress lines (pipelines/console.py) look alike: keep Ray's log de-duplication off them; Ray reads
# this when it is imported, which the jobs do after this module
os.environ.setdefault("RAY_DEDUP_LOGS_ALLOW_REGEX", "PIANOEVAL-PROGRESS")


def add_config_args(parser: argparse.ArgumentParser, default: str = "tiny") -> None:
    from pipelines.config import available_presets

    parser.add_argument("--config", default=default,
                        help=f"a preset ({', '.join(available_presets())}) or a YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    parser.add_argument("--address", default=None,
                        help="Ray address (default: RAY_ADDRESS when set, e.g. under `ray job submit`; "
                             "else a local Ray started for this job)")
    add_verbose_arg(parser)


def training_config(args: argparse.Namespace):
    """The config of a training or tuning job: --config, then its --set overrides, then the job's own
    --stage, --num-workers and --gpu."""
    from pipelines.config import load_config

    overrides = list(args.overrides)
    if args.stage:
        overrides.append(f"train.stage={args.stage}")
    if args.num_workers is not None:
        overrides.append(f"train.num_workers={args.num_workers}")
    if args.gpu:
        overrides.append("train.use_gpu=true")
    config = load_config(args.config, overrides)
    if config.train.stage == "pseudo" and not config.schema().pseudo_names:
        # pseudo-labels exist for seed10's technical dimensions only: a pseudo stage under another schema
        # trains those, and its checkpoint initialises the expert run across schemas (--init)
        print(f"pseudo stage: {config.schema().name} has no pseudo-labelled dimensions; training seed10's "
              "technical ones (the expert run's --init carries the trunk over to its schema)", flush=True)
        config = load_config(args.config, [*overrides, "dimensions=seed10"])
    return config


def add_verbose_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's progress bars, worker output and library warnings on the console "
                             "(by default they go to the job's log file, <out>/logs/)")


def start_console(job: str, out_uri: str | None, verbose: bool = False) -> None:
    """Stage lines and progress on the console; Ray's and the libraries' output in <out_uri>/logs/
    (pipelines/console.py). Named in the job's last line."""
    from pipelines.console import CONSOLE

    CONSOLE.start(job, out_uri, verbose=verbose)


def log_line() -> str:
    from pipelines.console import CONSOLE

    return f"log: {CONSOLE.where}" if CONSOLE.active else ""


# Settings Ray's workers may need to reach S3 that are not secrets. Ray shows a runtime env's env_vars in the
# dashboard, the state API and job details, so credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
# AWS_SESSION_TOKEN, ...) never go there: a local Ray started by this process passes its whole environment to
# its workers (they are children of its raylet), and a cluster's nodes use their own AWS credential chain
# (EC2 instance profile, EKS IRSA; see cluster/README.md).
WORKER_ENV_PASSTHROUGH = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE")


def worker_env_vars(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The env_vars of the jobs' Ray runtime env: the non-secret S3 settings of WORKER_ENV_PASSTHROUGH that are
    set, and PYTHONPATH with the repository first. Never a credential."""
    environ = os.environ if environ is None else environ
    env_vars = {k: environ[k] for k in WORKER_ENV_PASSTHROUGH if environ.get(k)}
    env_vars["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), environ.get("PYTHONPATH", "")) if p)
    return env_vars


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = True) -> None:
    """Join the cluster named by --address / RAY_ADDRESS, or start a local one for this process
    (with the dashboard on 127.0.0.1, which Ray Train's state checks and the user both want)."""
    import ray

    from pipelines.console import CONSOLE

    if ray.is_initialized():
        return
    if CONSOLE.active and not CONSOLE.verbose:   # our own progress lines replace Ray Data's bars
        import ray.data
        ray.data.DataContext.get_current().enable_progress_bars = False
    target = address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": worker_env_vars()}
    if target:
        ray.init(address=target, runtime_env=None if os.environ.get("RAY_JOB_ID") else runtime_env,
                 logging_level=logging.WARNING)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")   # a private local cluster needs no token
        context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard,
                           dashboard_host="127.0.0.1", runtime_env=runtime_env, logging_level=logging.WARNING)
        if getattr(context, "dashboard_url", None):
            print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)


def run_main(main: Callable[[list[str] | None], int]) -> None:
    """Run a job's main; known user errors print one line and exit 2, anything else one line and exit 1,
    with the traceback in the job's log file."""
    from model.errors import ConfigError
    from pipelines.console import CONSOLE
    from pipelines.io.storage import StorageError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        code = main(None)
    except (ConfigError, StorageError, FileNotFoundError, ValueError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        CONSOLE.error(f"error: {text}")
        code = 2
    except KeyboardInterrupt:
        CONSOLE.error("interrupted")
        code = 130
    except Exception as exc:   # not foreseen: one line here, the traceback in the log
        CONSOLE.exception(exc)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        where = f" (traceback in {CONSOLE.where})" if CONSOLE.active else ""
        CONSOLE.error(f"error: {type(exc).__name__}: {text}{where}")
        code = 1
    CONSOLE.close()
    sys.exit(code)
