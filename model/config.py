"""ModelConfig: every size and switch of the assessment model, typed and validated.

A stdlib dataclass (model/ depends on torch and transformers, not pydantic) that checks its choices,
ranges and the sizes that must fit together on construction (`__post_init__`) and raises a one-line
`ConfigError`; `from_dict` / `to_dict` convert to and from plain dicts (YAML, a checkpoint's JSON).
Value types are checked where values come from users: the run config (pipelines/config.py) validates
its `model:` section with pydantic against these field types.

Presets (`tiny`, `mert-v1-95m`, `mert-v1-330m`) live in pipelines/presets/*.yaml as overrides of these
defaults. Derived sizes are properties. `model/` does not import `pipelines/`: the few signal facts the
model needs (sample rate, CQT frame rate, OctupleMIDI vocabulary) are repeated here and a test checks
that they equal `pipelines.constants`.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Literal

from model.errors import ConfigError

# The model's parts and the state-dict prefixes of each: what `train.freeze` names and what initialising
# from another checkpoint reports (model/checkpoint.py: transfer_state)
MODEL_PARTS: dict[str, tuple[str, ...]] = {
    "audio_encoder": ("mert.", "mert_proj.", "cqt.", "cqt_proj."),
    "symbolic": ("symbolic.", "score_proj."),
    "fusion": ("fusion.",),
    "aggregation": ("aggregator.", "input_stats.", "recording_stats."),
    "shared_head": ("heads.shared.",),
    "heads": ("heads.dims.", "heads.log_sigma_head.", "heads.task_log_sigma", "heads.log_sigma"),
}

# The hub commits the MERT presets load (model.mert_revision overrides): a hub id names a repository whose
# `main` can change under a run (new weights, new config.json, new code), so a load is pinned to a commit.
MERT_HUB_REVISIONS: dict[str, str] = {
    "m-a-p/MERT-v1-95M": "12af15fef9d0ac838c3f475bfbbf26d2060dd4f5",
    "m-a-p/MERT-v1-330M": "5240c2708a5acaee1007f43fb9735c7dcd0b78c9",
}

# Must equal pipelines.constants.OCTUPLE_VOCAB_SIZES / N_PERF_ATTRS (checked by tests).
DEFAULT_OCTUPLE_VOCAB_SIZES = (7, 258, 386, 90, 387, 130, 131, 98)
DEFAULT_N_NOTE_ATTRS = 10
OCTUPLE_N_SPECIAL = 2                            # PAD and MASK precede every field's values
OCTUPLE_TICKS_PER_QUARTER = 24
OCTUPLE_TS_DENOMINATORS = (1, 2, 4, 8, 16, 32)
# Must equal pipelines.constants.MERT_SAMPLE_RATE_HZ / CQT_FRAMES_PER_S (checked by tests).
MERT_SAMPLE_RATE_HZ = 24_000                     # MERT-v1 input rate, Hz
CQT_FRAMES_PER_S = 44_100 / 512                  # log-CQT frame rate (44.1 kHz, hop 512), ~86.13 Hz


def _require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless `condition` holds."""
    if not condition:
        raise ConfigError(message)


