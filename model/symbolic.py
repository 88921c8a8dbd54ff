"""The symbolic encoder: a BERT-style transformer over OctupleMIDI notes and their performance attributes.

Each token is a note with 8 fields (type, bar, position, pitch, duration, velocity, instrument, time
signature; 0 = PAD in every field). One embedding table per field; the field embeddings are summed
into one vector per note, plus a linear projection of the aligned performance attributes (velocity,
timing and duration deviations, pedal; zeros where no performance is known). A `transformers.BertModel`
(post-norm layers, learned positions) reads these vectors as `inputs_embeds`.

Pretrained weights: `save_symbolic_encoder` writes `symbolic_encoder.pt` into a local directory;
`load_symbolic_weights` reads such a directory, a `.pt` file of that format, or a pianoeval
model checkpoint directory (its `symbolic.*` weights).
"""
from __future__ import annotations

import os

import torch
from torch import nn
from transformers import BertConfig, BertModel

from model.config import ModelConfig
from model.errors import CheckpointError
from model.hf import enable_activation_checkpointing
from model.masks import at_least_one, lengths_to_mask

SYMBOLIC_WEIGHTS_FILE = "symbolic_encoder.pt"
SYMBOLIC_FORMAT = "pianoeval-symbolic-encoder"
MODEL_WEIGHTS_FILE = "model.pt"      # a whole-model checkpoint (model/checkpoint.py)
EMBED_INIT_STD = 0.02                # BERT's initializer_range


class OctupleEmbedding(nn.Module):
    """(B, N, 8) tokens + (B, N, A) attributes -> (B, N, H): summed field embeddings + projected attributes."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.symbolic_hidden_size
        self.vocab_sizes = tuple(cfg.octuple_vocab_sizes)
        self.fields = nn.ModuleList([nn.Embedding(size, hidden, padding_idx=0) for size in self.vocab_sizes])
        self.attrs = nn.Linear(cfg.n_note_attrs, hidden)
        for table in self.fields:
            nn.init.normal_(table.weight, std=EMBED_INIT_STD)
            with torch.no_grad():
                table.weight[0].zero_()

    def forward(self, tokens: torch.Tensor, attrs: torch.Tensor | None) -> torch.Tensor:
        if tokens.shape[-1] != len(self.fields):
            raise ValueError(f"notes have {tokens.shape[-1]} fields per token; expected {len(self.fields)} "
                             "(OctupleMIDI)")
        if tokens.numel():
            too_big = tokens.amax(dim=(0, 1)) >= torch.tensor(self.vocab_sizes, device=tokens.device)
            if bool(too_big.any()) or bool((tokens < 0).any()):
                field = int(torch.nonzero(too_big)[0]) if bool(too_big.any()) else -1
                raise ValueError(f"note token out of range in field {field} (vocabulary sizes "
                                 f"{list(self.vocab_sizes)}); expected 0 <= token < size, 0 = PAD")
        x = sum(table(tokens[..., i]) for i, table in enumerate(self.fields))   # (B, N, H)
        if attrs is not None:
            if attrs.shape[-1] != self.attrs.in_features:
                raise ValueError(f"note_attrs has {attrs.shape[-1]} features; the model expects "
                                 f"{self.attrs.in_features} (model.n_note_attrs)")
            x = x + self.attrs(attrs.to(x.dtype))
        return x


class SymbolicEncoder(nn.Module):
    """Notes -> (B, N, symbolic_hidden_size) contextual note vectors; padding masked in attention."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.max_notes = cfg.max_notes
        self.embed = OctupleEmbedding(cfg)
        self.bert = BertModel(BertConfig(
            vocab_size=1,                                   # unused: notes enter as inputs_embeds
            hidden_size=cfg.symbolic_hidden_size,
            num_hidden_layers=cfg.symbolic_num_layers,
            num_attention_heads=cfg.symbolic_num_heads,
            intermediate_size=cfg.symbolic_intermediate_size,
            hidden_dropout_prob=cfg.symbolic_dropout,
            attention_probs_dropout_prob=cfg.symbolic_dropout,
            max_position_embeddings=cfg.max_notes,
            type_vocab_size=1,
        ), add_pooling_layer=False)
        self.bert.embeddings.word_embeddings.requires_grad_(False)
        if cfg.gradient_checkpointing:
            enable_activation_checkpointing(self.bert)

    @property
    def hidden_size(self) -> int:
        return self.bert.config.hidden_size

    def forward(self, notes: torch.Tensor, attrs: torch.Tensor | None, lengths: torch.Tensor) -> torch.Tensor:
        n = notes.shape[1]
        if n > self.max_notes:
            raise ValueError(f"{n} note tokens exceed model.max_notes={self.max_notes}")
        # an item without notes still attends to its first (PAD) token; the caller ignores its output
        mask = at_least_one(lengths_to_mask(lengths, n))                     # (B, N)
        x = self.embed(notes.long(), attrs)                                  # (B, N, H)
        return self.bert(inputs_embeds=x, attention_mask=mask.long()).last_hidden_state   # (B, N, H)


