"""Model checkpoints: a local directory that rebuilds its model with one call (pipelines.io.model_files
reads and writes them at s3:// URIs too).

    model.pt    {"format", "version", "state_dict"}  read with torch.load(weights_only=True)
    model.json  {"format", "version", "config": the whole run config (its "model" entry is the resolved
                 ModelConfig the weights were built with), "schema": DimensionSchema.to_dict(),
                 "extra": label statistics, metrics, version, ...}

`load_model` rebuilds with `build_model(cfg, schema, pretrained=False)` (the weights come from model.pt,
so no MERT download is needed) and returns the model in eval mode. A saved model config without
`sigma_head` (written before per-item sigma existed) is read as "per_dimension", the layout of its weights.
Other files in the directory (calibration.json) are left to their readers.
"""
from __future__ import annotations

import copy
import json
import math
import os
from typing import Any

import torch
from torch import nn

from model.assessor import PianoAssessor
from model.builder import build_model
from model.config import MODEL_PARTS, ModelConfig
from model.errors import CheckpointError, ConfigError
from model.schema import DimensionSchema

WEIGHTS_FILE = "model.pt"
META_FILE = "model.json"
FORMAT = "pianoeval-model"
VERSION = 1
WRAPPER_PREFIXES = ("module.", "_orig_mod.")     # DDP and torch.compile wrappers
LEGACY_SIGMA_HEAD = "per_dimension"              # the sigma head of checkpoints whose config lacks sigma_head


