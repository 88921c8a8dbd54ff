"""Runs are published whole: parts, then the manifest, then latest.json; killed runs are reused."""
from __future__ import annotations

import json

import pyarrow as pa

from pipelines.io import storage
from pipelines.scoring import publish as P

SCHEMA = pa.schema([("recording_id", pa.string()), ("status", pa.string())])


def _run(out: str, rows: list[dict], publish: bool, rows_per_part: int = 2) -> tuple[str, P.PartWriter]:
    run_id = P.new_run_id()
    writer = P.PartWriter(P.run_uri(out, run_id), SCHEMA, rows_per_part)
    for row in rows:
        writer.add(row)
    writer.flush()
    if publish:
        P.publish(out, run_id, {"run_id": run_id, "result_files": writer.files, "finished": "now"})
    return run_id, writer


def test_readers_see_only_published_runs(tmp_path):
    out = str(tmp_path / "scores")
    assert P.read_latest(out) is None
    first, writer = _run(out, [{"recording_id": f"r{i}", "status": "ok"} for i in range(5)], publish=True)
    assert len(writer.files) == 3                                   # 2 + 2 + 1 rows
    _run(out, [{"recording_id": "r0", "status": "ok"}], publish=False)   # killed: no manifest
    latest = P.read_latest(out)
    assert sorted(latest.column("recording_id").to_pylist()) == [f"r{i}" for i in range(5)]
    assert json.loads(storage.read_text(storage.join(out, "latest.json")))["run_id"] == first


def test_previous_results_include_killed_runs_after_the_published_one(tmp_path):
    out = str(tmp_path / "scores")
    first, _ = _run(out, [{"recording_id": "a", "status": "ok"}], publish=True)
    killed, _ = _run(out, [{"recording_id": "b", "status": "ok"}], publish=False)
    limited = P.new_run_id()                                        # complete, but not published as latest
    writer = P.PartWriter(P.run_uri(out, limited), SCHEMA, 2)
    writer.add({"recording_id": "c", "status": "ok"})
    writer.flush()
    P.publish(out, limited, {"run_id": limited, "result_files": writer.files, "finished": "now"},
              update_latest=False)
    files = P.previous_results(out)
    assert [f.split("/runs/")[1].split("/")[0] for f in files] == [first, killed, limited]
    assert P.latest_run(out)[0] == first


def test_local_writes_leave_no_partial_files(tmp_path):
    out = str(tmp_path / "scores")
    _run(out, [{"recording_id": "a", "status": "ok"}], publish=True)
    leftovers = [p for p in tmp_path.rglob("*") if ".partial-" in p.name]
    assert leftovers == []


def test_run_ids_made_in_the_same_millisecond_still_sort_in_order():
    ids = [P.new_run_id() for _ in range(500)]                     # far faster than one a millisecond
    assert ids == sorted(ids) and len({i.split("-")[0] for i in ids}) == len(ids)
