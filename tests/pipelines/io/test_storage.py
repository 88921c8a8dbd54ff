"""The URI layer on local paths and on a real (moto) S3 endpoint."""
from __future__ import annotations

import hashlib
import os

import pytest

from pipelines.io import storage
from pipelines.io.storage import StorageError


def _roundtrip(root: str) -> None:
    payloads = {"a/one.bin": b"\x00\x01" * 100, "a/b/two.txt": b"hello", "three.mid": b"MThd"}
    for rel, data in payloads.items():
        storage.write_bytes(storage.join(root, rel), data)
    entries = storage.list_files(root)
    assert [e.uri for e in entries] == sorted(e.uri for e in entries)
    by_name = {storage.basename(e.uri): e for e in entries}
    assert set(by_name) == {"one.bin", "two.txt", "three.mid"}
    for rel, data in payloads.items():
        entry = by_name[storage.basename(rel)]
        assert entry.size == len(data)
        assert entry.etag == hashlib.md5(data).hexdigest()      # single-part ETag is the md5
        assert storage.read_bytes(entry.uri) == data
        assert storage.content_hash(entry.uri) == entry.etag
    assert [storage.basename(e.uri) for e in storage.list_files(root, suffixes=(".mid",))] == ["three.mid"]
    assert storage.exists(storage.join(root, "a/one.bin"))
    assert not storage.exists(storage.join(root, "missing.bin"))
    with storage.local_path(storage.join(root, "a/b/two.txt")) as path:
        assert open(path, "rb").read() == b"hello"


def test_local_roundtrip(tmp_path):
    _roundtrip(str(tmp_path / "store"))


def test_s3_roundtrip(s3_bucket):
    _roundtrip(f"{s3_bucket}/prefix")


def test_upload_and_download_dir(tmp_path, s3_bucket):
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    (src / "x" / "f.txt").write_text("content")
    (src / "g.txt").write_text("other")
    storage.upload_dir(str(src), f"{s3_bucket}/copy")
    out = storage.download_dir(f"{s3_bucket}/copy", str(tmp_path / "back"))
    assert (tmp_path / "back" / "x" / "f.txt").read_text() == "content"
    assert (tmp_path / "back" / "g.txt").read_text() == "other"
    assert out == str(tmp_path / "back")


@pytest.mark.parametrize("bad", ["../../evil.txt", "sub/../../../evil.txt", "sub/..", "a/../../evil.txt"])
def test_download_dir_refuses_keys_that_leave_the_target(tmp_path, s3_bucket, bad):
    """S3 keys may literally hold `..` segments; none may land outside the target directory, and the copy
    writes nothing once one such key is listed."""
    client = storage.boto3_client()
    bucket = s3_bucket[len("s3://"):]
    client.put_object(Bucket=bucket, Key="data/prefix/good.txt", Body=b"good")
    client.put_object(Bucket=bucket, Key=f"data/prefix/{bad}", Body=b"evil")
    listed = [e.uri for e in storage.list_files(f"{s3_bucket}/data/prefix")]
    assert f"{s3_bucket}/data/prefix/{bad}" in listed          # listed verbatim, not normalised
    target = tmp_path / "deep" / "er" / "target"
    with pytest.raises(StorageError) as info:
        storage.download_dir(f"{s3_bucket}/data/prefix", str(target))
    text = str(info.value)
    assert len(text.splitlines()) == 1 and f"{s3_bucket}/data/prefix/{bad}" in text
    assert "leaves the target directory" in text
    assert list(tmp_path.iterdir()) == []                       # nothing written or created, inside or out


