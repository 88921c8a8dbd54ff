"""Model files at any URI: run checkpoints and pretrained encoder weights, local or s3://.

`model/` reads and writes local directories (and Hugging Face hub ids) only; it imports nothing from
`pipelines/`. The jobs go through these wrappers, which stage an s3:// prefix through a temporary
directory and keep the URI in every error message.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from typing import Iterator

import torch
from torch import nn

from model import checkpoint
from model.assessor import PianoAssessor
from model.builder import build_model
from model.config import ModelConfig
from model.errors import CheckpointError
from model.schema import DimensionSchema
from pipelines.io import storage


@contextlib.contextmanager
def _fetched(uri: str, what: str) -> Iterator[str]:
    """A local path holding `uri`: the path itself when local; an s3:// prefix (or one `.pt` file)
    downloaded to a temporary directory that is removed afterwards. Errors name `uri` and `what`."""
    if not storage.is_s3(uri):
        yield os.path.expanduser(uri)
        return
    with tempfile.TemporaryDirectory(prefix="pianoeval-model-") as tmp:
        try:
            if uri.endswith(".pt"):
                local = os.path.join(tmp, storage.basename(uri))
                with open(local, "wb") as f:
                    f.write(storage.read_bytes(uri))
            else:
                local = storage.download_dir(uri, os.path.join(tmp, "dir"))
                os.makedirs(local, exist_ok=True)
        except storage.StorageError as exc:
            raise CheckpointError(f"{uri}: cannot download {what} ({exc})") from None
        try:
            yield local
        except CheckpointError as exc:       # name the URI, not the temporary copy
            raise CheckpointError(str(exc).replace(local, uri)) from None


def load_checkpoint(uri: str, map_location: str | torch.device = "cpu"
                    ) -> tuple[PianoAssessor, dict, DimensionSchema, dict]:
    """`model.checkpoint.load_model` for a local or s3:// model directory."""
    with _fetched(uri, "the checkpoint") as local:
        return checkpoint.load_model(local, map_location)


def save_checkpoint(uri: str, model: nn.Module, config_dict: dict, schema: DimensionSchema,
                    extra: dict | None = None) -> str:
    """`model.checkpoint.save_model` to a local directory or s3:// prefix; returns `uri`."""
    if not storage.is_s3(uri):
        return checkpoint.save_model(uri, model, config_dict, schema, extra)
    with tempfile.TemporaryDirectory(prefix="pianoeval-ckpt-") as tmp:
        checkpoint.save_model(tmp, model, config_dict, schema, extra)
        storage.upload_dir(tmp, uri)
    return uri


def build_model_from_sources(cfg: ModelConfig, schema: DimensionSchema, *, dropout: float | None = None,
                             pretrained: bool = True) -> PianoAssessor:
    """`model.builder.build_model` with `mert_source` / `symbolic_source` that may be s3:// URIs.

    The built model's config keeps the original URIs (not the temporary copies), so its checkpoints say
    where the pretrained weights came from.
    """
    with contextlib.ExitStack() as stack:
        local = {}
        if pretrained:
            for field, what in (("mert_source", "the MERT checkpoint: expected an s3:// prefix holding "
                                                "config.json and model weights"),
                                ("symbolic_source", "the symbolic encoder weights")):
                uri = getattr(cfg, field)
                if uri and storage.is_s3(uri):
                    local[field] = stack.enter_context(_fetched(uri, what))
        model = build_model(dataclasses.replace(cfg, **local), schema, dropout=dropout, pretrained=pretrained)
    if local:
        model.config = dataclasses.replace(model.config, **{field: getattr(cfg, field) for field in local})
    return model


def read_checkpoint_meta(uri: str) -> dict:
    """model.json of a local or s3:// model directory (config, schema, extra) without loading weights."""
    import json

    meta_uri = storage.join(uri, checkpoint.META_FILE)
    try:
        meta = json.loads(storage.read_text(meta_uri))
    except storage.StorageError as exc:
        raise CheckpointError(f"{uri}: not a model directory ({exc})") from None
    except ValueError:
        raise CheckpointError(f"{meta_uri}: not valid JSON") from None
    if meta.get("format") != checkpoint.FORMAT:
        raise CheckpointError(f"{uri}: not a pianoeval model checkpoint")
    return meta
