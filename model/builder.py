"""The one place where a ModelConfig becomes a PianoAssessor (with pretrained weights when asked)."""
from __future__ import annotations

from model.assessor import PianoAssessor
from model.config import ModelConfig
from model.mert import load_pretrained_hubert
from model.schema import DimensionSchema
from model.symbolic import load_symbolic_weights


def build_model(cfg: ModelConfig, schema: DimensionSchema, *, dropout: float | None = None,
                pretrained: bool = True) -> PianoAssessor:
    """Build the model described by `cfg` for `schema`'s dimensions, in training mode.

    dropout: when given, replaces every dropout the model owns (fusion, LSTM, heads, CQT and symbolic
        encoders); a pretrained MERT keeps its own.
    pretrained: load `cfg.mert_source` / `cfg.symbolic_source` when set; False initialises every part
        randomly with the config's shapes (ablations, tests, and rebuilding from a checkpoint).

    Loading MERT adopts the checkpoint's normalisation layout into `model.config` (see model/mert.py),
    which is what checkpoints then carry. Raises CheckpointError when a source is missing or does not fit.
    """
    if dropout is not None:
        cfg = cfg.dropout_overridden(dropout)        # a new ModelConfig: validated on construction
    hubert = None
    if pretrained and cfg.uses_mert and cfg.mert_source:
        hubert, cfg = load_pretrained_hubert(cfg)
    model = PianoAssessor(cfg, schema, hubert=hubert)
    if pretrained and model.symbolic is not None and cfg.symbolic_source:
        load_symbolic_weights(model.symbolic, cfg.symbolic_source)
    return model.train()
