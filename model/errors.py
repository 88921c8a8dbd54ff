"""Errors of the model package, and the one place it fetches an s3:// prefix to a local directory."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type or range."""


class CheckpointError(ValueError):
    """A pretrained or saved checkpoint is missing or does not fit; the message says what was expected."""


@contextlib.contextmanager
def local_copy(uri: str, what: str) -> Iterator[str]:
    """A local directory with the content of `uri`: the directory itself, or an s3:// prefix downloaded to
    a temporary directory (removed afterwards). A failed download raises CheckpointError naming `what`."""
    if not uri.startswith("s3://"):
        yield os.path.expanduser(uri)
        return
    from pipelines.io import storage   # lazy: model/ does not depend on pipelines/ otherwise

    with tempfile.TemporaryDirectory(prefix="pianoeval-model-") as tmp:
        try:
            storage.download_dir(uri, tmp)
        except Exception as exc:  # StorageError, FileNotFoundError
            raise CheckpointError(f"{uri}: cannot download {what} ({exc})") from None
        yield tmp
