"""Errors of the model package."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A pretrained or saved checkpoint is missing or does not fit; the message says what was expected."""
