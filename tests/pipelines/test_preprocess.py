"""The Ray Data preprocessing job on a local cluster: real corpus, a corrupt audio file and a broken
MIDI file in the input, local and S3 outputs, idempotent reruns."""
from __future__ import annotations

import csv
import json
import os

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines.config import load_config
from pipelines.features.rows import SEGMENT_SCHEMA
from pipelines.io import storage


@pytest.fixture(scope="module")
def corpus_with_bad_files(tmp_path_factory):
    from pipelines.demo_corpus.generate import make_corpus

    root = tmp_path_factory.mktemp("corpus")
    corpus = str(root / "corpus")
    make_corpus(corpus, pieces=3, takes=2, seed=0, max_seconds=12)
    table = root / "corpus" / "maestro-v3.0.0.csv"
    rows = list(csv.DictReader(open(table)))
    # a corrupt audio file and a broken performance MIDI, as extra recordings of the first piece
    (root / "corpus" / "corrupt.flac").write_bytes(b"fLaC" + b"\x00garbage" * 100)
    (root / "corpus" / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01garbage")
    bad_audio = dict(rows[0], recording_id="bad/audio", audio_filename="corrupt.flac")
    bad_midi = dict(rows[1], recording_id="bad/midi", midi_filename="broken.mid")
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + [bad_audio, bad_midi])
    return corpus, len(rows)


def _config():
    return load_config("tiny", ["data.augment.copies=1", "data.num_actors=2", "data.num_cpus_per_task=1"])


@pytest.mark.slow
def test_preprocess_job_records_errors_and_reruns_without_duplicates(ray_cluster, corpus_with_bad_files, tmp_path):
    from pipelines.preprocess import read_status_table, run_preprocess

    corpus, n_good = corpus_with_bad_files
    out = str(tmp_path / "features")
    manifest = run_preprocess(corpus, out, _config())
    assert manifest["input_recordings"] == n_good + 2
    assert manifest["ok_recordings"] == n_good
    assert manifest["error_recordings"] == 2 and manifest["missing_recordings"] == []
    errors = {e["recording_id"]: e["error"] for e in manifest["errors"]}
    assert "corrupt.flac" in errors["bad/audio"] and "\n" not in errors["bad/audio"]
    assert "broken.mid" in errors["bad/midi"]
    assert manifest["augmented_segments"] > 0
    # the job's exit status: a failure share above --max-error-rate fails the run, in one line
    from pipelines.preprocess import format_summary, verdict
    share = 2 / (n_good + 2)
    assert verdict(manifest, max_error_rate=share) == (0, None)
    code, reason = verdict(manifest, max_error_rate=share / 2)
    assert code == 1 and reason.startswith(f"2 of {n_good + 2} recordings failed")
    lost = dict(manifest, missing_recordings=["good/0"])
    assert verdict(lost, max_error_rate=1.0)[0] == 2
    assert "1 recordings produced no row" in format_summary(lost, out) and "good/0" in format_summary(lost, out)
    # the Parquet loads with plain pyarrow, with the documented columns
    from pipelines.preprocess import published_segments
    table = pq.read_table(published_segments(out))
    assert table.schema.names == SEGMENT_SCHEMA.names
    ok = table.filter(pc.equal(table["status"], "ok"))
    assert ok.num_rows == manifest["segments"] + manifest["augmented_segments"]
    assert set(ok["split"].to_pylist()) == {"train", "val", "test"}
    assert all(n > 0 for n in ok["n_notes"].to_pylist())
    assert all(json.loads(p) for p in ok["pseudo_json"].to_pylist())
    assert not any(a for a, s in zip(ok["augment"].to_pylist(), ok["split"].to_pylist()) if s != "train")
    # a run that died before publishing leaves shards no reader sees
    before = read_status_table(out).num_rows
    crashed = tmp_path / "features" / "segments-20261126T000000Z-dead00"
    crashed.mkdir()
    (crashed / "part-0.parquet").write_bytes(b"half a file")
    assert read_status_table(out).num_rows == before
    # rerunning onto the same output replaces, never duplicates; it publishes a new directory and removes
    # the earlier run's and the dead run's
    again = run_preprocess(corpus, out, _config())
    assert read_status_table(out).num_rows == before
    assert again["segments"] == manifest["segments"]
    assert again["segments_dir"] != manifest["segments_dir"]
    assert sorted(p.name for p in (tmp_path / "features").glob("segments*")) == [again["segments_dir"]]


