"""The one place where configuration becomes objects.

A run's configuration is a `Config` (model, data, augmentation, training, scoring, dimension schema).
It is built from built-in defaults, then a preset (`tiny`, `mert-v1-95m`, `mert-v1-330m`, `demo`) or a
YAML file (which may name a `preset:` to start from), then `section.key=value` overrides from the
command line. Every value is type- and range-checked; the resolved config is saved with every output.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml

from model.config import ModelConfig
from model.schema import DimensionSchema, load_schema
from model.typed_config import ConfigError, from_dict, require, to_dict
from pipelines import constants as C

PRESET_DIR = Path(__file__).parent / "presets"


@dataclasses.dataclass
class AugmentConfig:
    """Training-only audio augmentation; each transform has its own probability, at most
    `max_transforms` apply to one example. Seeded: the same seed and example give the same result."""
    enabled: bool = True
    copies: int = 1                    # augmented copies written per training segment
    seed: int = 0
    max_transforms: int = 3
    p_pitch_shift: float = 0.3
    pitch_shift_semitones: int = 2     # uniform integer shift in [-n, n] \ {0}
    p_time_stretch: float = 0.3
    time_stretch_min: float = 0.85
    time_stretch_max: float = 1.15
    p_noise: float = 0.3
    noise_snr_db_min: float = 25.0
    noise_snr_db_max: float = 40.0
    p_reverb: float = 0.3
    n_rooms: int = 8                   # generated room impulse responses (5-10 spaces)
    p_gain: float = 0.3
    gain_db: float = 6.0
    p_mp3: float = 0.2
    mp3_kbps_min: int = 128
    mp3_kbps_max: int = 320

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            if f.name.startswith("p_"):
                value = getattr(self, f.name)
                require(0.0 <= value <= 1.0, f"augment.{f.name} must be a probability in [0, 1], got {value}")
        require(self.copies >= 0, f"augment.copies must be >= 0, got {self.copies}")
        require(1 <= self.max_transforms <= 6, f"augment.max_transforms must be 1..6, got {self.max_transforms}")
        require(0 < self.time_stretch_min <= self.time_stretch_max,
                f"augment.time_stretch_min/max must satisfy 0 < min <= max, got {self.time_stretch_min}, "
                f"{self.time_stretch_max}")
        require(self.noise_snr_db_min <= self.noise_snr_db_max, "augment.noise_snr_db_min exceeds noise_snr_db_max")
        require(self.mp3_kbps_min <= self.mp3_kbps_max, "augment.mp3_kbps_min exceeds mp3_kbps_max")
        require(0 <= self.pitch_shift_semitones <= 12, "augment.pitch_shift_semitones must be 0..12")


@dataclasses.dataclass
class DataConfig:
    min_duration_s: float = C.MIN_DURATION_S
    max_duration_s: float = 3600.0
    train_window_s: float = C.TRAIN_WINDOW_S
    infer_window_s: float = C.INFER_WINDOW_S
    window_overlap: float = C.WINDOW_OVERLAP
    max_notes: int = C.MAX_NOTES_PER_WINDOW
    # where performed notes come from: MIDI when present (auto), always MIDI, or always transcription
    performance_source: Literal["auto", "midi", "transcribe"] = "auto"
    transcriber: Literal["basic-pitch"] = "basic-pitch"
    store_audio: bool = True           # keep 24 kHz waveform per segment (needed by MERT)
    store_cqt: bool = True             # keep log-CQT per segment (needed by the CQT encoder)
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)   # train / val / test, by piece
    split_seed: int = 0
    num_cpus_per_task: float = 1.0     # Ray Data CPUs per preprocessing actor
    num_actors: int = 2
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)

    def validate(self) -> None:
        require(0 < self.min_duration_s < self.max_duration_s,
                f"data.min_duration_s must be > 0 and below max_duration_s, got {self.min_duration_s}")
        require(1.0 <= self.train_window_s <= 60.0, f"data.train_window_s must be 1..60 s, got {self.train_window_s}")
        require(5.0 <= self.infer_window_s <= 60.0, f"data.infer_window_s must be 5..60 s, got {self.infer_window_s}")
        require(0.0 <= self.window_overlap < 1.0, f"data.window_overlap must be in [0, 1), got {self.window_overlap}")
        require(self.max_notes >= 8, f"data.max_notes must be >= 8, got {self.max_notes}")
        require(abs(sum(self.split_fractions) - 1.0) < 1e-6 and min(self.split_fractions) >= 0,
                f"data.split_fractions must be non-negative and sum to 1, got {list(self.split_fractions)}")
        require(self.num_actors >= 1, f"data.num_actors must be >= 1, got {self.num_actors}")


@dataclasses.dataclass
class TrainConfig:
    stage: Literal["pseudo", "expert"] = "pseudo"
    epochs: int = 30
    batch_size: int = 8                # per worker
    grad_accum_steps: int = 4          # effective batch = batch_size * grad_accum_steps * workers
    lr_audio: float = 1e-5             # audio backbone (MERT / CQT encoder)
    lr_symbolic: float = 5e-5          # symbolic encoder
    lr_head: float = 3e-4              # fusion, LSTM, pooling, heads, task log-sigmas
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    patience: int = 5                  # epochs without validation improvement before stopping
    label_smoothing: float = 0.1       # pull targets toward the training mean by this fraction
    loss_weighting: Literal["uncertainty", "equal"] = "uncertainty"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"   # auto: fp16 on GPU, fp32 on CPU
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    checkpoints_to_keep: int = 3
    max_failures: int = 2
    seed: int = 0
    dropout: float | None = None       # overrides every dropout of the model when set (Tune)
    audio_only: bool = False           # ablation: ignore the score branch
    pretrained: bool = True            # ablation: false ignores model.mert_source/symbolic_source

    def validate(self) -> None:
        require(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        require(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        require(self.grad_accum_steps >= 1, f"train.grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        for name in ("lr_audio", "lr_symbolic", "lr_head"):
            value = getattr(self, name)
            require(0.0 <= value < 1.0, f"train.{name} must be in [0, 1), got {value}")
        require(0.0 <= self.weight_decay < 1.0, f"train.weight_decay must be in [0, 1), got {self.weight_decay}")
        require(0.0 <= self.warmup_fraction < 1.0, f"train.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        require(self.grad_clip > 0, f"train.grad_clip must be > 0, got {self.grad_clip}")
        require(0.0 <= self.label_smoothing < 1.0, f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        require(self.num_workers >= 0, f"train.num_workers must be >= 0, got {self.num_workers}")
        require(self.patience >= 1, f"train.patience must be >= 1, got {self.patience}")
        require(self.dropout is None or 0.0 <= self.dropout < 1.0, f"train.dropout must be in [0, 1), got {self.dropout}")


@dataclasses.dataclass
class ScoreConfig:
    window_s: float = C.INFER_WINDOW_S
    overlap: float = C.WINDOW_OVERLAP
    batch_size: int = 4
    num_actors: int = 1
    use_gpu: bool = False

    def validate(self) -> None:
        require(20.0 <= self.window_s <= 30.0, f"score.window_s must be 20..30 s, got {self.window_s}")
        require(0.0 <= self.overlap < 1.0, f"score.overlap must be in [0, 1), got {self.overlap}")
        require(self.batch_size >= 1, f"score.batch_size must be >= 1, got {self.batch_size}")


@dataclasses.dataclass
class Config:
    name: str = "default"
    dimensions: str = "seed10"         # schema name or YAML path
    aggregate_weights: tuple[float, ...] | None = None
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    score: ScoreConfig = dataclasses.field(default_factory=ScoreConfig)

    def validate(self) -> None:
        self.schema()  # raises on an unknown schema
        require(self.model.max_notes >= self.data.max_notes,
                f"model.max_notes ({self.model.max_notes}) is below data.max_notes ({self.data.max_notes})")

    def schema(self) -> DimensionSchema:
        schema = load_schema(self.dimensions)
        if self.aggregate_weights is not None:
            schema = schema.with_aggregate_weights(list(self.aggregate_weights))
        return schema

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self) -> str:
        """A short hash of the resolved config (stable across runs)."""
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping")
    return data


def _layer(preset_or_path: str, seen: tuple[str, ...] = ()) -> dict:
    """The override dictionary of a preset or YAML file, with its `preset:` chain resolved."""
    path = Path(preset_or_path)
    if preset_or_path in available_presets():
        path = PRESET_DIR / f"{preset_or_path}.yaml"
    elif not (path.suffix in (".yaml", ".yml") and path.exists()):
        raise ConfigError(f"unknown config {preset_or_path!r}: use a preset ({', '.join(available_presets())}) "
                          "or an existing .yaml file")
    if str(path) in seen:
        raise ConfigError(f"{path}: preset chain loops back on itself")
    data = _read_yaml(path)
    parent = data.pop("preset", None)
    if parent:
        data = _deep_merge(_layer(str(parent), seen + (str(path),)), data)
    return data


def parse_override(text: str) -> dict:
    """`train.epochs=3` -> {'train': {'epochs': 3}}; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(preset_or_path: str | None = None, overrides: list[str] | None = None,
                extra: dict | None = None) -> Config:
    """Resolve defaults <- preset/YAML <- `extra` dict <- command-line overrides into a validated Config."""
    data: dict = {}
    if preset_or_path:
        data = _layer(preset_or_path)
    if extra:
        data = _deep_merge(data, extra)
    for text in overrides or []:
        data = _deep_merge(data, parse_override(text))
    if preset_or_path and "name" not in data:
        data["name"] = Path(preset_or_path).stem
    return from_dict(Config, data)


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config saved with `Config.to_dict` (e.g. from a checkpoint)."""
    return from_dict(Config, data)


def save_config(config: Config, uri: str) -> None:
    """Write the resolved config as YAML to a URI (local or s3://)."""
    from pipelines.io import storage
    storage.write_text(uri, config.to_yaml())
