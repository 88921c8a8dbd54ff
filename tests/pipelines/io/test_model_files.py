"""Model files at s3:// URIs: checkpoints and pretrained encoder weights staged through temporary
directories, with errors that name the URI (model/ itself reads local paths only)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from model.builder import build_model
from model.errors import CheckpointError
from model.symbolic import SymbolicEncoder, save_symbolic_encoder
from pipelines.io import storage
from pipelines.io.model_files import build_model_from_sources, load_checkpoint, save_checkpoint
from tests.model.conftest import SCHEMA3, TINY, make_batch, save_tiny_mert


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_checkpoint_round_trip_through_s3(s3_bucket):
    model = build_model(dataclasses.replace(TINY, audio_encoder="cqt"), SCHEMA3, pretrained=False).eval()
    uri = f"{s3_bucket}/runs/a/checkpoint"
    assert save_checkpoint(uri, model, {}, SCHEMA3, {"metrics": {"val_mae": 7.5}}) == uri
    assert storage.exists(storage.join(uri, "model.pt")) and storage.exists(storage.join(uri, "model.json"))
    loaded, _, schema, extra = load_checkpoint(uri)
    assert extra == {"metrics": {"val_mae": 7.5}} and schema.names == SCHEMA3.names
    batch = make_batch(TINY, [0.5], [4], n_dims=3)
    with torch.no_grad():
        assert torch.equal(model(batch).scores, loaded(batch).scores)


def test_missing_s3_checkpoint_names_the_uri_not_a_temporary_copy(s3_bucket):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(f"{s3_bucket}/runs/absent")
    assert str(err.value).startswith(f"{s3_bucket}/runs/absent: ") and "pianoeval-model-" not in str(err.value)


def test_mert_source_on_s3_loads_and_the_model_remembers_the_uri(s3_bucket, tmp_path):
    saved = save_tiny_mert(tmp_path / "m", TINY, seed=7)
    storage.upload_dir(str(tmp_path / "m"), f"{s3_bucket}/mert")
    cfg = dataclasses.replace(TINY, mert_source=f"{s3_bucket}/mert")
    model = build_model_from_sources(cfg, SCHEMA3)
    assert _same(model.mert.hubert, saved)
    assert model.config.mert_source == f"{s3_bucket}/mert"          # checkpoints say where MERT came from
    with pytest.raises(CheckpointError, match=f"{s3_bucket}/absent: cannot download the MERT checkpoint"):
        build_model_from_sources(dataclasses.replace(TINY, mert_source=f"{s3_bucket}/absent"), SCHEMA3)


def test_symbolic_source_on_s3_as_a_directory_or_a_pt_file(s3_bucket, tmp_path):
    torch.manual_seed(2)
    source = SymbolicEncoder(TINY)
    save_symbolic_encoder(source, str(tmp_path / "sym"))
    storage.upload_dir(str(tmp_path / "sym"), f"{s3_bucket}/sym")
    for uri in (f"{s3_bucket}/sym", f"{s3_bucket}/sym/symbolic_encoder.pt"):
        model = build_model_from_sources(dataclasses.replace(TINY, symbolic_source=uri), SCHEMA3)
        assert _same(model.symbolic, source) and model.config.symbolic_source == uri


def test_pretrained_false_downloads_nothing(s3_bucket):
    cfg = dataclasses.replace(TINY, mert_source=f"{s3_bucket}/nothing-here")
    model = build_model_from_sources(cfg, SCHEMA3, pretrained=False)
    assert model.config.mert_source == cfg.mert_source