def test_readers_follow_the_manifest_and_refuse_a_feature_set_that_never_finished(tmp_path):
    from pipelines.io.storage import StorageError
    from pipelines.preprocess import published_segments

    out = tmp_path / "features"
    out.mkdir()
    with pytest.raises(StorageError, match="no manifest.json; did jobs/preprocess.py finish"):
        published_segments(str(out))
    (out / "segments").mkdir()                                   # written before manifests named their shards
    assert published_segments(str(out)) == str(out / "segments")
    (out / "manifest.json").write_text(json.dumps({"segments_dir": "segments-run2"}))
    assert published_segments(str(out)) == str(out / "segments-run2")
    (out / "manifest.json").write_text(json.dumps({"segments_dir": "../elsewhere"}))
    with pytest.raises(StorageError, match="not a directory name"):
        published_segments(str(out))
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(StorageError, match="not a readable manifest"):
        published_segments(str(out))


@pytest.mark.slow
def test_preprocess_job_reads_and_writes_s3(ray_cluster, corpus_with_bad_files, s3_bucket):
    from pipelines.preprocess import read_segments_table, run_preprocess

    corpus, n_good = corpus_with_bad_files
    storage.upload_dir(corpus, f"{s3_bucket}/corpus")
    manifest = run_preprocess(f"{s3_bucket}/corpus", f"{s3_bucket}/features", _config())
    assert manifest["ok_recordings"] == n_good and manifest["error_recordings"] == 2
    saved = json.loads(storage.read_text(f"{s3_bucket}/features/manifest.json"))
    assert saved["segments"] == manifest["segments"]
    table = read_segments_table(f"{s3_bucket}/features")
    assert table.num_rows == manifest["segments"] + manifest["augmented_segments"]
    assert all(uri.startswith(f"{s3_bucket}/corpus/") for uri in table["source_uri"].to_pylist())


def test_preprocess_job_cli_reports_a_wrong_input_in_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, str(root / "jobs" / "preprocess.py"), "--input",
                             str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "nowhere" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_recording_that_kills_its_worker_becomes_an_error_row_and_the_job_finishes(ray_cluster,
                                                                                      corpus_with_bad_files,
                                                                                      tmp_path):
    """A worker dies on one recording (as a decoder segfault or the OOM killer would end it): bounded retries,
    then an error row naming its file; every other recording is preprocessed and the feature set published."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import ray

    root = Path(__file__).resolve().parents[2]
    corpus, n_good = corpus_with_bad_files
    mine = tmp_path / "corpus"
    shutil.copytree(corpus, mine)
    table = mine / "maestro-v3.0.0.csv"
    rows = list(csv.DictReader(open(table)))
    with open(table, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(rows[0])).writerow(dict(rows[0], recording_id="crash me"))
    hook = Path(__file__).parent / "crash_hook_preprocess"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "features"
    result = subprocess.run([sys.executable, str(root / "jobs" / "preprocess.py"), "--input", str(mine), "--out",
                             str(out), "--address", ray.get_runtime_context().gcs_address, "--max-error-rate", "0.9",
                             "--set", "data.augment.copies=0"],
                            cwd=str(root), capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input_recordings"] == n_good + 3 and manifest["missing_recordings"] == []
    assert manifest["ok_recordings"] == n_good and manifest["error_recordings"] == 3
    errors = {e["recording_id"]: e["error"] for e in manifest["errors"]}
    assert "the worker died on it 2 times" in errors["crash me"]
    assert rows[0]["audio_filename"] in errors["crash me"]
    assert errors["crash me"] in result.stdout


_SMALL_STORE_SCRIPT = """
import json, sys
import ray
sys.path.insert(0, sys.argv[1])
ray.init(address="local", num_cpus=2, object_store_memory=int(sys.argv[5]), include_dashboard=False,
         _temp_dir=sys.argv[4])
from pipelines.config import load_config
from pipelines.preprocess import run_preprocess
manifest = run_preprocess(sys.argv[2], sys.argv[3], load_config("tiny"))
print("SUMMARY " + json.dumps({k: manifest[k] for k in ("input_recordings", "ok_recordings", "error_recordings",
                                                      "missing_recordings", "segments_dir")}))