def save_symbolic_encoder(encoder: SymbolicEncoder, directory: str) -> str:
    """Write `symbolic_encoder.pt` (format tag + state dict) into a local directory; returns it."""
    payload = {"format": SYMBOLIC_FORMAT, "version": 1,
               "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()}}
    os.makedirs(directory, exist_ok=True)
    torch.save(payload, os.path.join(directory, SYMBOLIC_WEIGHTS_FILE))
    return directory


def _read_state(path: str, source: str) -> dict[str, torch.Tensor]:
    expected = (f"expected a directory holding {SYMBOLIC_WEIGHTS_FILE} (save_symbolic_encoder) or {MODEL_WEIGHTS_FILE} "
                "(a pianoeval model checkpoint), or such a .pt file")
    if os.path.isdir(path):
        for name in (SYMBOLIC_WEIGHTS_FILE, MODEL_WEIGHTS_FILE):
            if os.path.isfile(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise CheckpointError(f"{source}: no {SYMBOLIC_WEIGHTS_FILE} or {MODEL_WEIGHTS_FILE} there; {expected}")
    elif not os.path.isfile(path):
        raise CheckpointError(f"{source}: no such file or directory; {expected}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files
        raise CheckpointError(f"{source}: cannot read {os.path.basename(path)} ({exc}); {expected}") from None
    state = payload.get("state_dict") if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: {os.path.basename(path)} holds no state_dict; {expected}")
    if payload.get("format") != SYMBOLIC_FORMAT:       # a whole-model checkpoint: take its symbolic branch
        state = {k[len("symbolic."):]: v for k, v in state.items() if k.startswith("symbolic.")}
        if not state:
            raise CheckpointError(f"{source}: the checkpoint has no symbolic encoder weights; {expected}")
    return state


def load_symbolic_weights(encoder: SymbolicEncoder, source: str) -> None:
    """Load pretrained weights into `encoder`; CheckpointError names every missing or misshapen tensor."""
    state = _read_state(os.path.expanduser(source), source)
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = [f"{k} {tuple(state[k].shape)} (model: {tuple(own[k].shape)})"
                 for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or misshapen:
        parts = []
        if misshapen:
            parts.append(f"shape mismatch: {', '.join(misshapen[:3])}")
        if missing:
            parts.append(f"missing: {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected: {', '.join(unexpected[:3])}")
        raise CheckpointError(
            f"{source}: symbolic encoder weights do not fit the model config ({'; '.join(parts)}); expected "
            "weights saved from a SymbolicEncoder with the same symbolic_* sizes, octuple_vocab_sizes, "
            "n_note_attrs and max_notes")
    encoder.load_state_dict(state)
