"""The run config and its loader: where settings from presets, YAML files and overrides become one typed object.

A run's configuration is a `Config` (model, data, augmentation, training, scoring, dimension schema):
pydantic models for the pipeline sections and the stdlib dataclass `model.config.ModelConfig` for the
model, which pydantic validates field by field and which checks itself in `__post_init__`.
It is built from built-in defaults, then a preset (`tiny`, `mert-v1-95m`, `mert-v1-330m`, `percepiano`) or a
YAML file (which may name a `preset:` to start from), then `section.key=value` overrides from the
command line. Every value is type- and range-checked; every failure is one `ConfigError` whose one-line
message names the dotted path of the key. The resolved config is saved with every output.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from model.config import ModelConfig, field_hints
from model.errors import ConfigError
from model.schema import DimensionSchema, load_schema
from pipelines import constants as C

PRESET_DIR = Path(__file__).parent / "presets"
S = TypeVar("S", bound=BaseModel)


def _not_bool(value: Any) -> Any:
    """YAML's true/false are not numbers (pydantic's lax mode would read them as 1 and 0)."""
    if isinstance(value, bool):
        raise PydanticCustomError("bool_as_number", "expected a number, got {value}", {"value": value})
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]       # also takes 3.0 (as 3), not 3.5 or true
Float = Annotated[float, BeforeValidator(_not_bool)]   # also takes "1e-4" (YAML 1.1 reads it as a string)
Bool = StrictBool                                      # true / false only, never 0 / 1 / "yes"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


class _Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated too, and a failed
    construction or assignment raises one `ConfigError` naming the dotted path of the key."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    path: ClassVar[str] = ""          # dotted path of the section in `Config` ("" for Config itself)

    def __init__(self, **data: Any) -> None:   # pydantic also calls it for a section nested in another
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _config_error(exc, type(self)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        before = dict(self.__dict__)
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:   # pydantic keeps the new value when a range check fails: undo it
            self.__dict__.clear()
            self.__dict__.update(before)
            raise _config_error(exc, type(self)) from None


class AugmentConfig(_Section):
    """Training-only audio augmentation; each transform has its own probability, at most
    `max_transforms` apply to one example. Seeded: the same seed and example give the same result."""
    path: ClassVar[str] = "data.augment"
    enabled: Bool = True
    copies: Int = 1                    # augmented copies written per training segment
    seed: Int = 0
    max_transforms: Int = 3
    p_pitch_shift: Float = 0.3
    pitch_shift_semitones: Int = 2     # uniform integer shift in [-n, n] \ {0}
    p_time_stretch: Float = 0.3
    time_stretch_min: Float = 0.85
    time_stretch_max: Float = 1.15
    p_noise: Float = 0.3
    noise_snr_db_min: Float = 25.0
    noise_snr_db_max: Float = 40.0
    p_reverb: Float = 0.3
    n_rooms: Int = 8                   # generated room impulse responses (5-10 spaces)
    p_gain: Float = 0.3
    gain_db: Float = 6.0
    p_mp3: Float = 0.2
    mp3_kbps_min: Int = 128
    mp3_kbps_max: Int = 320

    @model_validator(mode="after")
    def _check_ranges(self) -> AugmentConfig:
        for name in type(self).model_fields:
            if name.startswith("p_"):
                value = getattr(self, name)
                _require(0.0 <= value <= 1.0, f"{self.path}.{name} must be a probability in [0, 1], got {value}")
        _require(self.copies >= 0, f"{self.path}.copies must be >= 0, got {self.copies}")
        _require(1 <= self.max_transforms <= 6, f"{self.path}.max_transforms must be 1..6, got {self.max_transforms}")
        _require(0 < self.time_stretch_min <= self.time_stretch_max,
                 f"{self.path}.time_stretch_min/max must satisfy 0 < min <= max, got {self.time_stretch_min}, "
                 f"{self.time_stretch_max}")
        _require(self.noise_snr_db_min <= self.noise_snr_db_max,
                 f"{self.path}.noise_snr_db_min exceeds noise_snr_db_max")
        _require(self.mp3_kbps_min <= self.mp3_kbps_max, f"{self.path}.mp3_kbps_min exceeds mp3_kbps_max")
        _require(0 <= self.pitch_shift_semitones <= 12, f"{self.path}.pitch_shift_semitones must be 0..12")
        return self


class DataConfig(_Section):
    path: ClassVar[str] = "data"
    min_duration_s: Float = C.MIN_DURATION_S
    max_duration_s: Float = 3600.0
    train_window_s: Float = C.TRAIN_WINDOW_S
    infer_window_s: Float = C.INFER_WINDOW_S
    window_overlap: Float = C.WINDOW_OVERLAP
    max_notes: Int = C.MAX_NOTES_PER_WINDOW
    # where the model's notes come from. auto: what scoring will see (a recording with audio is transcribed,
    # its performance MIDI only labels it; a MIDI-only recording gives its MIDI); prefer_midi: the MIDI
    # whenever there is one; midi: always the MIDI; transcribe: always the audio's transcription
    performance_source: Literal["auto", "prefer_midi", "midi", "transcribe"] = "auto"
    # transcription backend: pipelines.features.transcribe.Transcriber.BACKENDS (a test keeps them equal)
    transcriber: Literal["basic-pitch", "transkun"] = "basic-pitch"
    store_audio: Bool = True           # keep 24 kHz waveform per segment (needed by MERT)
    store_cqt: Bool = True             # keep log-CQT per segment (needed by the CQT encoder)
    split_fractions: tuple[Float, Float, Float] = (0.7, 0.15, 0.15)   # train / val / test, by piece
    split_seed: Int = 0
    num_cpus_per_task: Float = 1.0     # Ray Data CPUs per preprocessing actor
    num_actors: Int = 0                # preprocessing actors (0: as many as the cluster's CPUs hold)
    max_retries: Int = 1               # retries of a recording whose worker died (then it is an error row)
    # how long a preprocessing actor rides out unreachable storage (connection refused, timeouts) on one
    # recording before the run stops unpublished; never an error row of the recording
    storage_retry_s: Float = 120.0
    # the note DTW holds a (performed notes x score onsets) matrix of 8-byte cells: above this a recording
    # becomes an error row instead of taking minutes and gigabytes (1.5e8: ~1.2 GB, ~40 min of dense piano)
    max_alignment_cells: Float = 1.5e8
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @model_validator(mode="after")
    def _check_ranges(self) -> DataConfig:
        _require(0 < self.min_duration_s < self.max_duration_s,
                 f"data.min_duration_s must be > 0 and below max_duration_s, got {self.min_duration_s}")
        _require(1.0 <= self.train_window_s <= 60.0, f"data.train_window_s must be 1..60 s, got {self.train_window_s}")
        _require(5.0 <= self.infer_window_s <= 60.0, f"data.infer_window_s must be 5..60 s, got {self.infer_window_s}")
        _require(0.0 <= self.window_overlap < 1.0, f"data.window_overlap must be in [0, 1), got {self.window_overlap}")
        _require(self.max_notes >= 8, f"data.max_notes must be >= 8, got {self.max_notes}")
        _require(self.max_alignment_cells >= 1e3,
                 f"data.max_alignment_cells must be >= 1000, got {self.max_alignment_cells}")
        _require(abs(sum(self.split_fractions) - 1.0) < 1e-6 and min(self.split_fractions) >= 0,
                 f"data.split_fractions must be non-negative and sum to 1, got {list(self.split_fractions)}")
        _require(self.num_actors >= 0, f"data.num_actors must be >= 0 (0: one per CPU), got {self.num_actors}")
        _require(0 <= self.max_retries <= 5, f"data.max_retries must be 0..5, got {self.max_retries}")
        _require(0.0 <= self.storage_retry_s <= 3600.0,
                 f"data.storage_retry_s must be 0..3600 s, got {self.storage_retry_s}")
        _require(self.num_cpus_per_task > 0, f"data.num_cpus_per_task must be > 0, got {self.num_cpus_per_task}")
        return self


class TrainConfig(_Section):
    path: ClassVar[str] = "train"
    stage: Literal["pseudo", "expert"] = "pseudo"
    epochs: Int = 30
    batch_size: Int = 8                # per worker
    grad_accum_steps: Int = 4          # effective batch = batch_size * grad_accum_steps * workers
    lr_audio: Float = 1e-5             # audio backbone (MERT / CQT encoder)
    lr_symbolic: Float = 5e-5          # symbolic encoder
    lr_head: Float = 3e-4              # fusion, LSTM, pooling, heads, task log-sigmas
    weight_decay: Float = 0.01
    warmup_fraction: Float = 0.1
    grad_clip: Float = 1.0
    patience: Int = 5                  # epochs without validation improvement before stopping
    label_smoothing: Float = 0.1       # pull targets toward the training mean by this fraction
    loss_weighting: Literal["uncertainty", "equal"] = "uncertainty"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"   # auto: fp16 on GPU, fp32 on CPU
    num_workers: Int = 2
    use_gpu: Bool = False
    cpus_per_worker: Float = 1.0
    checkpoints_to_keep: Int = 3
    max_failures: Int = 2
    seed: Int = 0
    dropout: Float | None = None       # overrides every dropout of the model when set (Tune)
    audio_only: Bool = False           # ablation: ignore the score branch
    augmented: Bool = True             # train on preprocessing's augmented copies too (false: originals only)
    pretrained: Bool = True            # ablation: false ignores model.mert_source/symbolic_source
    freeze: list[str] = []             # parts kept fixed (model.checkpoint.PARTS: audio_encoder, symbolic, ...)
    unfreeze_after_epochs: Int = 0     # ... for this many epochs (0: the whole run)
    # expert stage: weight of the feature model (gradient boosting on whole-performance descriptors, fit on the
    # train and val splits after training) in each recording's score; 0: the network alone
    # (pipelines/training/feature_model.py)
    feature_blend: Float = 0.0
    # the feature model's trees' predictions projected onto this many leading principal components of the
    # training ratings (0: each dimension's trees as they are); benchmarks/RESULTS.md, "percepiano"
    feature_rank: Int = 0
    # MiB: training and val datasets whose segment files total at most this (and at most a quarter of Ray's
    # object store) are read once and kept in the object store for every epoch, instead of being read from
    # the Parquet files again each epoch; 0: always read them each epoch (benchmarks/RESULTS.md, "train")
    cache_datasets_mib: Float = 1024.0

    @model_validator(mode="after")
    def _check_ranges(self) -> TrainConfig:
        _require(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        _require(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _require(self.grad_accum_steps >= 1, f"train.grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        for name in ("lr_audio", "lr_symbolic", "lr_head"):
            value = getattr(self, name)
            _require(0.0 <= value < 1.0, f"train.{name} must be in [0, 1), got {value}")
        _require(0.0 <= self.weight_decay < 1.0, f"train.weight_decay must be in [0, 1), got {self.weight_decay}")
        _require(0.0 <= self.warmup_fraction < 1.0,
                 f"train.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        _require(self.grad_clip > 0, f"train.grad_clip must be > 0, got {self.grad_clip}")
        _require(0.0 <= self.label_smoothing < 1.0,
                 f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        _require(self.num_workers >= 0, f"train.num_workers must be >= 0, got {self.num_workers}")
        _require(self.patience >= 1, f"train.patience must be >= 1, got {self.patience}")
        _require(self.dropout is None or 0.0 <= self.dropout < 1.0,
                 f"train.dropout must be in [0, 1), got {self.dropout}")
        from model.config import MODEL_PARTS
        unknown = [p for p in self.freeze if p not in MODEL_PARTS]
        _require(not unknown, f"train.freeze names unknown part {unknown[0] if unknown else ''!r}; "
                              f"choose from {', '.join(MODEL_PARTS)}")
        _require(self.feature_rank >= 0, f"train.feature_rank must be >= 0, got {self.feature_rank}")
        _require(self.cache_datasets_mib >= 0, f"train.cache_datasets_mib must be >= 0, got {self.cache_datasets_mib}")
        _require(0.0 <= self.feature_blend <= 1.0, f"train.feature_blend must be in [0, 1], got {self.feature_blend}")
        _require(self.unfreeze_after_epochs >= 0,
                 f"train.unfreeze_after_epochs must be >= 0, got {self.unfreeze_after_epochs}")
        return self


class ScoringConfig(_Section):
    """Scoring a library of recordings with a trained model (jobs/score.py): windows, limits, resources."""
    path: ClassVar[str] = "scoring"
    # scoring windows; None: the training windows (data.train_window_s), which the model was fitted on. Windows
    # other than the training ones cost accuracy (benchmarks/RESULTS.md, section percepiano: 25 s windows of a
    # 10 s model lose 0.03 R²); longer ones (the design's 20-30 s) cut MERT's cost per second of audio
    window_s: Float | None = None
    overlap: Float = C.WINDOW_OVERLAP
    span_windows: Int = 8              # windows per span row (MERT runs once per span; memory per row)
    batch_size: Int = 4                # windows (and MERT chunks) per forward call
    num_actors: Int = 1                # model actors (one GPU each with use_gpu)
    use_gpu: Bool = False
    actor_cpus: Float = 1.0            # CPUs per model actor
    prepare_cpus: Float = 1.0          # CPUs per decode/feature task
    min_duration_s: Float = C.MIN_DURATION_S
    max_duration_s: Float = 4 * 3600.0   # checked from the file header before decoding
    max_file_mb: Float = 4096.0        # checked from the listing before reading
    timeout_s: Float = 3600.0          # per recording, in the decode/feature stage
    max_retries: Int = 1               # retries of a task or actor call whose worker died
    curve_hop_s: Float = 1.0           # bin width of the attention curve
    low_confidence_sigma: Float = 15.0   # a dimension whose calibrated sigma exceeds this is flagged
    min_match_rate: Float = 0.4        # below this alignment F-measure a given score is set aside (see RESULTS.md)
    max_alignment_cells: Float = 1.5e8   # performed notes x score onsets: the note DTW's matrix (8 bytes a cell)
    rows_per_part: Int = 256           # result rows per Parquet part file

    @model_validator(mode="after")
    def _check_ranges(self) -> ScoringConfig:
        _require(self.window_s is None or 5.0 <= self.window_s <= 60.0,
                 f"scoring.window_s must be 5..60 s, got {self.window_s}")
        _require(0.0 <= self.overlap < 1.0, f"scoring.overlap must be in [0, 1), got {self.overlap}")
        _require(self.batch_size >= 1, f"scoring.batch_size must be >= 1, got {self.batch_size}")
        _require(self.span_windows >= 1, f"scoring.span_windows must be >= 1, got {self.span_windows}")
        _require(self.num_actors >= 1, f"scoring.num_actors must be >= 1, got {self.num_actors}")
        _require(0 < self.min_duration_s < self.max_duration_s,
                 f"scoring.min_duration_s must be > 0 and below max_duration_s, got {self.min_duration_s}")
        for name in ("max_file_mb", "timeout_s", "curve_hop_s", "low_confidence_sigma", "actor_cpus", "prepare_cpus"):
            _require(getattr(self, name) > 0, f"scoring.{name} must be > 0, got {getattr(self, name)}")
        _require(0 <= self.max_retries <= 5, f"scoring.max_retries must be 0..5, got {self.max_retries}")
        _require(0.0 <= self.min_match_rate <= 1.0,
                 f"scoring.min_match_rate must be in [0, 1], got {self.min_match_rate}")
        _require(self.rows_per_part >= 1, f"scoring.rows_per_part must be >= 1, got {self.rows_per_part}")
        _require(self.max_alignment_cells >= 1e4,
                 f"scoring.max_alignment_cells must be >= 1e4, got {self.max_alignment_cells}")
        return self


class Config(_Section):
    """The whole resolved run configuration; `to_dict` / `config_from_dict` round-trip it exactly."""
    name: str = "default"
    dimensions: str = "seed10"         # schema name or YAML path
    aggregate_weights: tuple[Float, ...] | None = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)

    @field_validator("dimensions")
    @classmethod
    def _known_schema(cls, value: str) -> str:
        load_schema(value)  # raises on an unknown schema
        return value

    @field_validator("model", mode="before")
    @classmethod
    def _model_scalars(cls, value: Any) -> Any:
        """pydantic reads ModelConfig's plain `bool` / `int` / `float` fields leniently: be strict here."""
        if isinstance(value, dict):
            for name, item in value.items():
                _check_model_scalar(name, item)
        return value

    @model_validator(mode="after")
    def _check_across_sections(self) -> Config:
        try:
            self.schema()
        except ConfigError as exc:
            raise ConfigError(f"aggregate_weights: {exc}") from None
        _require(self.model.max_notes >= self.data.max_notes,
                 f"model.max_notes ({self.model.max_notes}) is below data.max_notes ({self.data.max_notes})")
        if self.scoring.window_s is None:          # score on the windows the model is trained on
            object.__setattr__(self.scoring, "window_s", max(5.0, float(self.data.train_window_s)))
        return self

    def schema(self) -> DimensionSchema:  # type: ignore[override]  # replaces pydantic v1's deprecated classmethod
        schema = load_schema(self.dimensions)
        if self.aggregate_weights is not None:
            schema = schema.with_aggregate_weights(list(self.aggregate_weights))
        return schema

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON/YAML-able copy (tuples become lists) that `config_from_dict` rebuilds."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self) -> str:
        """A short hash of the resolved config (stable across runs)."""
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


