"""A scoring checkpoint (tiny architecture, weights saved by the test) and a generated library of
recordings with every kind of input the nightly job meets: with and without a score, a mismatched score,
odd names, multi-channel, corrupt, empty, too short, too long and non-audio files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import soundfile as sf

from pipelines import constants as C


def save_checkpoint(directory: Path, audio_encoder: str = "cqt", seed: int = 0, **model) -> Path:
    """A checkpoint of the tiny preset (random weights; the tests check the pipeline, not the numbers)."""
    import torch

    from model.builder import build_model
    from model.checkpoint import save_model
    from pipelines.config import load_config

    torch.manual_seed(seed)
    overrides = [f"model.audio_encoder={audio_encoder}"] + [f"model.{k}={v}" for k, v in model.items()]
    config = load_config("tiny", overrides)
    net = build_model(config.model, config.schema(), pretrained=False)
    save_model(str(directory), net, config.to_dict(), config.schema(), {"stage": "expert"})
    return directory


def melody_midi(pitches: list[int], seconds_per_note: float = 0.4, program: int = 0) -> pretty_midi.PrettyMIDI:
    pm = pretty_midi.PrettyMIDI(initial_tempo=150)
    inst = pretty_midi.Instrument(program=program)
    t = 0.0
    for i, p in enumerate(pitches):
        inst.notes.append(pretty_midi.Note(velocity=70 + 20 * (i % 3 == 0), pitch=p, start=t,
                                           end=t + seconds_per_note * 0.9))
        inst.notes.append(pretty_midi.Note(velocity=50, pitch=p - 12, start=t, end=t + seconds_per_note * 0.9))
        t += seconds_per_note
    pm.instruments.append(inst)
    return pm


def render(pm: pretty_midi.PrettyMIDI) -> np.ndarray:
    from pipelines.features.render import render_midi
    return render_midi(pm, sample_rate=C.CQT_SAMPLE_RATE_HZ)


SCALE = [60, 62, 64, 65, 67, 69, 71, 72, 71, 69, 67, 65, 64, 62] * 6          # about 34 s
OTHER = [48, 55, 52, 59, 57, 64, 50, 61, 66, 47, 58, 63, 53, 60] * 6


def make_library(root: Path) -> dict[str, str]:
    """Write the library under `root`; returns {recording_id: expected status ('ok' or 'error:<kind>')}."""
    sr = C.CQT_SAMPLE_RATE_HZ
    root.mkdir(parents=True, exist_ok=True)
    scale = melody_midi(SCALE)
    scale_audio = render(scale)
    other_audio = render(melody_midi(OTHER))
    (root / "with score").mkdir()
    sf.write(root / "with score" / "scale one.wav", scale_audio, sr)
    scale.write(str(root / "with score" / "scale one.mid"))
    (root / "plain").mkdir()
    sf.write(root / "plain" / "Étude n°2 ü.flac", other_audio, sr)
    stereo = np.stack([scale_audio, 0.5 * scale_audio, 0.25 * scale_audio, scale_audio], axis=1)
    sf.write(root / "plain" / "four channels.wav", stereo, sr)
    (root / "wrong").mkdir()
    sf.write(root / "wrong" / "other piece.wav", other_audio, sr)
    scale.write(str(root / "wrong" / "other piece.mid"))           # the score of another piece
    (root / "bad").mkdir()
    (root / "bad" / "corrupt.mp3").write_bytes(np.random.default_rng(0).bytes(20_000))
    (root / "bad" / "empty.wav").write_bytes(b"")
    sf.write(root / "bad" / "short.wav", scale_audio[: int(0.3 * sr)], sr)
    long = np.tile(scale_audio, 2)[: int(75 * sr)]                   # over the tests' 60 s limit
    sf.write(root / "bad" / "long.wav", long, sr)
    (root / "notes.txt").write_text("not a recording")
    melody_midi(OTHER[:8]).write(str(root / "orphan score.mid"))
    return {
        "with score/scale one": "ok", "plain/Étude n°2 ü": "ok", "plain/four channels": "ok",
        "wrong/other piece": "ok", "bad/corrupt": "error:input", "bad/empty": "error:input",
        "bad/short": "error:input", "bad/long": "error:limit",
    }


@pytest.fixture(scope="session")
def scoring_checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture(scope="session")
def library(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("lib") / "library"
    return root, make_library(root)
