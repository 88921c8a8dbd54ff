"""One URI layer for every path in the system: local paths and `s3://bucket/prefix`.

S3 goes through `pyarrow.fs.S3FileSystem` (bulk reads and writes, Parquet, Ray Train storage) and
boto3 (ETags, bucket checks). The endpoint comes from `AWS_ENDPOINT_URL` (so MinIO, moto or any
S3-compatible server works) and credentials from the usual AWS chain. Failures become one-line
`StorageError`s that name the URI and the cause.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import pyarrow.fs as pafs


S3_MAX_ATTEMPTS = 5           # boto3 attempts per request (transient errors only, exponential backoff)


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI and the cause in one line."""


class StorageUnavailable(StorageError):
    """The storage could not be reached (connection refused or reset, timeout): a fault of the moment, not of
    the input. Jobs retry it for a while and then stop without publishing; never an error row."""


@dataclasses.dataclass(frozen=True)
class FileEntry:
    uri: str
    size: int
    etag: str          # S3 ETag, or md5 hex digest of a local file


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with '/' (works for local paths and s3://)."""
    out = str(uri).rstrip("/")
    for part in parts:
        out = f"{out}/{str(part).strip('/')}"
    return out


def parent(uri: str) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[0]


def basename(uri: str) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


@functools.lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str) -> pafs.S3FileSystem:
    kwargs: dict = {"region": region}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        kwargs.update(access_key=key, secret_key=secret, session_token=os.environ.get("AWS_SESSION_TOKEN"))
    return pafs.S3FileSystem(**kwargs)


def s3_filesystem() -> pafs.S3FileSystem:
    """The S3 filesystem for the current environment (endpoint, region, credentials)."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return _s3_filesystem(_endpoint(), region)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a URI. Local paths become absolute."""
    uri = str(uri)
    if is_s3(uri):
        path = uri[len("s3://"):].rstrip("/")
        if not path or "/" not in path and len(path) < 3:
            raise StorageError(f"{uri}: not a valid s3://bucket/key URI")
        return s3_filesystem(), path
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def boto3_client():
    """A boto3 S3 client with the same endpoint as `resolve`."""
    import boto3
    from botocore.config import Config

    # a fresh session each time, so changed credentials or endpoints in the environment take effect;
    # botocore's "standard" mode retries transient errors only (throttling, 5xx, dropped connections)
    # with exponential backoff, never a missing key or a denied request
    return boto3.session.Session().client(
        "s3", endpoint_url=_endpoint(),
        region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        config=Config(retries={"mode": "standard", "max_attempts": S3_MAX_ATTEMPTS}))


def _explain(uri: str, exc: BaseException, *, writing: bool = False) -> StorageError:
    """The one-line StorageError of a failed storage call. writing: the call wrote a new object, which on S3
    is never legitimately "not found" once its bucket exists; such a 404 is an upload the endpoint lost as it
    failed (a multipart upload it forgot as it went down), a StorageUnavailable to retry."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    low = text.lower()
    if "nosuchbucket" in low or "bucket does not exist" in low or "the specified bucket" in low:
        return StorageError(f"{uri}: bucket does not exist")
    if ("credential" in low or "accessdenied" in low or "access denied" in low or "invalidaccesskeyid" in low
            or "signaturedoesnotmatch" in low):
        return StorageError(f"{uri}: access denied or no AWS credentials "
                            "(set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an AWS profile)")
    if isinstance(exc, FileNotFoundError) or "not found" in low or "nosuchkey" in low or "does not exist" in low \
            or "404" in low:
        if is_s3(uri) and not _bucket_exists(uri[len("s3://"):].split("/", 1)[0]):
            return StorageError(f"{uri}: bucket does not exist")
        if writing and is_s3(uri):
            return StorageUnavailable(f"{uri}: the S3 endpoint lost the write ({text})")
        return StorageError(f"{uri}: no such file or directory")
    if "connect" in low or "curl" in low or "timed out" in low or "timeout" in low:
        return StorageUnavailable(f"{uri}: cannot reach the S3 endpoint ({_endpoint() or 'AWS'}): {text}")
    return StorageError(f"{uri}: {text}")


def _bucket_exists(bucket: str) -> bool:
    try:
        boto3_client().head_bucket(Bucket=bucket)
        return True
    except Exception as exc:  # botocore ClientError: 404 for a missing bucket, 403 for a foreign one
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        return code not in ("404", "NoSuchBucket")


@contextlib.contextmanager
def _errors(uri: str) -> Iterator[None]:
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:  # pyarrow raises OSError/ArrowException subclasses with long texts
        raise _explain(uri, exc) from None


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    with _errors(uri):
        return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    fs, path = resolve(uri)
    with _errors(uri):
        return fs.get_file_info(path).type == pafs.FileType.Directory


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    with _errors(uri):
        fs.create_dir(path, recursive=True)


# Largest file read from the data (a score, a performance MIDI, a manifest) and largest recording copied to
# local disk: a file above is refused in one line before any of it is read, instead of filling memory or disk
MAX_SMALL_FILE_BYTES = 64 * 2 ** 20          # MIDI, MusicXML, CSV/JSON tables: real ones are kilobytes
MAX_RECORDING_BYTES = 8 * 2 ** 30            # 4 h of 96 kHz 24-bit stereo WAV is 8.3e9 bytes


def _check_size(uri: str, size: int | None, max_bytes: int | None) -> None:
    if max_bytes is not None and size is not None and size > max_bytes:
        raise StorageError(f"{uri}: {_human(size)}, above the {_human(max_bytes)} this input may hold")


def _human(n: int) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """A whole file's bytes; max_bytes refuses a larger file (StorageError naming it) before reading it."""
    fs, path = resolve(uri)
    with _errors(uri):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(uri)
        if info.type == pafs.FileType.Directory:
            raise StorageError(f"{uri}: is a directory, not a file")
        _check_size(uri, info.size, max_bytes)
        with fs.open_input_stream(path) as f:
            return f.read()