# --- one-line errors -----------------------------------------------------------------------------

# pydantic error type (prefix) -> what the value should have been
_EXPECTED = {"int_": "an integer", "float_": "a number", "bool_as_number": "a number", "bool_": "true or false",
             "string_": "a string", "tuple_": "a list", "list_": "a list", "model_": "a mapping",
             "dataclass_": "a mapping", "dict_": "a mapping"}


def _check_model_scalar(name: str, value: Any) -> None:
    hint = field_hints().get(name)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"model.{name}: expected true or false, got {value!r}")
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"model.{name}: expected a number, got {value!r}")


def _field_types(cls: type) -> dict[str, Any]:
    """Field name -> type of a config section (pydantic model) or of ModelConfig (dataclass)."""
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return {name: info.annotation for name, info in cls.model_fields.items()}
    if cls is ModelConfig:
        return field_hints()
    return {}


def _known_keys(root: type, loc: tuple[int | str, ...]) -> list[str]:
    """The keys allowed in the section found by following `loc` from `root`."""
    cls: Any = root
    for part in loc:
        cls = _field_types(cls).get(str(part))
    return sorted(_field_types(cls))


def _dotted(root: type, loc: tuple[int | str, ...]) -> str:
    parts = [getattr(root, "path", "")] if getattr(root, "path", "") else []
    for item in loc:
        if isinstance(item, int) and parts:
            parts[-1] += f"[{item}]"
        else:
            parts.append(str(item))
    return ".".join(parts)


