"""Training-only audio augmentation with labels kept consistent.

Six transforms, applied in signal-chain order, each with its own probability from `AugmentConfig`,
at most `max_transforms` per example (when more are drawn, a random subset of that size is kept):

| name | what | library |
| --- | --- | --- |
| pitch_shift | whole semitones in [-n, n] \\ {0}, tempo kept | Signalsmith Stretch (`python-stretch`) |
| time_stretch | rate in [min, max]; > 1 is faster, output length = input / rate, pitch kept | Signalsmith Stretch |
| reverb | convolution with one of `n_rooms` generated room impulse responses | scipy (oaconvolve) |
| gain | +- `gain_db` dB | numpy |
| noise | white Gaussian noise at an SNR in [min, max] dB of the clip's mean power | numpy |
| mp3 | MP3 encode (pedalboard's LAME) and gapless decode (soundfile) at 128-320 kbps | pedalboard, soundfile |

Pitch shift and time stretch run as one Signalsmith pass when both are drawn. Signalsmith was chosen
over Rubber Band (`pedalboard.time_stretch`) because its output stays aligned with the input: onsets of
a 60 s test signal moved by a constant -1..-8 ms after +-2 semitones or 0.85-1.15x, while Rubber Band's
drifted by up to 66 ms over the minute, which would break the note labels.

Room impulse responses: no package ships RIRs offline, so `n_rooms` spaces are generated from the
config seed, small rooms to a hall (RT60 0.25-2.2 s, direct-to-reverberant ratio +10 to 0 dB): a unit
direct impulse at t = 0 (so onsets do not move), 6-14 early reflections in the first 3-40 ms, and an
exponentially decaying noise tail whose high band decays faster than the low band (air and wall
absorption). `room_impulse_response` documents the model.

The output is peak-normalised back to PEAK_TARGET_DBFS, so gain alone is neutral: it matters only
through what follows it (the MP3 encoder saturates above full scale). `AugmentInfo` records every
drawn parameter; `transform_perf_notes`, `transform_pedal` and `transform_score_notes` move the labels
with the audio (pitch shift and time stretch are the only transforms that change them).
"""
from __future__ import annotations

import dataclasses
import functools
import io

import numpy as np
import scipy.signal
import soundfile as sf

from pipelines import constants as C
from pipelines.config import AugmentConfig
from pipelines.io.audio import AudioError, peak_normalise, resample
from pipelines.io.notes import PEDAL_DTYPE, PERF_NOTE_DTYPE, SCORE_NOTE_DTYPE

TRANSFORMS = ("pitch_shift", "time_stretch", "reverb", "gain", "noise", "mp3")   # application order
MP3_BITRATES_KBPS = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)   # MPEG-1 Layer III
MP3_SAMPLE_RATES_HZ = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
ROOM_RT60_RANGE_S = (0.25, 2.2)
ROOM_DRR_RANGE_DB = (10.0, 0.0)        # direct-to-reverberant ratio, smallest room first
ROOM_MAX_RIR_S = 3.0


@dataclasses.dataclass
class AugmentInfo:
    """What one call applied; enough to replay it (`Augmenter.apply`) and to move the labels."""
    pitch_shift_semitones: int = 0
    time_stretch_rate: float = 1.0        # > 1 = faster; output duration = input duration / rate
    applied: tuple[str, ...] = ()         # names from TRANSFORMS, in application order
    gain_db: float = 0.0
    noise_snr_db: float | None = None
    noise_seed: int = 0
    room_index: int | None = None
    mp3_kbps: int | None = None           # effective bitrate (MPEG-2 rates < 32 kHz cap it at 160)

    def describe(self) -> str:
        """A short text of the applied transforms, e.g. 'pitch_shift=+2st,noise=31.2dB' ('' if none)."""
        return ",".join(self._describe_one(name) for name in self.applied)

    def _describe_one(self, name: str) -> str:
        if name == "pitch_shift":
            return f"pitch_shift={self.pitch_shift_semitones:+d}st"
        if name == "time_stretch":
            return f"time_stretch={self.time_stretch_rate:.3f}x"
        if name == "reverb":
            return f"reverb=room{self.room_index}"
        if name == "gain":
            return f"gain={self.gain_db:+.1f}dB"
        if name == "noise":
            return f"noise={self.noise_snr_db:.1f}dB"
        if name == "mp3":
            return f"mp3={self.mp3_kbps}kbps"
        raise ValueError(f"unknown augmentation {name!r}; known: {', '.join(TRANSFORMS)}")