def unwrap(model: nn.Module) -> PianoAssessor:
    """The PianoAssessor inside DDP and torch.compile wrappers (or the model itself)."""
    while not isinstance(model, PianoAssessor):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"expected a PianoAssessor (or a DDP/compiled wrapper of one), got {type(model).__name__}")
        model = inner
    return model


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if hasattr(value, "tolist"):           # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _clean_floats(value: Any) -> Any:
    """NaN/inf -> None so that model.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_floats(v) for v in value]
    return value


def _require_local(directory: str) -> None:
    if "://" in directory:
        raise CheckpointError(f"{directory}: model/ reads and writes local directories; use "
                              "pipelines.io.model_files for remote URIs")


def save_model(directory: str, model: nn.Module, config_dict: dict, schema: DimensionSchema,
               extra: dict | None = None) -> str:
    """Write model.pt and model.json into the local `directory`; returns `directory`.

    `config_dict` is the run's whole config (pipelines' Config.to_dict()); its "model" entry is replaced by
    the model's resolved ModelConfig, so the checkpoint describes exactly the weights it holds.
    """
    _require_local(directory)
    model = unwrap(model)
    config = copy.deepcopy(dict(config_dict or {}))
    config["model"] = model.config.to_dict()
    meta = {"format": FORMAT, "version": VERSION, "config": config, "schema": schema.to_dict(),
            "extra": extra or {}}
    meta_text = json.dumps(_clean_floats(json.loads(json.dumps(meta, default=_jsonable))), indent=2, sort_keys=True)
    payload = {"format": FORMAT, "version": VERSION,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    _write(os.path.expanduser(directory), payload, meta_text)
    return directory


def _write(local_dir: str, payload: dict, meta_text: str) -> None:
    os.makedirs(local_dir, exist_ok=True)
    weights = os.path.join(local_dir, WEIGHTS_FILE)
    torch.save(payload, weights + ".tmp")
    os.replace(weights + ".tmp", weights)          # never a half-written model.pt under its real name
    with open(os.path.join(local_dir, META_FILE), "w") as f:
        f.write(meta_text)


def load_model(directory: str, map_location: str | torch.device = "cpu"
               ) -> tuple[PianoAssessor, dict, DimensionSchema, dict]:
    """Rebuild the model saved in `directory` -> (model in eval mode, config dict, schema, extra)."""
    _require_local(directory)
    expected = f"expected a directory written by model.checkpoint.save_model ({WEIGHTS_FILE} and {META_FILE})"
    local = os.path.expanduser(directory)
    meta_path, weights_path = os.path.join(local, META_FILE), os.path.join(local, WEIGHTS_FILE)
    if not (os.path.isfile(meta_path) and os.path.isfile(weights_path)):
        raise CheckpointError(f"{directory}: no {META_FILE} and {WEIGHTS_FILE} there; {expected}")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        payload = torch.load(weights_path, map_location=map_location, weights_only=True)
    except Exception as exc:  # JSON / unpickling errors
        raise CheckpointError(f"{directory}: unreadable checkpoint ({exc}); {expected}") from None
    if meta.get("format") != FORMAT or not isinstance(payload, dict) or "state_dict" not in payload:
        raise CheckpointError(f"{directory}: not a pianoeval model checkpoint; {expected}")
    if int(meta.get("version", 0)) > VERSION:
        raise CheckpointError(f"{directory}: checkpoint format version {meta['version']} is newer than this code "
                              f"reads ({VERSION})")
    config = meta["config"]
    if isinstance(config, dict) and isinstance(config.get("model"), dict):
        config["model"].setdefault("sigma_head", LEGACY_SIGMA_HEAD)
    try:
        cfg = ModelConfig.from_dict(config["model"])
        schema = DimensionSchema.from_dict(meta["schema"])
    except (ConfigError, KeyError, TypeError) as exc:   # TypeError: a value of the wrong type
        raise CheckpointError(f"{directory}: the saved model config or schema is invalid ({exc})") from None
    model = build_model(cfg, schema, pretrained=False)
    state = payload["state_dict"]
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:   # shape mismatches
        raise CheckpointError(f"{directory}: weights do not fit the saved config ({str(exc).splitlines()[-1].strip()})"
                              ) from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{directory}: weights do not fit the saved config (missing {result.missing_keys[:3]}, "
                              f"unexpected {result.unexpected_keys[:3]})")
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval(), config, schema, meta.get("extra", {})


# --- initialising a run from another checkpoint (possibly of another dimension schema) ------------------
_PER_DIM_ROWS = ("heads.log_sigma_head.weight", "heads.log_sigma_head.bias", "heads.task_log_sigma",
                 "heads.log_sigma")            # one row per dimension, in schema order
PARTS = MODEL_PARTS                            # part name -> state-dict prefixes (also `train.freeze` names)


def part_of(key: str) -> str:
    """The part (`PARTS`) a state-dict key belongs to."""
    return next((name for name, prefixes in PARTS.items() if key.startswith(prefixes)), "other")


def transfer_state(target: dict[str, Any], source: dict[str, torch.Tensor], target_names: list[str],
                   source_names: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of `source` (a state dict of a model for `source_names`) that fit `target` (name -> shape
    or tensor of the model being built, for `target_names`), and a report of what was transferred.

    Every tensor whose key and shape match is taken; per-dimension heads (`heads.dims.<i>.*`) and the
    per-dimension rows of the sigma parameters follow their dimension's name, so a dimension present in
    both schemas keeps its head and the others start fresh. Returns (state dict to load with strict=False,
    report: loaded / fresh keys, kept / fresh dimensions, loaded keys per part)."""
    shape = {k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in target.items()}
    same_schema = list(target_names) == list(source_names)
    src_index = {n: i for i, n in enumerate(source_names)}
    out: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if key.startswith("heads.dims.") and not same_schema:
            continue
        if key in _PER_DIM_ROWS and not same_schema:
            continue
        if key in shape and tuple(value.shape) == shape[key]:
            out[key] = value
    kept = [n for n in target_names if n in src_index]
    if not same_schema:
        for j, name in enumerate(target_names):
            if name not in src_index:
                continue
            i = src_index[name]
            for key, value in source.items():
                prefix = f"heads.dims.{i}."
                if key.startswith(prefix):
                    new = f"heads.dims.{j}." + key[len(prefix):]
                    if new in shape and tuple(value.shape) == shape[new]:
                        out[new] = value
        for key in _PER_DIM_ROWS:                # copy the kept dimensions' rows into a fresh tensor
            if key in source and key in target and hasattr(target[key], "clone") and kept:
                fresh = target[key].detach().clone()
                if fresh.shape[1:] != source[key].shape[1:]:
                    continue
                for name in kept:
                    fresh[target_names.index(name)] = source[key][src_index[name]]
                out[key] = fresh
    loaded_parts: dict[str, int] = {}
    for key in out:
        loaded_parts[part_of(key)] = loaded_parts.get(part_of(key), 0) + 1
    kept = [n for j, n in enumerate(target_names)            # a dimension keeps its head only if it fit
            if n in kept and any(k.startswith(f"heads.dims.{j}.") for k in out)]
    trunk = [k for k in shape if part_of(k) != "heads"]
    report = {"loaded": sorted(out), "fresh": sorted(k for k in shape if k not in out), "kept_dimensions": kept,
              "fresh_dimensions": [n for n in target_names if n not in kept], "loaded_parts": loaded_parts,
              "parts": sorted({part_of(k) for k in shape}), "trunk_tensors": len(trunk),
              "trunk_loaded": sum(1 for k in trunk if k in out)}
    return out, report


def transfer_summary(report: dict[str, Any], source: str) -> str:
    """One line: what a run initialised from `source` took from it and what starts fresh."""
    parts = report["loaded_parts"]
    whole = [p for p in PARTS if p != "heads" and parts.get(p)]
    fresh_parts = [p for p in report["parts"] if p not in parts and p != "heads" and p != "other"]
    kept, new = report["kept_dimensions"], report["fresh_dimensions"]
    heads = (f"heads kept for {len(kept)} of {len(kept) + len(new)} dimensions"
             + (f", fresh for {len(new)} ({', '.join(new[:4])}{', ...' if len(new) > 4 else ''})" if new else ""))
    return (f"initialised from {source}: {len(report['loaded'])} tensors loaded ({', '.join(whole) or 'none'}); "
            f"{heads}; fresh: {len(report['fresh'])} tensors" + (f" ({', '.join(fresh_parts)})" if fresh_parts
                                                                    else ""))