def _describe(error: ErrorDetails, root: type) -> str:
    """One pydantic error as one line: the dotted path of the key and what is wrong with its value."""
    kind, loc = error["type"], error["loc"]
    path = _dotted(root, loc)
    if kind in ("extra_forbidden", "unexpected_keyword_argument", "no_such_attribute"):
        return f"unknown config key {path} (known: {', '.join(_known_keys(root, loc[:-1]))})"
    if kind == "value_error":   # a range check: its message names the key already, or is prefixed here
        cause = error.get("ctx", {}).get("error", error["msg"])
        message = str(cause)
        named = isinstance(cause, _PathedError) or not path or message.startswith(path)
        return message if named else f"{path}: {message}"
    value = error.get("input")
    if kind == "missing":       # a fixed-length list with too few items
        return f"{path}: missing"
    if kind == "literal_error":
        return f"{path}: {value!r} is not one of {error.get('ctx', {}).get('expected')}"
    expected = next((text for prefix, text in _EXPECTED.items() if kind.startswith(prefix)), None)
    if expected:
        return f"{path}: expected {expected}, got {value!r}"
    return f"{path}: {error['msg']}".replace("\n", " ")


class _PathedError(ConfigError):
    """A ConfigError from a section's own validation: its message names full dotted paths already."""


