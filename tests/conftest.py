"""Shared test fixtures: generated audio/MIDI helpers, a moto S3 server, one local Ray cluster.

Fixtures generate their data; nothing large is stored in the repository.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PERCEPIANO_DIR = ROOT.parent / "shared" / "data" / "percepiano"
FLUIDR3 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
# files with an audio suffix that hold no audio: every reader must refuse them in one line naming the file
NOT_AUDIO_FILES = [
    ("text.wav", b"this is not audio\n" * 50),
    ("text.mp3", b"hello world"),
    ("noise.flac", np.random.default_rng(0).bytes(4096)),
    ("empty.wav", b""),
]
MUSESCORE_SF = Path("/usr/share/sounds/sf3/MuseScore_General.sf3")


def stop_processes_using(marker: str, wait_s: float = 2.0) -> None:
    """SIGTERM, then SIGKILL, every process whose command line mentions `marker` (a private Ray temp dir that
    a test started its own Ray with): stops that Ray by PID, never another one on the machine."""
    import signal
    import time

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids_using(marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(wait_s)


def pids_using(marker: str) -> list[int]:
    """PIDs of the processes (other than this one) whose command line mentions `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="session")
def percepiano_dir() -> Path:
    if not PERCEPIANO_DIR.exists():
        pytest.skip("PercePiano copy not present beside the repository")
    return PERCEPIANO_DIR


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def s3_server():
    """A real HTTP S3 endpoint (moto) on 127.0.0.1, exported through AWS_* variables."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION", "AWS_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1")
    from pipelines.io import storage
    storage._s3_filesystem.cache_clear()
    yield f"http://{host}:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    storage._s3_filesystem.cache_clear()


@pytest.fixture()
def s3_bucket(s3_server):
    """A fresh, empty bucket on the moto server; yields its s3:// URI."""
    import uuid

    from pipelines.io import storage
    name = f"test-{uuid.uuid4().hex[:12]}"
    storage.boto3_client().create_bucket(Bucket=name)
    yield f"s3://{name}"


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory, s3_server):
    """One local Ray cluster for the whole test session (4 logical CPUs on this 2-core machine).
    Started after the moto server so its workers inherit the S3 endpoint and test credentials."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")
    import ray

    tmp = tmp_path_factory.mktemp("ray")
    os.environ["RAY_TMPDIR"] = str(tmp)
    ray.init(address="local", num_cpus=4, include_dashboard=False, _temp_dir=str(tmp),
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}}, logging_level="ERROR")
    yield ray
    ray.shutdown()