"""


@pytest.mark.slow
def test_preprocessing_with_its_defaults_finishes_on_two_cpus_when_its_output_overflows_the_object_store(
        tmp_path):
    """The PercePiano stall: on 2 CPUs the actors held both, the Parquet writes waited for one, finished rows
    filled the object store and nothing moved. A corpus whose features are several times the object store
    goes through with default settings on its own 2-CPU Ray."""
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from pipelines.demo_corpus.generate import make_corpus
    from tests.conftest import stop_processes_using

    root = Path(__file__).resolve().parents[2]
    corpus = tmp_path / "corpus"
    make_corpus(str(corpus), pieces=1, takes=2, seed=0, max_seconds=30)
    table = corpus / "maestro-v3.0.0.csv"
    rows = list(csv.DictReader(open(table)))
    copies = [dict(rows[i % len(rows)], recording_id=f"copy {i}") for i in range(40)]
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(copies)
    (corpus / "labels.csv").unlink()          # its ids are the originals'; the copies go unlabelled
    store = 75 * 2 ** 20                     # Ray's smallest object store
    ray_dir = tempfile.mkdtemp(prefix="pe-store-", dir="/tmp")
    out = tmp_path / "features"
    try:
        result = subprocess.run([sys.executable, "-c", _SMALL_STORE_SCRIPT, str(root), str(corpus), str(out),
                                 ray_dir, str(store)], cwd=str(root), capture_output=True, text=True, timeout=900,
                                env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    finally:
        stop_processes_using(ray_dir)
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("SUMMARY "))[8:])
    assert summary["ok_recordings"] == 40 and summary["missing_recordings"] == []
    written = sum(p.stat().st_size for p in (out / summary["segments_dir"]).glob("*.parquet"))
    assert written > 3 * store, written


@pytest.mark.slow
def test_a_job_killed_midway_leaves_the_published_features_and_a_rerun_accounts_for_every_input_once(
        ray_cluster, corpus_with_bad_files, tmp_path):
    """Fault: the driver is killed (SIGKILL) while its actors work. Readers still see the previous run's
    features, unchanged; the rerun publishes every input exactly once (no lost, no duplicated rows)."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import ray

    from pipelines.preprocess import published_segments, read_status_table, run_preprocess

    root = Path(__file__).resolve().parents[2]
    corpus, n_good = corpus_with_bad_files
    out = str(tmp_path / "features")
    first = run_preprocess(corpus, out, _config())
    before = read_status_table(out).sort_by([("recording_id", "ascending"), ("segment_index", "ascending"),
                                             ("augment", "ascending")])
    cmd = [sys.executable, str(root / "jobs" / "preprocess.py"), "--input", corpus, "--out", out, "--address",
           ray.get_runtime_context().gcs_address, "--max-error-rate", "0.5"]
    job = subprocess.Popen(cmd, cwd=str(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in job.stdout:                          # killed once its actors have begun
            if "recordings preprocessed" in line:
                break
        job.send_signal(signal.SIGKILL)
    finally:
        job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL
    assert published_segments(out) == storage.join(out, first["segments_dir"])
    assert read_status_table(out).sort_by([("recording_id", "ascending"), ("segment_index", "ascending"),
                                           ("augment", "ascending")]).equals(before)
    rerun = subprocess.run(cmd, cwd=str(root), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    manifest = json.loads(storage.read_text(storage.join(out, "manifest.json")))
    assert manifest["segments_dir"] != first["segments_dir"] and manifest["missing_recordings"] == []
    rows = read_status_table(out).to_pylist()
    keys = [(r["recording_id"], r["segment_index"], r["augment"]) for r in rows]
    assert len(keys) == len(set(keys)) == before.num_rows
    assert {r["recording_id"] for r in rows} == {r["recording_id"] for r in before.to_pylist()}
    assert len({r["recording_id"] for r in rows}) == n_good + 2
    assert sorted(p.name for p in (tmp_path / "features").glob("segments*")) == [manifest["segments_dir"]]


@pytest.mark.slow
def test_an_s3_outage_is_ridden_out_or_stops_the_run_unpublished_and_a_rerun_accounts_for_every_input_once(
        ray_cluster, corpus_with_bad_files, s3_bucket):
    """Fault: the S3 server stops mid-run. Down for good: the run stops with one line after
    data.storage_retry_s and publishes nothing. Down for a few seconds: the actors retry, and the run publishes
    every input exactly once, the outage recorded as retries and never as error rows."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    import ray
    from moto.server import ThreadedMotoServer

    from pipelines.preprocess import read_status_table

    root = Path(__file__).resolve().parents[2]
    corpus, n_good = corpus_with_bad_files
    storage.upload_dir(corpus, f"{s3_bucket}/corpus")        # moto's state is shared by its servers
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    out = f"{s3_bucket}/features"
    cmd = [sys.executable, str(root / "jobs" / "preprocess.py"), "--input", f"{s3_bucket}/corpus", "--out", out,
           "--address", ray.get_runtime_context().gcs_address, "--num-actors", "1", "--max-error-rate", "0.5",
           "--set", "data.augment.copies=0"]
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://{host}:{port}", "PYTHONUNBUFFERED": "1"}

    def run(retry_s: float, outage_s: float | None):
        """The job through the private endpoint; the server stops at its first finished recording and comes
        back after outage_s (None: never)."""
        nonlocal server
        job = subprocess.Popen(cmd + ["--set", f"data.storage_retry_s={retry_s}"], cwd=str(root), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = []
        try:
            for line in job.stdout:
                lines.append(line)
                if "recordings preprocessed" in line:
                    break
            server.stop()
            if outage_s is not None:
                time.sleep(outage_s)
                server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
                server.start()
            stdout, stderr = job.communicate(timeout=600)
        finally:
            if job.poll() is None:
                job.kill()
        return job.returncode, "".join(lines) + stdout, stderr

    try:
        code, stdout, stderr = run(retry_s=3, outage_s=None)
        assert code == 2, stdout[-3000:] + stderr[-3000:]
        error, *others = stderr.strip().splitlines()
        assert "Traceback" not in stderr and error.startswith("error: preprocessing stopped, nothing published")
        assert "cannot reach the S3 endpoint" in error and "corpus/" in error, error   # names what it could not read
        assert all(line.startswith("warning: the log could not be copied") for line in others), others
        assert not storage.exists(f"{out}/manifest.json")                      # nothing visible to readers

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
        server.start()
        code, stdout, stderr = run(retry_s=120, outage_s=6)
        assert code == 0, stdout[-3000:] + stderr[-3000:]
    finally:
        server.stop()
    manifest = json.loads(storage.read_text(f"{out}/manifest.json"))
    assert manifest["storage_retries"] > 0                                     # the outage was felt and retried
    assert manifest["missing_recordings"] == [] and manifest["ok_recordings"] == n_good
    assert sorted(e["recording_id"] for e in manifest["errors"]) == ["bad/audio", "bad/midi"]
    rows = read_status_table(out).to_pylist()
    keys = [(r["recording_id"], r["segment_index"], r["augment"]) for r in rows]
    assert len(keys) == len(set(keys)) == manifest["segments"] + manifest["error_recordings"]
    assert len({r["recording_id"] for r in rows}) == n_good + 2
    listed = storage.boto3_client().list_objects_v2(Bucket=s3_bucket[5:], Prefix="features/segments",
                                                    Delimiter="/")
    assert [p["Prefix"] for p in listed.get("CommonPrefixes", [])] == [f"features/{manifest['segments_dir']}/"]


def test_a_write_that_s3_loses_while_failing_is_retried_and_other_write_errors_are_not(s3_bucket, tmp_path):
    """A 404 on writing a new object (a multipart upload the endpoint forgot as it went down) is a fault of
    the moment, retried like an unreachable endpoint; a missing bucket or a vanished local folder is not."""
    from pipelines.preprocess import _write_error

    lost = _write_error(f"{s3_bucket}/features/rec-1.parquet", OSError(
        "When completing multiple part upload for key 'rec-1.parquet': AWS Error NO_SUCH_UPLOAD during "
        "CompleteMultipartUpload operation: The specified upload does not exist."))
    assert isinstance(lost, storage.StorageUnavailable) and "lost the write" in str(lost)
    assert "rec-1.parquet" in str(lost) and "\n" not in str(lost)
    no_bucket = _write_error("s3://no-such-bucket-for-this-test/features/rec-1.parquet", FileNotFoundError("404"))
    assert not isinstance(no_bucket, storage.StorageUnavailable) and "bucket does not exist" in str(no_bucket)
    local = _write_error(str(tmp_path / "gone" / "rec-1.parquet"), FileNotFoundError("gone"))
    assert not isinstance(local, storage.StorageUnavailable) and "no such file or directory" in str(local)
