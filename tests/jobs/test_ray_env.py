"""jobs/_common.py's Ray runtime env: no AWS credential ever goes into it (Ray shows a runtime env's env_vars in
the dashboard, the state API and job details); a local Ray's workers still get the driver's credentials because
they inherit its environment."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jobs._common import WORKER_ENV_PASSTHROUGH, worker_env_vars  # noqa: E402

SECRETS = {"AWS_ACCESS_KEY_ID": "AKIATESTACCESSKEY", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value-for-the-test",
           "AWS_SESSION_TOKEN": "session-token-for-the-test"}
SETTINGS = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "eu-west-1",
            "AWS_DEFAULT_REGION": "eu-west-1", "AWS_PROFILE": "pianoeval"}


def test_worker_env_vars_pass_settings_and_never_credentials():
    environ = {**SECRETS, **SETTINGS, "AWS_SHARED_CREDENTIALS_FILE": "/home/x/.aws/credentials",
               "AWS_SECURITY_TOKEN": "legacy-token", "PYTHONPATH": "/elsewhere", "HOME": "/home/x"}
    env = worker_env_vars(environ)
    assert {k: env[k] for k in SETTINGS} == SETTINGS
    assert not set(SECRETS) & set(env)
    assert not any(value in json.dumps(env) for value in (*SECRETS.values(), "legacy-token"))
    assert set(env) <= set(WORKER_ENV_PASSTHROUGH) | {"PYTHONPATH"}
    assert env["PYTHONPATH"] == os.pathsep.join([str(ROOT), "/elsewhere"])


def test_worker_env_vars_leave_out_unset_and_empty_settings():
    assert worker_env_vars({"AWS_REGION": "", "AWS_SECRET_ACCESS_KEY": "x"}) == {"PYTHONPATH": str(ROOT)}


_PROBE = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from jobs._common import init_ray
import ray

init_ray(num_cpus=1, dashboard=False)

@ray.remote
def probe():
    env = ray.get_runtime_context().runtime_env.get("env_vars") or {}
    return {"worker": {k: v for k, v in os.environ.items() if k.startswith("AWS_")}, "runtime_env": env}

out = ray.get(probe.remote())
out["driver_runtime_env"] = ray.get_runtime_context().get_runtime_env_string()
print("RESULT " + json.dumps(out))
ray.shutdown()
"""


def test_local_ray_workers_inherit_credentials_that_the_runtime_env_does_not_show():
    """A fresh process (the session's shared cluster would be reused otherwise) starts its local Ray through
    init_ray with credentials in its environment: a task sees them in os.environ, inherited, while neither the
    task's nor the driver's runtime env holds them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS", "RAY_JOB_ID"))}
    with tempfile.TemporaryDirectory(prefix="pe-rayenv-", dir="/tmp") as tmp:   # Ray's socket paths must be short
        env.update(SECRETS, **SETTINGS, RAY_TMPDIR=tmp, RAY_AUTH_MODE="disabled", HOME=tmp)
        done = subprocess.run([sys.executable, "-c", _PROBE, str(ROOT)], env=env, cwd=tmp,
                              capture_output=True, text=True, timeout=180)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert {k: result["worker"].get(k) for k in SECRETS} == SECRETS          # inherited by the worker
    assert {k: result["worker"].get(k) for k in SETTINGS} == SETTINGS
    assert result["runtime_env"]["AWS_ENDPOINT_URL"] == SETTINGS["AWS_ENDPOINT_URL"]
    for shown in (json.dumps(result["runtime_env"]), result["driver_runtime_env"]):
        assert not any(name in shown for name in SECRETS), shown
        assert not any(value in shown for value in SECRETS.values()), shown