def _config_error(exc: ValidationError, root: type) -> ConfigError:
    """One ConfigError for a pydantic ValidationError: every problem, `; `-separated, on one line."""
    return _PathedError("; ".join(_describe(error, root) for error in exc.errors()))


def _check_keys(data: Any, path: str = "") -> None:
    """Config keys are names (YAML also allows numbers and lists as keys)."""
    if isinstance(data, dict):
        for key, value in data.items():
            where = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                raise ConfigError(f"unknown config key {where}: keys are names")
            _check_keys(value, where)


def _build(cls: type[S], data: Any) -> S:
    """Validate `data` (a mapping) into config section `cls`, or raise one ConfigError."""
    where = getattr(cls, "path", "")
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    _check_keys(data, where)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, cls) from None


# --- presets, files, overrides -------------------------------------------------------------------

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
    if preset_or_path.startswith("s3://"):          # e.g. a sweep's best/config.yaml (tune/search.py)
        return _remote_layer(preset_or_path, seen)
    path = Path(preset_or_path)
    if preset_or_path in available_presets():
        path = PRESET_DIR / f"{preset_or_path}.yaml"
    elif path.is_dir() and (path / "config.yaml").is_file():    # a directory holding config.yaml (best/)
        path = path / "config.yaml"
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


def _remote_layer(uri: str, seen: tuple[str, ...]) -> dict:
    """A YAML config on S3 (`.../config.yaml`, or a prefix holding one)."""
    from pipelines.io import storage

    target = uri if uri.endswith((".yaml", ".yml")) else storage.join(uri, "config.yaml")
    if target in seen:
        raise ConfigError(f"{target}: preset chain loops back on itself")
    if not storage.exists(target):
        raise ConfigError(f"unknown config {uri!r}: no such YAML file")
    try:
        data = yaml.safe_load(storage.read_text(target)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{target}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{target}: a config file must hold a mapping")
    parent = data.pop("preset", None)
    if parent:
        data = _deep_merge(_layer(str(parent), seen + (target,)), data)
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
    return _build(Config, data)


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config saved with `Config.to_dict` (e.g. from a checkpoint)."""
    return _build(Config, data)


def save_config(config: Config, uri: str) -> None:
    """Write the resolved config as YAML to a URI (local or s3://)."""
    from pipelines.io import storage
    storage.write_text(uri, config.to_yaml())
