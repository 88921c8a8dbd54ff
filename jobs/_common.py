"""Shared bootstrap for the job entrypoints: import path, Ray start-up, one-line errors."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # `python jobs/X.py` and `ray job submit --working-dir .`
    sys.path.insert(0, str(ROOT))


def add_config_args(parser: argparse.ArgumentParser, default: str = "tiny") -> None:
    parser.add_argument("--config", default=default,
                        help="a preset (tiny, mert-v1-95m, mert-v1-330m, demo) or a YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    parser.add_argument("--address", default=None,
                        help="Ray address (default: RAY_ADDRESS when set, e.g. under `ray job submit`; "
                             "else a local Ray started for this job)")


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = True) -> None:
    """Join the cluster named by --address / RAY_ADDRESS, or start a local one for this process
    (with the dashboard on 127.0.0.1, which Ray Train's state checks and the user both want)."""
    import ray

    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS")
    env_vars = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}   # S3 endpoint for workers
    env_vars["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    runtime_env = {"env_vars": env_vars}
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
    """Run a job's main; known user errors print one line and exit 2 instead of a traceback."""
    from model.errors import ConfigError
    from pipelines.io.storage import StorageError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        code = main(None)
    except (ConfigError, StorageError, FileNotFoundError, ValueError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {text}", file=sys.stderr)
        code = 2
    sys.exit(code)
