"""Errors of the model package. model/ reads and writes local paths (and Hugging Face hub ids) only;
pipelines.io.model_files stages s3:// URIs through temporary directories."""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type or range."""


class CheckpointError(ValueError):
    """A pretrained or saved checkpoint is missing or does not fit; the message says what was expected."""