# --- the transforms, one pure function each ----------------------------------------------------

def pitch_time_shift(y: np.ndarray, sr: int, semitones: float = 0.0, rate: float = 1.0) -> np.ndarray:
    """Signalsmith Stretch: transpose by `semitones` and play `rate` times faster.

    [S] float32 -> [round(S / rate)] float32.
    """
    import python_stretch
    if rate <= 0:
        raise ValueError(f"time-stretch rate must be > 0, got {rate}")
    stretch = python_stretch.Signalsmith.Stretch()
    stretch.preset(1, int(sr))
    stretch.setTimeFactor(float(rate))
    stretch.setTransposeSemitones(float(semitones))
    out = np.asarray(stretch.process(np.ascontiguousarray(y, dtype=np.float32)[None])[0], dtype=np.float32)
    return _fit_length(out, int(round(len(y) / rate)))


def apply_gain(y: np.ndarray, gain_db: float) -> np.ndarray:
    """Scale [S] by `gain_db` decibels (float32)."""
    return (np.asarray(y, dtype=np.float64) * 10.0 ** (gain_db / 20.0)).astype(np.float32)


def add_noise(y: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise whose power is `snr_db` dB below the mean power of [S]."""
    y = np.asarray(y, dtype=np.float64)
    signal_power = float(np.mean(y ** 2))
    noise = rng.standard_normal(len(y)) * np.sqrt(signal_power / 10.0 ** (snr_db / 10.0))
    return (y + noise).astype(np.float32)


def apply_room(y: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve [S] with an impulse response (direct path at index 0), keeping the first S samples."""
    return scipy.signal.oaconvolve(np.asarray(y, dtype=np.float64), rir)[:len(y)].astype(np.float32)


def mp3_roundtrip(y: np.ndarray, sr: int, kbps: int) -> np.ndarray:
    """Encode [S] as constant-bitrate MP3 in memory (pedalboard/LAME) and decode it gaplessly
    (soundfile/mpg123): [S] float32, time-aligned with the input. Rates MP3 cannot hold are
    resampled to 48 kHz (44.1 kHz for multiples of it) for the round trip and back."""
    from pedalboard.io import AudioFile
    codec_sr = sr if sr in MP3_SAMPLE_RATES_HZ else (44_100 if sr % 44_100 == 0 else 48_000)
    x = resample(np.asarray(y, dtype=np.float32), sr, codec_sr)
    buffer = io.BytesIO()
    with AudioFile(buffer, "w", samplerate=codec_sr, num_channels=1, format="mp3", quality=int(kbps)) as f:
        f.write(x[None])
    decoded, decoded_sr = sf.read(io.BytesIO(buffer.getvalue()), dtype="float32")
    if decoded_sr != codec_sr:
        raise RuntimeError(f"MP3 round trip changed the rate from {codec_sr} to {decoded_sr} Hz")
    return _fit_length(resample(_fit_length(decoded, len(x)), codec_sr, sr), len(y))


def effective_mp3_kbps(kbps: int, sr: int) -> int:
    """The bitrate LAME uses at `sr`: MPEG-2 (16-24 kHz) caps it at 160, MPEG-2.5 (8-12 kHz) at 64."""
    if sr < 16_000:
        return min(kbps, 64)
    if sr < 32_000:
        return min(kbps, 160)
    return kbps


def _fit_length(y: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad [S] to exactly `n` samples."""
    if len(y) >= n:
        return y[:n]
    return np.concatenate([y, np.zeros(n - len(y), dtype=y.dtype)])


# --- generated rooms ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RoomSpec:
    """Parameters of one generated space."""
    rt60_s: float               # time for the late tail to decay by 60 dB (low band), seconds
    drr_db: float               # direct-to-reverberant energy ratio, dB
    n_reflections: int          # discrete early reflections
    early_span_s: float         # early reflections arrive within this time after the direct sound
    hf_rt60_factor: float       # RT60 of the band above 4 kHz relative to the low band


def room_specs(n_rooms: int, seed: int) -> list[RoomSpec]:
    """`n_rooms` spaces from a small room to a hall: RT60 spread geometrically over
    ROOM_RT60_RANGE_S and DRR linearly over ROOM_DRR_RANGE_DB, each jittered by +-10 % / +-1.5 dB."""
    if n_rooms < 1:
        raise ValueError(f"n_rooms must be >= 1, got {n_rooms}")
    rng = np.random.default_rng([seed, 0x700])
    rt60 = np.geomspace(*ROOM_RT60_RANGE_S, n_rooms)
    drr = np.linspace(*ROOM_DRR_RANGE_DB, n_rooms)
    return [RoomSpec(rt60_s=float(rt60[i] * rng.uniform(0.9, 1.1)),
                     drr_db=float(drr[i] + rng.uniform(-1.5, 1.5)),
                     n_reflections=int(rng.integers(6, 15)),
                     early_span_s=float(0.003 + 0.037 * i / max(n_rooms - 1, 1)),
                     hf_rt60_factor=float(rng.uniform(0.35, 0.6)))
            for i in range(n_rooms)]


def room_impulse_response(spec: RoomSpec, sr: int, seed: int) -> np.ndarray:
    """An impulse response [L] (float64, L = min(1.2 RT60, ROOM_MAX_RIR_S) * sr) with h[0] = 1.

    Model: h = direct unit impulse + early reflections (random-sign taps at uniform delays within
    `early_span_s`, amplitude following the late decay) + late tail (Gaussian noise split at 1 and
    4 kHz into three bands, each decaying as 10^(-3 t / RT60_band), RT60 falling from the low band
    to `hf_rt60_factor` x RT60 at the top, faded in over the early span). The reverberant part
    is scaled so that direct energy / reverberant energy = `drr_db`.
    """
    rng = np.random.default_rng([seed, int(sr), int(spec.rt60_s * 1e6)])
    n = int(min(1.2 * spec.rt60_s, ROOM_MAX_RIR_S) * sr)
    t = np.arange(n) / sr
    tail = _decaying_band_noise(n, sr, spec, rng)
    onset = max(spec.early_span_s * 0.5, 1.0 / sr)
    tail *= np.clip(t / onset, 0.0, 1.0) ** 2              # the tail builds up after the first echoes
    early = np.zeros(n)
    delays = rng.uniform(0.001, spec.early_span_s, spec.n_reflections)
    idx = np.clip((delays * sr).astype(int), 1, n - 1)
    np.add.at(early, idx, rng.choice([-1.0, 1.0], spec.n_reflections) * rng.uniform(0.3, 0.8, spec.n_reflections)
              * 10.0 ** (-3.0 * delays / spec.rt60_s))
    reverberant = early / max(np.sqrt(np.sum(early ** 2)), 1e-12) + tail / max(np.sqrt(np.sum(tail ** 2)), 1e-12)
    reverberant[0] = 0.0
    reverberant *= np.sqrt(10.0 ** (-spec.drr_db / 10.0) / np.sum(reverberant ** 2))
    reverberant[0] = 1.0
    return reverberant


def _decaying_band_noise(n: int, sr: int, spec: RoomSpec, rng: np.random.Generator) -> np.ndarray:
    """Sum of three noise bands (< 1 kHz, 1-4 kHz, > 4 kHz), each with its own exponential decay."""
    t = np.arange(n) / sr
    noise = rng.standard_normal(n)
    edges = [e for e in (1000.0, 4000.0) if e < 0.45 * sr]
    bands, rest = [], noise                                  # split off the lowest band, then the next
    for edge in edges:
        below = scipy.signal.sosfilt(scipy.signal.butter(4, edge, btype="low", fs=sr, output="sos"), rest)
        bands.append(below)
        rest = rest - below
    bands.append(rest)
    factors = np.linspace(1.0, spec.hf_rt60_factor, len(bands))
    return sum(band * 10.0 ** (-3.0 * t / (spec.rt60_s * f)) for band, f in zip(bands, factors))


# --- the augmenter -----------------------------------------------------------------------------

class Augmenter:
    """Seeded random augmentation of mono training audio: `(y, sr, rng) -> (y', AugmentInfo)`.

    The same config, input and generator state give the same output. Rooms are generated from
    `cfg.seed` once per sample rate and cached.
    """

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg
        self.bitrates = tuple(b for b in MP3_BITRATES_KBPS if cfg.mp3_kbps_min <= b <= cfg.mp3_kbps_max)
        if cfg.p_mp3 > 0 and not self.bitrates:
            raise ValueError(f"augment.mp3_kbps_min/max ({cfg.mp3_kbps_min}-{cfg.mp3_kbps_max}) contain no "
                             f"standard MP3 bitrate {MP3_BITRATES_KBPS}")
        self.rooms = room_specs(cfg.n_rooms, cfg.seed)

    def probabilities(self) -> dict[str, float]:
        """Probability of each transform being drawn (before the max_transforms cap)."""
        cfg = self.cfg
        return {"pitch_shift": cfg.p_pitch_shift if cfg.pitch_shift_semitones > 0 else 0.0,
                "time_stretch": cfg.p_time_stretch, "reverb": cfg.p_reverb, "gain": cfg.p_gain,
                "noise": cfg.p_noise, "mp3": cfg.p_mp3}

    def sample(self, rng: np.random.Generator) -> AugmentInfo:
        """Draw which transforms apply (at most max_transforms) and their parameters."""
        if not self.cfg.enabled:
            return AugmentInfo()
        p = self.probabilities()
        chosen = [name for name in TRANSFORMS if rng.random() < p[name]]
        if len(chosen) > self.cfg.max_transforms:
            keep = rng.choice(len(chosen), size=self.cfg.max_transforms, replace=False)
            chosen = [chosen[i] for i in sorted(keep)]
        return self._draw_parameters(tuple(chosen), rng)

    def _draw_parameters(self, chosen: tuple[str, ...], rng: np.random.Generator) -> AugmentInfo:
        cfg, info = self.cfg, AugmentInfo(applied=chosen)
        if "pitch_shift" in chosen:
            n = cfg.pitch_shift_semitones
            info.pitch_shift_semitones = int(rng.choice([s for s in range(-n, n + 1) if s != 0]))
        if "time_stretch" in chosen:
            info.time_stretch_rate = float(rng.uniform(cfg.time_stretch_min, cfg.time_stretch_max))
        if "reverb" in chosen:
            info.room_index = int(rng.integers(len(self.rooms)))
        if "gain" in chosen:
            info.gain_db = float(rng.uniform(-cfg.gain_db, cfg.gain_db))
        if "noise" in chosen:
            info.noise_snr_db = float(rng.uniform(cfg.noise_snr_db_min, cfg.noise_snr_db_max))
            info.noise_seed = int(rng.integers(2 ** 31))
        if "mp3" in chosen:
            info.mp3_kbps = int(rng.choice(self.bitrates))
        return info

    def apply(self, y: np.ndarray, sr: int, info: AugmentInfo) -> np.ndarray:
        """Apply the transforms `info` names to mono [S] audio at `sr` Hz; the output is float32
        [round(S / info.time_stretch_rate)], finite, peaked at PEAK_TARGET_DBFS."""
        y = _checked_input(y, sr)
        if info.pitch_shift_semitones != 0 or info.time_stretch_rate != 1.0:
            y = pitch_time_shift(y, sr, info.pitch_shift_semitones, info.time_stretch_rate)
        if "reverb" in info.applied:
            y = apply_room(y, self.room_impulse_response(info.room_index, sr))
        if "gain" in info.applied:
            y = apply_gain(y, info.gain_db)
        if "noise" in info.applied:
            y = add_noise(y, info.noise_snr_db, np.random.default_rng(info.noise_seed))
        if "mp3" in info.applied:
            y = mp3_roundtrip(y, sr, effective_mp3_kbps(info.mp3_kbps, sr))
        if not np.all(np.isfinite(y)):
            raise RuntimeError(f"augmentation {info.describe()!r} produced non-finite samples")
        return peak_normalise(y)

    def __call__(self, y: np.ndarray, sr: int, rng: np.random.Generator) -> tuple[np.ndarray, AugmentInfo]:
        """Draw and apply a random augmentation: ([S'] float32 at PEAK_TARGET_DBFS, what was done)."""
        info = self.sample(rng)
        if info.mp3_kbps is not None:
            info.mp3_kbps = effective_mp3_kbps(info.mp3_kbps, sr)
        return self.apply(y, sr, info), info

    def room_impulse_response(self, index: int, sr: int) -> np.ndarray:
        """The impulse response of generated room `index` at `sr` Hz (cached)."""
        if not 0 <= index < len(self.rooms):
            raise ValueError(f"room index {index} out of range 0..{len(self.rooms) - 1}")
        return _cached_rir(self.rooms[index], int(sr), self.cfg.seed)


@functools.lru_cache(maxsize=64)
def _cached_rir(spec: RoomSpec, sr: int, seed: int) -> np.ndarray:
    rir = room_impulse_response(spec, sr, seed)
    rir.setflags(write=False)
    return rir


def _checked_input(y: np.ndarray, sr: int) -> np.ndarray:
    y = np.asarray(y)
    if sr <= 0:
        raise AudioError(f"augment: sample rate must be positive, got {sr} Hz")
    if y.ndim != 1 or y.size == 0:
        raise AudioError(f"augment: expected non-empty mono [samples] audio, got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise AudioError("augment: input holds NaN or infinite samples")
    if not np.any(y):
        raise AudioError("augment: input is digital silence")
    return y.astype(np.float32, copy=False)


# --- labels ------------------------------------------------------------------------------------

def transform_perf_notes(notes: np.ndarray, info: AugmentInfo) -> np.ndarray:
    """Performed notes moved with the audio: pitch + shift (clipped to A0..C8), onset/offset / rate.

    PERF_NOTE_DTYPE [n] -> PERF_NOTE_DTYPE [n], sorted by onset then pitch.
    """
    _require_dtype(notes, PERF_NOTE_DTYPE, "transform_perf_notes")
    out = notes.copy()
    out["pitch"] = _shift_pitch(notes["pitch"], info.pitch_shift_semitones)
    out["onset_s"] = notes["onset_s"] / info.time_stretch_rate
    out["offset_s"] = notes["offset_s"] / info.time_stretch_rate
    return out[np.lexsort((out["pitch"], out["onset_s"]))]


def transform_pedal(pedal: np.ndarray, info: AugmentInfo) -> np.ndarray:
    """Pedal events moved with the audio: time / rate. PEDAL_DTYPE [m] -> PEDAL_DTYPE [m]."""
    _require_dtype(pedal, PEDAL_DTYPE, "transform_pedal")
    out = pedal.copy()
    out["time_s"] = pedal["time_s"] / info.time_stretch_rate
    return out


def transform_score_notes(notes: np.ndarray, info: AugmentInfo) -> np.ndarray:
    """Written notes after a pitch shift (clipped to A0..C8); score time is unchanged by a stretch.

    SCORE_NOTE_DTYPE [n] -> SCORE_NOTE_DTYPE [n], same order.
    """
    _require_dtype(notes, SCORE_NOTE_DTYPE, "transform_score_notes")
    out = notes.copy()
    out["pitch"] = _shift_pitch(notes["pitch"], info.pitch_shift_semitones)
    return out


def _shift_pitch(pitch: np.ndarray, semitones: int) -> np.ndarray:
    return np.clip(pitch.astype(np.int32) + int(semitones), C.PIANO_MIN_PITCH, C.PIANO_MAX_PITCH).astype(pitch.dtype)


def _require_dtype(array: np.ndarray, dtype: np.dtype, where: str) -> None:
    if not isinstance(array, np.ndarray) or array.dtype != dtype:
        got = getattr(array, "dtype", type(array).__name__)
        raise ValueError(f"{where}: expected a structured array of dtype {dtype}, got {got}")
