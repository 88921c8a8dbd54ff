"""ModelConfig: every size and switch of the assessment model, typed and validated.

Presets (`tiny`, `mert-v1-95m`, `mert-v1-330m`) live in pipelines/presets/*.yaml as overrides of these
defaults. Derived sizes are properties.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

from model.typed_config import require

# Must equal pipelines.constants.OCTUPLE_VOCAB_SIZES / N_PERF_ATTRS (checked by tests).
DEFAULT_OCTUPLE_VOCAB_SIZES = (7, 258, 386, 90, 387, 130, 131, 98)
DEFAULT_N_NOTE_ATTRS = 10


@dataclasses.dataclass
class ModelConfig:
    # --- audio branch ---
    audio_encoder: Literal["mert", "cqt", "both", "none"] = "mert"
    # MERT / HuBERT: a Hugging Face id (m-a-p/MERT-v1-95M), a local or s3:// directory, or null for a
    # randomly initialised model of the shape below.
    mert_source: str | None = None
    mert_hidden_size: int = 768
    mert_num_layers: int = 12
    mert_num_heads: int = 12
    mert_intermediate_size: int = 3072
    mert_conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    mert_conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    mert_conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    mert_num_conv_pos_embeddings: int = 128
    mert_num_conv_pos_embedding_groups: int = 16
    freeze_feature_encoder: bool = True
    freeze_audio_backbone: bool = False
    gradient_checkpointing: bool = False
    # light CQT encoder (log-magnitude CQT, 168 bins)
    cqt_bins: int = 168
    cqt_channels: int = 32
    cqt_hidden_size: int = 256
    cqt_layers: int = 2
    # --- symbolic branch ---
    symbolic_encoder: bool = True
    symbolic_source: str | None = None
    symbolic_hidden_size: int = 256
    symbolic_num_layers: int = 6
    symbolic_num_heads: int = 4
    symbolic_intermediate_size: int = 1024
    octuple_vocab_sizes: tuple[int, ...] = DEFAULT_OCTUPLE_VOCAB_SIZES
    n_note_attrs: int = DEFAULT_N_NOTE_ATTRS
    max_notes: int = 512
    # --- fusion ---
    fusion_dim: int = 256
    fusion_heads: int = 8
    fusion_dropout: float = 0.1
    # --- aggregation ---
    lstm_hidden_size: int = 256
    lstm_layers: int = 2
    lstm_dropout: float = 0.2
    pool_heads: int = 4
    # --- heads ---
    head_shared_size: int = 256
    head_hidden_size: int = 128
    head_dropout: float = 0.1

    @property
    def pooled_size(self) -> int:
        return 2 * self.lstm_hidden_size

    @property
    def mert_hop_samples(self) -> int:
        hop = 1
        for s in self.mert_conv_stride:
            hop *= s
        return hop

    def validate(self) -> None:
        require(len(self.mert_conv_dim) == len(self.mert_conv_kernel) == len(self.mert_conv_stride),
                "mert_conv_dim, mert_conv_kernel and mert_conv_stride must have the same length "
                f"(got {len(self.mert_conv_dim)}, {len(self.mert_conv_kernel)}, {len(self.mert_conv_stride)})")
        require(self.mert_hidden_size % self.mert_num_heads == 0,
                f"mert_hidden_size {self.mert_hidden_size} is not divisible by mert_num_heads {self.mert_num_heads}")
        require(self.symbolic_hidden_size % self.symbolic_num_heads == 0,
                f"symbolic_hidden_size {self.symbolic_hidden_size} is not divisible by symbolic_num_heads "
                f"{self.symbolic_num_heads}")
        require(self.fusion_dim % self.fusion_heads == 0,
                f"fusion_dim {self.fusion_dim} is not divisible by fusion_heads {self.fusion_heads}")
        require(self.pooled_size % self.pool_heads == 0,
                f"2*lstm_hidden_size {self.pooled_size} is not divisible by pool_heads {self.pool_heads}")
        require(len(self.octuple_vocab_sizes) == 8, "octuple_vocab_sizes must list 8 fields")
        for name in ("fusion_dropout", "lstm_dropout", "head_dropout"):
            value = getattr(self, name)
            require(0.0 <= value < 1.0, f"{name} must be in [0, 1), got {value}")
        for name in ("mert_num_layers", "cqt_layers", "symbolic_num_layers", "lstm_layers", "max_notes"):
            require(getattr(self, name) >= 1, f"{name} must be at least 1, got {getattr(self, name)}")
        require(self.audio_encoder != "none" or self.symbolic_encoder,
                "audio_encoder is 'none' and symbolic_encoder is off: the model would have no input")
