"""Audio front-end throughput on one core: decode, resample, CQT (nnAudio kernels vs librosa).

Run `python -m benchmarks.bench_audio` (or call `main()`): on 60 s of rendered piano (FluidSynth with
FluidR3 when installed, else a synthetic piano-like signal), stereo 16-bit 44.1 kHz, with torch held
to one thread, it times (median of `repeats` runs after one warm-up):

- decoding WAV, FLAC and MP3 (`load_audio`), and `prepare_audio` (mono, checks, peak, 24 kHz + 44.1 kHz);
- the log-CQT with the default trimmed kernels (half-octave groups), with nnAudio's CQT1992v2 module, and with librosa;
- the whole front end, decode + prepare + CQT, for WAV and FLAC input.

Throughput is seconds of audio per wall second ("x real time") on one core. It prints a Markdown
table and returns a dict of the figures.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np

from benchmarks.common import machine, markdown_table, median_time

DURATION_S = 60.0
TARGET_X_REALTIME = 50.0


def render_piano(seconds: float, sr: int = 44_100, seed: int = 0) -> tuple[np.ndarray, str]:
    """[S, 2] float32 piano-like audio and how it was made (FluidSynth, or synthetic)."""
    from tests.conftest import FLUIDR3
    rng = np.random.default_rng(seed)
    try:
        import fluidsynth  # noqa: F401  (pretty_midi needs it to render)
        import pretty_midi
        if not FLUIDR3.exists():
            raise FileNotFoundError(FLUIDR3)
    except (ImportError, FileNotFoundError):
        return _synthetic_piano(seconds, sr, rng), "synthetic decaying harmonics"
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    for onset in np.arange(0.0, seconds - 1.0, 0.25):
        for pitch in rng.choice(np.arange(36, 96), size=int(rng.integers(1, 4)), replace=False):
            piano.notes.append(pretty_midi.Note(velocity=int(rng.integers(40, 110)), pitch=int(pitch),
                                                start=float(onset), end=float(onset + rng.uniform(0.2, 1.0))))
    midi.instruments.append(piano)
    mono = midi.fluidsynth(fs=sr, synthesizer=str(FLUIDR3))[: int(seconds * sr)]
    mono = np.pad(mono, (0, int(seconds * sr) - len(mono)))
    stereo = np.stack([mono, np.roll(mono, 13) * 0.9], axis=1)          # a slightly different right channel
    return (0.7 * stereo / np.max(np.abs(stereo))).astype(np.float32), "FluidSynth, FluidR3 grand piano"


def _synthetic_piano(seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * sr)
    y = np.zeros(n)
    for onset in np.arange(0.0, seconds - 1.0, 0.25):
        f0 = 440.0 * 2 ** ((rng.integers(36, 96) - 69) / 12)
        t = np.arange(int(sr)) / sr
        note = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6)) * np.exp(-3 * t)
        start = int(onset * sr)
        y[start:start + len(t)] += note[: n - start]
    stereo = np.stack([y, np.roll(y, 13) * 0.9], axis=1)
    return (0.7 * stereo / np.max(np.abs(stereo))).astype(np.float32)


def main(repeats: int = 3, seconds: float = DURATION_S) -> dict:
    """Run the benchmark; print a Markdown table and return the figures."""
    import torch

    threads = torch.get_num_threads()
    tmp = tempfile.mkdtemp(prefix="bench-audio-")
    try:
        torch.set_num_threads(1)
        results = _run(repeats, seconds, tmp)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    print(results["markdown"])
    return results


def _run(repeats: int, seconds: float, tmp: str) -> dict:
    import soundfile as sf

    from pipelines import constants as C
    from pipelines.features.cqt import CQTExtractor, cqt_librosa
    from pipelines.io.audio import load_audio, prepare_audio

    audio, source = render_piano(seconds)
    paths = {}
    for fmt, kwargs in (("wav", {"subtype": "PCM_16"}), ("flac", {}), ("mp3", {"format": "MP3"})):
        paths[fmt] = os.path.join(tmp, f"piano.{fmt}")
        sf.write(paths[fmt], audio, C.CQT_SAMPLE_RATE_HZ, **kwargs)

    started = time.perf_counter()
    trimmed = CQTExtractor(device="cpu", num_threads=1)
    build_trimmed_s = time.perf_counter() - started
    started = time.perf_counter()
    nnaudio = CQTExtractor(device="cpu", impl="nnaudio", num_threads=1)
    build_nnaudio_s = time.perf_counter() - started

    mono, sr = load_audio(paths["wav"])
    prepared = prepare_audio(mono, sr, paths["wav"])
    started = time.perf_counter()
    cqt_librosa(prepared.cqt)                       # first call builds (and caches) librosa's filters
    librosa_first_s = time.perf_counter() - started

    def front_end(fmt: str, extractor) -> None:
        y, rate = load_audio(paths[fmt])
        extractor(prepare_audio(y, rate, paths[fmt]).cqt)

    t = {
        "decode_wav": median_time(lambda: load_audio(paths["wav"]), repeats),
        "decode_flac": median_time(lambda: load_audio(paths["flac"]), repeats),
        "decode_mp3": median_time(lambda: load_audio(paths["mp3"]), repeats),
        "prepare": median_time(lambda: prepare_audio(mono, sr, "bench"), repeats),
        "cqt_trimmed": median_time(lambda: trimmed(prepared.cqt), repeats),
        "cqt_nnaudio": median_time(lambda: nnaudio(prepared.cqt), repeats),
        "cqt_librosa": median_time(lambda: cqt_librosa(prepared.cqt), repeats),
        "front_end_wav": median_time(lambda: front_end("wav", trimmed), repeats),
        "front_end_flac": median_time(lambda: front_end("flac", trimmed), repeats),
        "front_end_wav_nnaudio": median_time(lambda: front_end("wav", nnaudio), repeats),
    }
    ours, ref = trimmed(prepared.cqt)[0], cqt_librosa(prepared.cqt)
    results = {
        "audio_s": seconds, "source": source, "repeats": repeats, "torch_threads": 1,
        "seconds": t, "x_realtime": {k: seconds / v for k, v in t.items()},
        "build_s": {"cqt_trimmed": build_trimmed_s, "cqt_nnaudio": build_nnaudio_s,
                    "librosa_first_call": librosa_first_s},
        "corr_trimmed_vs_librosa": float(np.corrcoef(ours.ravel(), ref.ravel())[0, 1]),
        "max_abs_log_diff_trimmed_vs_nnaudio_above_-60dB": _loud_log_diff(ours, nnaudio(prepared.cqt)[0]),
        "target_x_realtime": TARGET_X_REALTIME,
        "machine": machine(),
    }
    results["meets_target"] = results["x_realtime"]["front_end_flac"] >= TARGET_X_REALTIME and \
        results["x_realtime"]["front_end_wav"] >= TARGET_X_REALTIME
    results["markdown"] = _table(results)
    return results


def _loud_log_diff(a: np.ndarray, b: np.ndarray) -> float:
    loud = b > b.max() + np.log(1e-3)
    return float(np.max(np.abs(a[loud] - b[loud])))


def _table(r: dict) -> str:
    labels = {
        "decode_wav": "decode WAV (stereo 16-bit 44.1 kHz -> mono)",
        "decode_flac": "decode FLAC",
        "decode_mp3": "decode MP3 (gapless)",
        "prepare": "prepare: checks, peak -3 dB, resample to 24 kHz (44.1 kHz is a copy)",
        "cqt_trimmed": "log-CQT, nnAudio kernels trimmed per half octave (default)",
        "cqt_nnaudio": "log-CQT, nnAudio CQT1992v2 module",
        "cqt_librosa": "log-CQT, librosa.cqt (filters cached)",
        "front_end_wav": "**front end: decode WAV + prepare + CQT (default)**",
        "front_end_flac": "**front end: decode FLAC + prepare + CQT (default)**",
        "front_end_wav_nnaudio": "front end: decode WAV + prepare + CQT (nnAudio module)",
    }
    rows = [[labels[k], f"{r['seconds'][k] * 1000:.1f}", f"{r['x_realtime'][k]:.0f}x"] for k in labels]
    header = (f"Audio front end, {r['audio_s']:.0f} s of {r['source']}, one core (torch threads = 1), "
              f"median of {r['repeats']}. Target >= {r['target_x_realtime']:.0f}x real time: "
              f"{'met' if r['meets_target'] else 'NOT met'}.\n\n")
    notes = (f"\n\nSet-up: trimmed-kernel extractor {r['build_s']['cqt_trimmed']:.2f} s, nnAudio module "
             f"{r['build_s']['cqt_nnaudio']:.2f} s, librosa first call {r['build_s']['librosa_first_call']:.2f} s. "
             f"Log-CQT correlation with librosa {r['corr_trimmed_vs_librosa']:.4f}; largest log difference "
             f"from the nnAudio module on bins above -60 dB "
             f"{r['max_abs_log_diff_trimmed_vs_nnaudio_above_-60dB']:.1e}. {r['machine']}.")
    return header + markdown_table(["step", "ms per 60 s", "x real time"], rows) + notes


if __name__ == "__main__":
    main()
