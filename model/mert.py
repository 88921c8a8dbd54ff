"""MERT-v1 as a transformers `HubertModel`, and the waveform encoder built on it.

MERT-v1-95M's checkpoint has HuBERT-base's module graph (its config sets `feature_extractor_cqt=False`
and `deepnorm=False`), so it loads into `transformers.HubertModel` without `trust_remote_code`: we read
its config.json, map it onto a `HubertConfig` built from our `ModelConfig` (checking the shapes), and call
`HubertModel.from_pretrained(source, config=mapped)`. A Hugging Face id and a local directory take that same
path (an s3:// prefix is downloaded to a local directory by pipelines.io.model_files first); a hub id is
loaded at a pinned revision (`model.mert_revision`, else `model.config.MERT_HUB_REVISIONS`), never at
whatever `main` holds.

MERT-v1-330M (24 x 1024) is HuBERT-large-like; its normalisation layout (`feat_extract_norm`,
`do_stable_layer_norm`, `conv_bias`) is taken from the checkpoint's config.json, whatever the preset says,
and the resolved values travel with the model's config into its checkpoints. `attention_relax` only
matters in MERT's deepnorm encoder (and there it shifts logits by their row maximum, which softmax
ignores), so it is accepted and ignored.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import HubertConfig, HubertModel, PretrainedConfig

from model.config import MERT_HUB_REVISIONS, MERT_SAMPLE_RATE_HZ, ModelConfig
from model.errors import CheckpointError
from model.hf import enable_activation_checkpointing, float32_loading_kwargs
from model.masks import lengths_to_mask, masked_mean_std

logger = logging.getLogger(__name__)

ACCEPTED_MODEL_TYPES = ("hubert", "mert_model")
# HubertConfig key -> ModelConfig field: the checkpoint must agree with the config on these.
SHAPE_FIELDS = {
    "hidden_size": "mert_hidden_size",
    "num_hidden_layers": "mert_num_layers",
    "num_attention_heads": "mert_num_heads",
    "intermediate_size": "mert_intermediate_size",
    "conv_dim": "mert_conv_dim",
    "conv_kernel": "mert_conv_kernel",
    "conv_stride": "mert_conv_stride",
    "num_conv_pos_embeddings": "mert_num_conv_pos_embeddings",
    "num_conv_pos_embedding_groups": "mert_num_conv_pos_embedding_groups",
}
# Normalisation layout: adopted from the checkpoint.
LAYOUT_FIELDS = {
    "feat_extract_norm": "mert_feat_extract_norm",
    "do_stable_layer_norm": "mert_do_stable_layer_norm",
    "conv_bias": "mert_conv_bias",
}
# Settings every supported checkpoint shares with HuBERT's defaults; anything else is refused.
FIXED_FIELDS = {"feat_proj_layer_norm": True, "hidden_act": "gelu", "feat_extract_activation": "gelu"}
# MERT flags that change the module graph away from HuBERT's.
NON_HUBERT_FLAGS = ("feature_extractor_cqt", "deepnorm")
INPUT_NORM_EPS = 1e-7          # as in Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm


def hubert_config(cfg: ModelConfig) -> HubertConfig:
    """The HubertConfig of the MERT branch described by `cfg`.

    SpecAugment and LayerDrop are off: the first is a pre-training device, the second leaves layers
    without gradients (which DDP rejects) and makes hidden states skip layers.
    """
    return HubertConfig(
        hidden_size=cfg.mert_hidden_size,
        num_hidden_layers=cfg.mert_num_layers,
        num_attention_heads=cfg.mert_num_heads,
        intermediate_size=cfg.mert_intermediate_size,
        conv_dim=list(cfg.mert_conv_dim),
        conv_kernel=list(cfg.mert_conv_kernel),
        conv_stride=list(cfg.mert_conv_stride),
        num_conv_pos_embeddings=cfg.mert_num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=cfg.mert_num_conv_pos_embedding_groups,
        feat_extract_norm=cfg.mert_feat_extract_norm,
        do_stable_layer_norm=cfg.mert_do_stable_layer_norm,
        conv_bias=cfg.mert_conv_bias,
        conv_pos_batch_norm=False,
        apply_spec_augment=False,
        mask_time_prob=0.0,
        mask_feature_prob=0.0,
        layerdrop=0.0,
    )


def _normalise(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def resolve_checkpoint_config(cfg: ModelConfig, raw: dict[str, Any], source: str) -> ModelConfig:
    """Check a checkpoint's config.json against `cfg`; return `cfg` with the checkpoint's layout adopted.

    Raises CheckpointError naming what was expected when the checkpoint is not a HuBERT-graph model or its
    shape differs from the config.
    """
    model_type = raw.get("model_type")
    if model_type not in ACCEPTED_MODEL_TYPES:
        raise CheckpointError(
            f"{source}: config.json has model_type {model_type!r}; expected a HuBERT-graph checkpoint "
            f"(model_type one of {', '.join(ACCEPTED_MODEL_TYPES)}, e.g. m-a-p/MERT-v1-95M)")
    for flag in NON_HUBERT_FLAGS:
        if raw.get(flag):
            raise CheckpointError(
                f"{source}: config.json sets {flag}=true, which is not HuBERT's module graph; expected "
                f"{flag}=false as in MERT-v1-95M and MERT-v1-330M")
    defaults = HubertConfig().to_dict()
    merged = {**{k: defaults[k] for k in (*SHAPE_FIELDS, *LAYOUT_FIELDS, *FIXED_FIELDS)}, **raw}
    for key, expected in FIXED_FIELDS.items():
        if merged[key] != expected:
            raise CheckpointError(f"{source}: config.json sets {key}={merged[key]!r}; expected {expected!r} "
                                  "(HuBERT/MERT-v1 setting; other values are not supported)")
    mismatches = []
    for key, field in SHAPE_FIELDS.items():
        found, wanted = _normalise(merged[key]), getattr(cfg, field)
        if found != wanted:
            mismatches.append(f"{key}={list(found) if isinstance(found, tuple) else found} "
                              f"(model.{field} is {list(wanted) if isinstance(wanted, tuple) else wanted})")
    if mismatches:
        raise CheckpointError(
            f"{source}: checkpoint shape does not match the model config: {'; '.join(mismatches)}. Set those "
            "model.* keys to the checkpoint's values or use the matching preset (mert-v1-95m: 12 x 768, "
            "mert-v1-330m: 24 x 1024)")
    if merged["feat_extract_norm"] not in ("group", "layer"):
        raise CheckpointError(f"{source}: config.json sets feat_extract_norm={merged['feat_extract_norm']!r}; "
                              "expected 'group' or 'layer'")
    layout = {field: merged[key] for key, field in LAYOUT_FIELDS.items()}
    changed = {field: value for field, value in layout.items() if getattr(cfg, field) != value}
    if changed:
        logger.warning("%s: adopting the checkpoint's normalisation layout %s", source, changed)
    return dataclasses.replace(cfg, **layout)


def _looks_like_hub_id(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith(("/", ".", "~"))


def pretrained_location(source: str) -> str:
    """A name `from_pretrained` can read: a hub id or a local directory (s3:// is fetched by the caller)."""
    if "://" in source:
        raise CheckpointError(f"{source}: model/ loads a Hugging Face id or a local directory; fetch remote "
                              "URIs first (pipelines.io.model_files.build_model_from_sources does)")
    if os.path.isdir(os.path.expanduser(source)):
        return os.path.expanduser(source)
    if _looks_like_hub_id(source):
        return source
    raise CheckpointError(f"{source}: no such directory; expected a Hugging Face id (m-a-p/MERT-v1-95M), an "
                          "s3:// prefix or a local directory with config.json and pytorch_model.bin or "
                          "model.safetensors (a HuBERT/MERT checkpoint saved with save_pretrained)")


def hub_revision(cfg: ModelConfig) -> str:
    """The hub revision a hub-id `mert_source` loads: `model.mert_revision`, else the pinned commit of
    MERT_HUB_REVISIONS; CheckpointError for another hub id without a revision."""
    if cfg.mert_revision:
        return cfg.mert_revision
    pinned = MERT_HUB_REVISIONS.get(str(cfg.mert_source))
    if pinned is None:
        raise CheckpointError(f"{cfg.mert_source}: a Hugging Face id needs model.mert_revision (a commit sha; "
                              "'main' takes whatever the hub serves that day)")
    return pinned


def load_pretrained_hubert(cfg: ModelConfig) -> tuple[HubertModel, ModelConfig]:
    """Load `cfg.mert_source` into a HubertModel; returns it and `cfg` with the checkpoint's layout.

    A hub id loads at `hub_revision(cfg)` (config.json and weights alike); a directory as it is."""
    source = cfg.mert_source
    if not source:
        raise CheckpointError("model.mert_source is empty; expected a Hugging Face id, s3:// prefix or directory")
    expected = ("expected a HuBERT-graph checkpoint (config.json plus pytorch_model.bin or model.safetensors), "
                "e.g. m-a-p/MERT-v1-95M or a directory written by HubertModel.save_pretrained")
    where = pretrained_location(source)
    hub = {} if os.path.isdir(where) else {"revision": hub_revision(cfg)}
    try:
        raw, _ = PretrainedConfig.get_config_dict(where, **hub)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{source}: cannot read config.json ({_first_line(exc)}); {expected}") from None
    if not raw:
        raise CheckpointError(f"{source}: cannot read config.json (not found); {expected}")
    resolved = resolve_checkpoint_config(cfg, raw, source)
    try:
        hubert, info = HubertModel.from_pretrained(where, config=hubert_config(resolved), output_loading_info=True,
                                                   **hub, **float32_loading_kwargs())
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{source}: cannot load the weights ({_first_line(exc)}); {expected}") from None
    missing = sorted(info.get("missing_keys", ()))
    mismatched = list(info.get("mismatched_keys", ()))
    if missing or mismatched:
        detail = f"missing {missing[:4]}" if missing else f"wrong shapes {mismatched[:4]}"
        raise CheckpointError(f"{source}: {len(missing) + len(mismatched)} weights of the HuBERT graph are not in "
                              f"the checkpoint ({detail}); {expected}")
    if info.get("unexpected_keys"):
        logger.info("%s: ignoring %d checkpoint tensors outside HuBERT's graph: %s", source,
                    len(info["unexpected_keys"]), sorted(info["unexpected_keys"])[:4])
    return hubert, resolved


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class MertEncoder(nn.Module):
    """MERT/HuBERT on the raw waveform, summarised by a learned softmax-weighted sum of all hidden states.

    forward: (B, S) 24 kHz waveform, (B,) valid samples -> (B, T, H) features, (B,) valid frames, where
    T is the conv stack's output length (75 frames/s for MERT-v1). Frame f is centred on sample
    f * hop + (receptive_field - 1) / 2.

    The GroupNorm of HuBERT-base's first conv layer normalises over time, so padding would change every
    frame: a batch of unequal lengths runs the model once per distinct length (equal-length batches, the
    usual training case, run in one call). A LayerNorm front end runs in one call with an attention mask.
    """

    def __init__(self, cfg: ModelConfig, hubert: HubertModel | None = None):
        super().__init__()
        self.hubert = hubert if hubert is not None else HubertModel(hubert_config(cfg))
        self.layer_logits = nn.Parameter(torch.zeros(cfg.mert_num_layers + 1))   # one per hidden state
        self.normalize_input = cfg.mert_normalize_input
        self.pads_by_mask = cfg.mert_feat_extract_norm == "layer"
        self.min_samples = cfg.mert_receptive_field_samples
        self.hop_samples = cfg.mert_hop_samples
        self.frame_rate_hz = cfg.mert_frames_per_s
        if cfg.freeze_audio_backbone:
            self.hubert.requires_grad_(False)
        if cfg.freeze_audio_backbone or cfg.freeze_feature_encoder:
            self.hubert.feature_extractor._freeze_parameters()
        if cfg.gradient_checkpointing:
            enable_activation_checkpointing(self.hubert)

    @property
    def hidden_size(self) -> int:
        return self.hubert.config.hidden_size

    def frame_times(self, n_frames: int, device: torch.device) -> torch.Tensor:
        """(T,) centre of each frame in seconds from the window start."""
        centre = (torch.arange(n_frames, device=device) * self.hop_samples + (self.min_samples - 1) / 2)
        return centre / MERT_SAMPLE_RATE_HZ

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.hubert._get_feat_extract_output_lengths(lengths).to(torch.long)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = lengths.to(torch.long).clamp(max=audio.shape[1])
        if bool((lengths < self.min_samples).any()):
            short = int(lengths.min())
            raise ValueError(f"an audio item has {short} valid samples; MERT needs at least {self.min_samples} "
                             f"({self.min_samples / MERT_SAMPLE_RATE_HZ * 1000:.1f} ms at {MERT_SAMPLE_RATE_HZ} Hz)")
        audio = audio[:, : int(lengths.max())]                               # (B, S)
        valid = lengths_to_mask(lengths, audio.shape[1])                     # (B, S)
        audio = audio.float()
        if self.normalize_input:
            mean, std = masked_mean_std(audio, valid, INPUT_NORM_EPS)
            audio = (audio - mean) / std
        audio = audio * valid                                                # padding is exactly zero
        frames = self.frame_lengths(lengths)                                 # (B,)
        if bool((lengths == audio.shape[1]).all()):
            features = self._encode(audio, None)
        elif self.pads_by_mask:
            features = self._encode(audio, valid.long())
        else:
            features = self._encode_by_length(audio, lengths, int(frames.max()))
        return features, frames                                              # (B, T, H), (B,)

    def _encode(self, audio: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        out = self.hubert(audio, attention_mask=attention_mask, output_hidden_states=True)
        hidden = out.hidden_states                                           # L+1 x (B, T, H)
        if len(hidden) != self.layer_logits.numel():
            raise RuntimeError(f"HubertModel returned {len(hidden)} hidden states; expected "
                               f"{self.layer_logits.numel()} (layers + 1)")
        weights = torch.softmax(self.layer_logits.float(), dim=0).to(hidden[0].dtype)
        return sum(w * h for w, h in zip(weights, hidden))                   # (B, T, H)

    def _encode_by_length(self, audio: torch.Tensor, lengths: torch.Tensor, n_frames: int) -> torch.Tensor:
        parts, order = [], []
        for length in torch.unique(lengths).tolist():
            index = torch.nonzero(lengths == length).squeeze(1)
            feats = self._encode(audio[index, :length], None)               # (b, t, H)
            parts.append(F.pad(feats, (0, 0, 0, n_frames - feats.shape[1])))
            order.append(index)
        stacked = torch.cat(parts)                                           # (B, T, H) in group order
        inverse = torch.argsort(torch.cat(order))
        return stacked[inverse]
