"""jobs/score.py end to end on local Ray against a moto S3 server: one row per input, incremental reruns,
a replaced recording, a killed run, and the published snapshot."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.io import storage
from pipelines.scoring import publish as P

ROOT = Path(__file__).resolve().parents[3]
LIMITS = ["--set", "scoring.max_duration_s=60", "--set", "scoring.rows_per_part=2"]


def _upload(local: Path, uri: str) -> None:
    storage.upload_dir(str(local), uri)


def _score(input_uri: str, out: str, checkpoint: str, *extra: str, address: str, timeout: float = 600,
           wait: bool = True):
    cmd = [sys.executable, str(ROOT / "jobs" / "score.py"), "--input", input_uri, "--out", out, "--checkpoint",
           checkpoint, "--address", address, "--max-error-rate", "0.6", *LIMITS, *extra]
    if not wait:
        return subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, timeout=timeout)


def _latest(out: str) -> dict[str, dict]:
    table = P.read_latest(out)
    return {r["recording_id"]: r for r in table.to_pylist()}


@pytest.mark.slow
def test_nightly_scoring_on_s3(ray_cluster, s3_bucket, scoring_checkpoint, library, tmp_path):
    import ray
    address = ray.get_runtime_context().gcs_address
    root, expected = library
    lib, out, ckpt = f"{s3_bucket}/library", f"{s3_bucket}/scores", f"{s3_bucket}/checkpoints/model"
    _upload(root, lib)
    _upload(scoring_checkpoint, ckpt)

    # 1. first run: every input gets exactly one row with the expected status
    first = _score(lib, out, ckpt, address=address)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    rows = _latest(out)
    assert set(rows) == set(expected)
    for rid, want in expected.items():
        status, _, kind = want.partition(":")
        assert rows[rid]["status"] == status, (rid, rows[rid]["message"])
        if kind:
            assert rows[rid]["error_kind"] == kind, (rid, rows[rid]["message"])
            assert "\n" not in rows[rid]["message"] and Path(rows[rid]["source_uri"]).name in rows[rid]["message"]
    scored = rows["with score/scale one"]
    assert scored["has_score"] and scored["match_rate"] > 0.8 and not scored["score_mismatch"]
    assert len(scored["scores"]) == len(scored["dimensions"]) == len(scored["sigma"])
    assert all(0.0 <= v <= 100.0 for v in scored["scores"]) and all(s > 0 for s in scored["sigma"])
    assert len(scored["window_start_s"]) >= 2 and sum(scored["window_weight"]) == pytest.approx(
        scored["duration_s"], rel=0.01)
    assert sum(scored["attention_curve"]) == pytest.approx(1.0, abs=1e-3)
    assert rows["wrong/other piece"]["score_mismatch"] and not rows["wrong/other piece"]["has_score"]
    assert all(rows["wrong/other piece"]["low_confidence"])
    assert not rows["plain/Étude n°2 ü"]["has_score"] and rows["plain/Étude n°2 ü"]["mode"] == "audio"
    manifest = P.latest_run(out)[1]
    assert manifest["counts"] == {"ok": 4, "skipped": 0, "error": 4} and manifest["complete"]
    assert scored["novelty"] != scored["novelty"] and manifest["unfamiliar"] is None    # no feature model: NaN
    assert [Path(u).name for u in manifest["other_files"]] == ["notes.txt"]
    assert [Path(u).name for u in manifest["unmatched_scores"]] == ["orphan score.mid"]
    assert "4 ok" in first.stdout and "results:" in first.stdout
    # the HTML report lands beside the results, one page per recording, the bar map of the scored one
    report = next(line.split(" ", 1)[1] for line in first.stdout.splitlines() if line.startswith("report: "))
    assert report == f"{P.run_uri(out, manifest['run_id'])}/report/index.html"
    index = storage.read_text(report)
    assert "with score/scale one" in index and "other piece" in index
    assert [b["bar"] for b in scored["bars"]][:3] == [1, 2, 3]

    # 2. nothing changed: no model work, every row carried forward
    second = _score(lib, out, ckpt, address=address)
    assert second.returncode == 0, second.stdout[-3000:]
    manifest2 = P.latest_run(out)[1]
    assert manifest2["windows_scored"] == 0 and manifest2["counts"]["ok"] == 0
    rows2 = _latest(out)
    assert set(rows2) == set(expected)
    assert rows2["with score/scale one"]["status"] == "skipped"
    assert rows2["with score/scale one"]["scored_in_run"] == manifest["run_id"]
    assert rows2["with score/scale one"]["scores"] == scored["scores"]

    # 3. one recording replaced: only it is scored again
    storage.upload_file(str(root / "wrong" / "other piece.wav"), f"{lib}/plain/four channels.wav")
    third = _score(lib, out, ckpt, address=address)
    assert third.returncode == 0, third.stdout[-3000:]
    rows3 = _latest(out)
    assert [r for r, row in rows3.items() if row["status"] == "ok"] == ["plain/four channels"]

    # 4. a new checkpoint rescores everything; killed mid-run, the rerun completes the library
    ckpt2 = f"{s3_bucket}/checkpoints/model2"
    from tests.pipelines.scoring.conftest import save_checkpoint
    _upload(save_checkpoint(tmp_path / "model2", seed=1), ckpt2)
    before = P.latest_run(out)[0]
    proc = _score(lib, out, ckpt2, "--set", "scoring.rows_per_part=1", address=address, wait=False)
    deadline = time.time() + 300
    killed_parts = []
    while time.time() < deadline and proc.poll() is None:
        runs = [e.uri for e in storage.list_files(f"{out}/runs", suffixes=(".parquet",), with_hash=False)
                if "/results/" in e.uri and before not in e.uri]
        new_runs = {u.split("/runs/")[1].split("/")[0] for u in runs} - {r for r in [before]}
        fresh = [u for u in runs if any(r in u for r in new_runs)
                 and not storage.exists(f"{out}/runs/{u.split('/runs/')[1].split('/')[0]}/manifest.json")]
        if len(fresh) >= 2:
            killed_parts = fresh
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait(timeout=60)
    assert killed_parts, "the run finished before it could be killed: " + (proc.stdout.read() or "")[-2000:]
    assert P.latest_run(out)[0] == before                        # the killed run is not visible
    final = _score(lib, out, ckpt2, address=address)
    assert final.returncode == 0, final.stdout[-3000:]
    run_id, manifest4 = P.latest_run(out)
    table = P.read_latest(out)
    ids = table.column("recording_id").to_pylist()
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))
    assert manifest4["missing"] == [] and manifest4["duplicated"] == []
    by_status = {r["recording_id"]: r for r in table.to_pylist()}
    killed_run = killed_parts[0].split("/runs/")[1].split("/")[0]
    reused = [r for r in by_status.values() if r["scored_in_run"] == killed_run]
    assert reused and all(r["status"] in ("skipped", "error") for r in reused)   # the killed run's work was kept
    assert all(r["run_id"] == run_id for r in by_status.values())
    assert all(r["model_version"] == manifest4["model_version"] for r in by_status.values())


@pytest.mark.slow
def test_manifest_input_with_performance_midi(ray_cluster, scoring_checkpoint, tmp_path):
    import ray
    from tests.pipelines.scoring.conftest import SCALE, melody_midi

    address = ray.get_runtime_context().gcs_address
    (tmp_path / "in").mkdir()
    melody_midi(SCALE[:40]).write(str(tmp_path / "in" / "played.mid"))
    melody_midi(SCALE[:40]).write(str(tmp_path / "in" / "score.mid"))
    (tmp_path / "in" / "broken.mid").write_bytes(b"MThd garbage")
    manifest = tmp_path / "in" / "manifest.csv"
    manifest.write_text("recording_id,audio_uri,performance_midi_uri,score_uri\n"
                        "digital,,played.mid,score.mid\n"
                        "broken,,broken.mid,\n"
                        "nothing,,missing.mid,\n")
    out = str(tmp_path / "out")
    result = _score(str(manifest), out, str(scoring_checkpoint), address=address)
    assert result.returncode == 1, result.stdout[-3000:]                 # 2 of 3 failed > 0.6
    assert "--max-error-rate" in result.stdout
    rows = _latest(out)
    assert rows["digital"]["status"] == "ok" and rows["digital"]["mode"] == "midi+score"
    assert rows["digital"]["has_score"] and rows["digital"]["match_rate"] > 0.95
    assert rows["broken"]["status"] == "error" and "broken.mid" in rows["broken"]["message"]
    assert rows["nothing"]["status"] == "error" and "missing.mid" in rows["nothing"]["message"]


@pytest.mark.slow
def test_a_recording_that_kills_its_worker_becomes_an_error_row(ray_cluster, scoring_checkpoint, library, tmp_path):
    """The worker dies on one file (as a decoder crash would): bounded retries, then a `crash` row; the
    other recordings are scored and the run completes."""
    import shutil

    import ray
    address = ray.get_runtime_context().gcs_address
    root, _ = library
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(root / "plain" / "four channels.wav", lib / "fine.wav")
    shutil.copy(root / "plain" / "four channels.wav", lib / "crash me.wav")
    hook = Path(__file__).parent / "crash_hook"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(ROOT / "jobs" / "score.py"), "--input", str(lib), "--out", str(tmp_path / "out"),
           "--checkpoint", str(scoring_checkpoint), "--address", address, "--max-error-rate", "0.6"]
    result = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, timeout=400, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = _latest(str(tmp_path / "out"))
    assert rows["fine"]["status"] == "ok"
    assert rows["crash me"]["status"] == "error" and rows["crash me"]["error_kind"] == "crash"
    assert "crash me.wav" in rows["crash me"]["message"]