def read_text(uri: str, max_bytes: int | None = None) -> str:
    return read_bytes(uri, max_bytes).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object, atomically: on S3 a single PUT (so the ETag is the content's md5); a local
    file is written under a temporary name beside it and renamed."""
    fs, path = resolve(uri)
    with _errors(uri):
        if is_s3(uri):
            bucket, _, key = path.partition("/")
            boto3_client().put_object(Bucket=bucket, Key=key, Body=data)
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        partial = f"{path}.partial-{os.getpid()}-{secrets.token_hex(3)}"
        try:
            with open(partial, "wb") as f:      # beside its name, then renamed: readers never see half a file
                f.write(data)
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def delete(uri: str) -> None:
    fs, path = resolve(uri)
    with _errors(uri):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(path)


def _md5_local(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_files(uri: str, suffixes: tuple[str, ...] | None = None, recursive: bool = True,
               with_hash: bool = True) -> list[FileEntry]:
    """Every file under a prefix (sorted by URI), with size and ETag / md5; optionally by suffix.

    On S3 the ETag comes with the listing; a local file's md5 means reading it, which
    `with_hash=False` skips (etag is then "")."""
    uri = str(uri).rstrip("/")
    suffixes = tuple(s.lower() for s in suffixes) if suffixes else None
    if is_s3(uri):
        return _list_s3(uri, suffixes, recursive)
    fs, path = resolve(uri)
    with _errors(uri):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(uri)
        infos = [info] if info.type == pafs.FileType.File else fs.get_file_info(
            pafs.FileSelector(path, recursive=recursive))
    out = []
    for item in infos:
        if item.type != pafs.FileType.File or (suffixes and not item.path.lower().endswith(suffixes)):
            continue
        out.append(FileEntry(uri=item.path, size=item.size, etag=_md5_local(item.path) if with_hash else ""))
    return sorted(out, key=lambda e: e.uri)


def _list_s3(uri: str, suffixes: tuple[str, ...] | None, recursive: bool) -> list[FileEntry]:
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    client = boto3_client()
    out = []
    with _errors(uri):
        paginator = client.get_paginator("list_objects_v2")
        kwargs = {"Bucket": bucket, "Prefix": f"{prefix}/" if prefix else ""}
        if not recursive:
            kwargs["Delimiter"] = "/"
        found_any = False
        for page in paginator.paginate(**kwargs):
            for obj in page.get("Contents", []):
                found_any = True
                key = obj["Key"]
                if key.endswith("/") or (suffixes and not key.lower().endswith(suffixes)):
                    continue
                out.append(FileEntry(uri=f"s3://{bucket}/{key}", size=int(obj["Size"]),
                                     etag=str(obj.get("ETag", "")).strip('"')))
        if not found_any and prefix:
            # a single object named exactly `prefix`
            try:
                head = client.head_object(Bucket=bucket, Key=prefix)
                out.append(FileEntry(uri=uri, size=int(head["ContentLength"]), etag=head["ETag"].strip('"')))
            except Exception:
                raise FileNotFoundError(uri) from None
    return sorted(out, key=lambda e: e.uri)


def content_hash(uri: str) -> str:
    """ETag on S3 (md5 for single-part uploads), md5 hex digest for a local file."""
    if is_s3(uri):
        bucket, _, key = uri[len("s3://"):].partition("/")
        with _errors(uri):
            return boto3_client().head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    fs, path = resolve(uri)
    with _errors(uri):
        if not Path(path).is_file():
            raise FileNotFoundError(uri)
        return _md5_local(path)


def check_bucket(uri: str) -> None:
    """Fail early with one clear line if an s3:// URI's bucket is missing or unreachable."""
    if not is_s3(uri):
        return
    bucket = uri[len("s3://"):].split("/", 1)[0]
    with _errors(uri):
        if not _bucket_exists(bucket):
            raise StorageError(f"{uri}: bucket does not exist")


@contextlib.contextmanager
def local_path(uri: str, suffix: str | None = None, max_bytes: int | None = None) -> Iterator[str]:
    """A local file path holding the URI's content (the file itself when it is local); max_bytes refuses a
    larger file (StorageError naming it) before anything is copied."""
    if not is_s3(uri):
        fs, path = resolve(uri)
        if not Path(path).is_file():
            raise StorageError(f"{uri}: no such file")
        _check_size(uri, Path(path).stat().st_size, max_bytes)
        yield path
        return
    suffix = suffix if suffix is not None else Path(basename(uri)).suffix
    with tempfile.TemporaryDirectory(prefix="pianoeval-") as tmp:
        path = os.path.join(tmp, f"data{suffix}")
        bucket, _, key = uri[len("s3://"):].partition("/")
        with _errors(uri):                  # streamed to disk: a large recording never sits in memory whole
            if not key or key.endswith("/"):
                raise StorageError(f"{uri}: not a file")
            client = boto3_client()
            if max_bytes is not None:
                _check_size(uri, int(client.head_object(Bucket=bucket, Key=key)["ContentLength"]), max_bytes)
            client.download_file(bucket, key, path)
        yield path


def upload_file(local: str, uri: str) -> None:
    """Copy a local file to a URI."""
    if not is_s3(uri):
        _, path = resolve(uri)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if os.path.abspath(local) != path:
            shutil.copyfile(local, path)
        return
    with open(local, "rb") as f:
        write_bytes(uri, f.read())


def upload_dir(local_dir: str, uri: str) -> None:
    """Copy a local directory tree to a URI prefix."""
    for path in sorted(Path(local_dir).rglob("*")):
        if path.is_file():
            upload_file(str(path), join(uri, str(path.relative_to(local_dir))))


def contained_path(root: str, rel: str, what: str) -> Path:
    """`root / rel` for a relative path taken from data (an S3 key, a table entry): StorageError naming `what`
    when `rel` is absolute, has a `..` segment or resolves (through links) outside `root`."""
    parts = rel.replace("\\", "/").split("/")
    if not rel or rel.startswith("/") or os.path.isabs(rel) or ".." in parts:
        raise StorageError(f"{what}: refusing a path that leaves the target directory ({rel!r})")
    base = os.path.realpath(root)
    target = os.path.realpath(os.path.join(base, rel))
    if os.path.commonpath([base, target]) != base:
        raise StorageError(f"{what}: refusing a path that leaves the target directory ({rel!r})")
    return Path(target)


def download_dir(uri: str, local_dir: str) -> str:
    """Copy every file under a URI prefix into a local directory; returns the local directory.

    S3 keys may literally hold `..` segments (`prefix/../../x`): a key that would land outside `local_dir`
    fails the whole copy with a StorageError naming it, before anything is written."""
    prefix = str(uri).rstrip("/")
    plan = []
    for entry in list_files(uri):
        rel = entry.uri[len(prefix):].lstrip("/") if is_s3(uri) else os.path.relpath(entry.uri, resolve(uri)[1])
        if rel in ("", "."):                     # the prefix is one object itself
            rel = basename(entry.uri)
        plan.append((entry.uri, contained_path(local_dir, rel, entry.uri)))
    for source, target in plan:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_bytes(source))
    return local_dir
