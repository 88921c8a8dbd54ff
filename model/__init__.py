"""The assessment model: PyTorch + transformers only, local paths only, nothing from pipelines/.

    config.py      ModelConfig (every size and switch; checks its own ranges) and signal constants
    schema.py      dimension schemas (seed10, percepiano19, YAML) and the aggregate score
    mert.py        MERT-v1 as a transformers HubertModel, and the waveform encoder on it
    cqt.py         the light log-CQT encoder
    symbolic.py    the BERT-style OctupleMIDI encoder and its pretrained weights
    fusion.py      time-biased bidirectional cross-attention between audio and notes
    aggregation.py BiLSTM + multi-head attention pooling
    heads.py       per-dimension heads with a log sigma each
    assessor.py    PianoAssessor: the whole model and its typed output
    losses.py      the uncertainty-weighted multi-task loss (Kendall & Gal)
    builder.py     the one place where a ModelConfig becomes a model
    checkpoint.py  save and rebuild a model from a local directory
    errors.py      ConfigError, CheckpointError
    hf.py, masks.py  transformers loading options and activation checkpointing; padding masks
"""