def test_contained_path_refuses_absolute_and_parent_paths(tmp_path):
    assert storage.contained_path(str(tmp_path), "a/./b.txt", "x") == (tmp_path / "a" / "b.txt").resolve()
    for bad in ("/etc/passwd", "../x", "a/../../x", "..\\x", ""):
        with pytest.raises(StorageError, match="refusing a path that leaves the target directory"):
            storage.contained_path(str(tmp_path), bad, "entry")
    (tmp_path / "link").symlink_to("/")                          # a link inside the root that points out of it
    with pytest.raises(StorageError, match="leaves the target directory"):
        storage.contained_path(str(tmp_path), "link/etc/passwd", "entry")


def test_missing_local_file_is_one_clear_line(tmp_path):
    missing = str(tmp_path / "nope.wav")
    with pytest.raises(StorageError) as info:
        storage.read_bytes(missing)
    assert str(info.value) == f"{missing}: no such file or directory"


def test_wrong_bucket_is_one_clear_line(s3_server):
    with pytest.raises(StorageError) as info:
        storage.list_files("s3://no-such-bucket-here/prefix")
    assert "no-such-bucket-here" in str(info.value) and "bucket does not exist" in str(info.value)
    with pytest.raises(StorageError, match="bucket does not exist"):
        storage.check_bucket("s3://no-such-bucket-here")
    with pytest.raises(StorageError, match="bucket does not exist"):
        storage.read_bytes("s3://no-such-bucket-here/x.wav")


def test_missing_credentials_is_one_clear_line(s3_bucket, monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage._s3_filesystem.cache_clear()
    try:
        with pytest.raises(StorageError) as info:
            storage.list_files(f"{s3_bucket}/x")
        assert "credentials" in str(info.value)
        assert "\n" not in str(info.value)
    finally:
        storage._s3_filesystem.cache_clear()


def test_join_and_names():
    assert storage.join("s3://b/p/", "x", "/y.wav") == "s3://b/p/x/y.wav"
    assert storage.basename("s3://b/p/x.wav") == "x.wav"
    assert storage.parent("s3://b/p/x.wav") == "s3://b/p"


def test_listing_without_hashes_skips_reading_local_files(tmp_path):
    storage.write_bytes(str(tmp_path / "a.wav"), b"x" * 10)
    [entry] = storage.list_files(str(tmp_path), with_hash=False)
    assert entry.size == 10 and entry.etag == ""
    [entry] = storage.list_files(str(tmp_path))
    assert entry.etag == hashlib.md5(b"x" * 10).hexdigest()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_file_above_its_size_bound_is_refused_before_it_is_read(tmp_path, s3_bucket, where):
    """A poison input (a 'MIDI file' of gigabytes, an S3 object far beyond any recording) fails in one line
    naming it before a byte is read into memory or copied to disk."""
    uri = str(tmp_path / "big.mid") if where == "local" else f"{s3_bucket}/big.mid"
    storage.write_bytes(uri, b"x" * 5000)
    for call in (lambda: storage.read_bytes(uri, max_bytes=4096),
                 lambda: storage.local_path(uri, max_bytes=4096).__enter__()):
        with pytest.raises(storage.StorageError) as info:
            call()
        assert str(info.value) == f"{uri}: 4.9 KiB, above the 4.0 KiB this input may hold"
    assert storage.read_bytes(uri, max_bytes=5000) == b"x" * 5000
    with storage.local_path(uri, max_bytes=5000) as path:
        assert os.path.getsize(path) == 5000


def test_scores_and_performances_above_the_small_file_bound_are_one_line_errors(tmp_path):
    from pipelines.io.notation import ScoreError, load_score
    from pipelines.io.performance import MidiError, load_performance

    big = tmp_path / "huge score.mid"
    with open(big, "wb") as f:                  # sparse: 65 MiB on paper, nothing on disk
        f.truncate(storage.MAX_SMALL_FILE_BYTES + 2 ** 20)
    for load, error in ((load_score, ScoreError), (load_performance, MidiError)):
        with pytest.raises(error) as info:
            load(str(big))
        assert str(info.value) == f"{big}: 65.0 MiB, above the 64.0 MiB this input may hold"