@dataclasses.dataclass
class ModelConfig:
    """Checked on construction (`__post_init__`): a ModelConfig that exists is a valid one."""
    # --- audio branch ---
    # mert: MERT/HuBERT on the 24 kHz waveform; cqt: the light CQT encoder; both: their sum on MERT's
    # time axis; none: a score-only model (the symbolic branch alone).
    audio_encoder: Literal["mert", "cqt", "both", "none"] = "mert"
    # MERT / HuBERT: a Hugging Face id (m-a-p/MERT-v1-95M), a local or s3:// directory, or null for a
    # randomly initialised model of the shape below.
    mert_source: str | None = None
    # Revision of a Hugging Face id in mert_source: a commit sha pins the weights and config.json; a branch or
    # tag ("main") takes whatever the hub serves on the day. null: the pinned commit of MERT_HUB_REVISIONS for
    # the MERT-v1 ids (any other hub id is then refused). Ignored for local and s3:// directories.
    mert_revision: str | None = None
    mert_hidden_size: int = 768
    mert_num_layers: int = 12
    mert_num_heads: int = 12
    mert_intermediate_size: int = 3072
    mert_conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    mert_conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    mert_conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    mert_num_conv_pos_embeddings: int = 128
    mert_num_conv_pos_embedding_groups: int = 16
    # Normalisation layout of the checkpoint: HuBERT-base / MERT-v1-95M use a GroupNorm conv front end
    # and post-norm transformer layers; HuBERT-large-like checkpoints use LayerNorm everywhere
    # ("layer" + stable layer norm). Loading a checkpoint adopts its values (the checkpoint's
    # config.json decides) and the resolved values are saved with the model.
    mert_feat_extract_norm: Literal["group", "layer"] = "group"
    mert_do_stable_layer_norm: bool = False
    mert_conv_bias: bool = False
    # zero-mean, unit-variance normalisation of each waveform over its valid samples, as MERT's
    # feature extractor (Wav2Vec2FeatureExtractor, do_normalize=True) does
    mert_normalize_input: bool = True
    freeze_feature_encoder: bool = True
    freeze_audio_backbone: bool = False
    gradient_checkpointing: bool = False
    # light CQT encoder (log-magnitude CQT, 168 bins)
    cqt_bins: int = 168
    cqt_channels: int = 32
    cqt_hidden_size: int = 256
    cqt_layers: int = 2
    cqt_dropout: float = 0.1
    # average every k audio frames before fusion and the BiLSTM (75 Hz MERT / 86 Hz CQT -> 25 / 21.5 Hz
    # at k=3 / 4): the recurrence over 10 s becomes 4x shorter; attention curves keep k/frame-rate resolution
    audio_pool_frames: int = 1
    # --- symbolic branch ---
    symbolic_encoder: bool = True
    symbolic_source: str | None = None
    symbolic_hidden_size: int = 256
    symbolic_num_layers: int = 6
    symbolic_num_heads: int = 4
    symbolic_intermediate_size: int = 1024
    symbolic_dropout: float = 0.1
    octuple_vocab_sizes: tuple[int, ...] = DEFAULT_OCTUPLE_VOCAB_SIZES
    n_note_attrs: int = DEFAULT_N_NOTE_ATTRS
    # ablation: false zeroes the aligned performance attributes (timing, duration and pedal against the score,
    # ...) wherever the model reads them; the tokens keep the note's type (played, missed, extra) and velocity
    performance_attributes: bool = True
    max_notes: int = 512
    # --- fusion ---
    fusion_dim: int = 256
    fusion_heads: int = 8
    fusion_dropout: float = 0.1
    fusion_time_bias: bool = True      # learned relative time-offset bias in the cross-attention
    # --- aggregation ---
    # lstm_attention: a BiLSTM over the fused sequence, then multi-head attention pooling (the seed's design);
    # attention: attention pooling over a per-step projection (no recurrence); mean: mean and standard
    # deviation of a per-step projection over the valid steps (statistics pooling; uniform attention curve)
    aggregation: Literal["lstm_attention", "attention", "mean"] = "lstm_attention"
    lstm_hidden_size: int = 256
    lstm_layers: int = 2
    lstm_dropout: float = 0.2
    pool_heads: int = 4
    # input statistics (model/statistics.py): global descriptors of the window's notes (attribute means and
    # spreads, note density, absolute tempo, register) through a small MLP, added to the pooled vector
    input_statistics: bool = False
    # recording statistics (model/statistics.py): the same descriptors over every window of the recording
    # (their mean and spread across windows), computed by the preprocessing and the scoring job, through a
    # small MLP added to the pooled vector: a window sees the whole performance's loudness range, pace and pedal
    recording_statistics: bool = False
    # --- heads ---
    head_shared_size: int = 256
    head_hidden_size: int = 128
    head_dropout: float = 0.1
    # aleatoric sigma: per_item predicts log sigma per input and dimension from the heads' shared trunk
    # (Kendall & Gal's heteroscedastic form); per_dimension learns one log sigma per dimension for every
    # input (homoscedastic; checkpoints written before this field load as per_dimension)
    sigma_head: Literal["per_item", "per_dimension"] = "per_item"

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from a plain dict (YAML, a checkpoint's JSON): unknown keys are errors, lists become tuples."""
        if not isinstance(data, dict):
            raise ConfigError(f"model: expected a mapping, got {data!r}")
        hints = field_hints()
        unknown = sorted(set(data) - set(hints))
        if unknown:
            raise ConfigError(f"unknown config key model.{unknown[0]} (known: {', '.join(sorted(hints))})")
        return cls(**{name: tuple(value) if isinstance(value, list) and typing.get_origin(hints[name]) is tuple
                      else value for name, value in data.items()})

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON/YAML-able copy (tuples become lists) that `from_dict` rebuilds."""
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in dataclasses.asdict(self).items()}

    @property
    def pooled_size(self) -> int:
        return 2 * self.lstm_hidden_size

    @property
    def mert_hop_samples(self) -> int:
        hop = 1
        for s in self.mert_conv_stride:
            hop *= s
        return hop

    @property
    def mert_frames_per_s(self) -> float:
        """MERT frame rate in Hz (75 for the v1 front end at 24 kHz)."""
        return MERT_SAMPLE_RATE_HZ / self.mert_hop_samples

    @property
    def mert_receptive_field_samples(self) -> int:
        """Samples seen by one MERT frame (400 for the v1 front end); also the shortest usable input."""
        field, jump = 1, 1
        for kernel, stride in zip(self.mert_conv_kernel, self.mert_conv_stride):
            field += (kernel - 1) * jump
            jump *= stride
        return field

    @property
    def uses_mert(self) -> bool:
        return self.audio_encoder in ("mert", "both")

    @property
    def uses_cqt(self) -> bool:
        return self.audio_encoder in ("cqt", "both")

    @property
    def uses_audio(self) -> bool:
        return self.audio_encoder != "none"

    def mert_frames(self, n_samples: int) -> int:
        """Frames MERT yields for `n_samples` of audio (the conv stack's output length)."""
        length = n_samples
        for kernel, stride in zip(self.mert_conv_kernel, self.mert_conv_stride):
            length = (length - kernel) // stride + 1
        return max(length, 0)

    def dropout_overridden(self, dropout: float) -> "ModelConfig":
        """A copy with every dropout this model owns set to `dropout` (the pretrained MERT keeps its own)."""
        return dataclasses.replace(self, fusion_dropout=dropout, lstm_dropout=dropout, head_dropout=dropout,
                                   cqt_dropout=dropout, symbolic_dropout=dropout)

    def validate(self) -> None:
        """Raise ConfigError (one line) on a value of the wrong type or range, or sizes that do not fit."""
        self._check_choices()
        if self.mert_revision is not None:
            _require(isinstance(self.mert_revision, str) and self.mert_revision.strip() == self.mert_revision != ""
                     and ".." not in self.mert_revision,
                     f"mert_revision must be a commit sha, tag or branch name, got {self.mert_revision!r}")
        _require(len(self.mert_conv_dim) == len(self.mert_conv_kernel) == len(self.mert_conv_stride),
                 "mert_conv_dim, mert_conv_kernel and mert_conv_stride must have the same length "
                 f"(got {len(self.mert_conv_dim)}, {len(self.mert_conv_kernel)}, {len(self.mert_conv_stride)})")
        _require(self.mert_hidden_size % self.mert_num_heads == 0,
                 f"mert_hidden_size {self.mert_hidden_size} is not divisible by mert_num_heads {self.mert_num_heads}")
        _require(self.mert_hidden_size % self.mert_num_conv_pos_embedding_groups == 0,
                 f"mert_hidden_size {self.mert_hidden_size} is not divisible by mert_num_conv_pos_embedding_groups "
                 f"{self.mert_num_conv_pos_embedding_groups}")
        _require(self.symbolic_hidden_size % self.symbolic_num_heads == 0,
                 f"symbolic_hidden_size {self.symbolic_hidden_size} is not divisible by symbolic_num_heads "
                 f"{self.symbolic_num_heads}")
        _require(self.fusion_dim % self.fusion_heads == 0,
                 f"fusion_dim {self.fusion_dim} is not divisible by fusion_heads {self.fusion_heads}")
        _require(self.pooled_size % self.pool_heads == 0,
                 f"2*lstm_hidden_size {self.pooled_size} is not divisible by pool_heads {self.pool_heads}")
        _require(len(self.octuple_vocab_sizes) == 8, "octuple_vocab_sizes must list 8 fields")
        _require(all(v >= 2 for v in self.octuple_vocab_sizes), "octuple_vocab_sizes must each be >= 2 (PAD, MASK)")
        _require(self.cqt_bins % 4 == 0,
                 f"cqt_bins must be divisible by 4 (two 2x frequency poolings), got {self.cqt_bins}")
        for name in ("fusion_dropout", "lstm_dropout", "head_dropout", "cqt_dropout", "symbolic_dropout"):
            value = getattr(self, name)
            _require(0.0 <= value < 1.0, f"{name} must be in [0, 1), got {value}")
        _require(self.audio_pool_frames >= 1, f"audio_pool_frames must be at least 1, got {self.audio_pool_frames}")
        for name in ("mert_num_layers", "cqt_layers", "symbolic_num_layers", "lstm_layers", "max_notes",
                     "cqt_channels", "cqt_hidden_size", "fusion_dim", "head_shared_size", "head_hidden_size",
                     "n_note_attrs"):
            _require(getattr(self, name) >= 1, f"{name} must be at least 1, got {getattr(self, name)}")
        _require(self.audio_encoder != "none" or self.symbolic_encoder,
                 "audio_encoder is 'none' and symbolic_encoder is off: the model would have no input")

    def _check_choices(self) -> None:
        for name, hint in field_hints().items():
            choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else None
            if choices and getattr(self, name) not in choices:
                raise ConfigError(f"{name}: {getattr(self, name)!r} is not one of {', '.join(map(repr, choices))}")


@functools.cache
def field_hints() -> dict[str, Any]:
    """ModelConfig's field name -> resolved type hint."""
    hints = typing.get_type_hints(ModelConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(ModelConfig)}
