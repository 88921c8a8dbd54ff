"""Streaming vs whole-array audio front end on long recordings: wall time and peak memory.

Run `python -m benchmarks.bench_audio_stream [--rate 48000]` (or call `main()`): it writes 20 min and
60 min WAVs (44.1 kHz unless told, stereo 16-bit, synthesised tones with tremolo and a little noise, written a minute at a
time) to a temporary folder, then measures each front end in a fresh Python process:

- `load_and_prepare` (pipelines.io.audio): decode the whole file, mono, checks, peak -3 dBFS, resample
  the whole array to 24 kHz and 44.1 kHz;
- `AudioStream` scan + blocks (pipelines.io.audio_stream): pass 1 decodes and checks block by block,
  pass 2 decodes again and yields peak-normalised 24 kHz / 44.1 kHz blocks (30 s), which are dropped.

Each child reports the wall and CPU (user + system) time of the call (imports excluded; on a shared
machine the CPU time is the steadier figure) and its peak RSS growth: VmHWM at the
end minus VmRSS after the imports (VmHWM is per process, so each measurement starts clean). Streaming
memory should be the same for both lengths; the whole-array front end grows with the length. It prints
a Markdown table and returns a dict of the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import ROOT, machine, markdown_table, proc_status_mb

DEFAULT_MINUTES = (20.0, 60.0)
SR = 44_100
METHODS = {"load_and_prepare": "load_and_prepare (whole arrays)",
           "stream": "AudioStream scan + blocks (streaming)"}


def write_long_wav(path: str, minutes: float, sr: int = SR, seed: int = 0) -> None:
    """A stereo 16-bit WAV of `minutes` of tones, tremolo and noise, written one minute at a time."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    with sf.SoundFile(path, "w", samplerate=sr, channels=2, subtype="PCM_16") as f:
        for minute in range(int(np.ceil(minutes))):
            n = int(min(60.0, minutes * 60.0 - minute * 60.0) * sr)
            t = minute * 60.0 + np.arange(n) / sr
            pitches = 440.0 * 2 ** ((rng.integers(36, 90, size=3) - 69) / 12)
            left = sum(0.15 * np.sin(2 * np.pi * hz * t) for hz in pitches) * (0.7 + 0.3 * np.sin(0.5 * t))
            right = 0.3 * np.sin(2 * np.pi * pitches[0] * 1.5 * t) + 0.02 * rng.standard_normal(n)
            f.write(np.stack([left, right], axis=1).astype(np.float32))




def _cpu_s() -> float:
    """User + system CPU seconds of this process so far (less sensitive than wall time to other load)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(method: str, path: str, block_s: float) -> dict:
    """Run one front end on `path` in this (fresh) process: wall time, RSS after imports, peak RSS."""
    import math

    from pipelines.io.audio import load_and_prepare
    from pipelines.io.audio_stream import AudioStream

    baseline = proc_status_mb("VmRSS")
    cpu_started = _cpu_s()
    started = time.perf_counter()
    if method == "load_and_prepare":
        out = load_and_prepare(path)
        n24, n44, duration = len(out.mert), len(out.cqt), out.duration_s
        del out
    elif method == "stream":
        stream = AudioStream(path, path, min_duration_s=1.0, max_duration_s=math.inf, block_s=block_s)
        stream.scan()
        n24 = n44 = 0
        for y24, y44 in stream.blocks():
            n24, n44 = n24 + len(y24), n44 + len(y44)
        duration = stream.duration_s
    else:
        raise ValueError(f"unknown method {method!r}")
    wall = time.perf_counter() - started
    cpu = _cpu_s() - cpu_started
    peak = proc_status_mb("VmHWM")
    return {"method": method, "wall_s": wall, "cpu_s": cpu, "baseline_rss_mb": baseline, "peak_rss_mb": peak,
            "growth_mb": peak - baseline, "samples_24k": n24, "samples_44k": n44, "duration_s": duration}


def measure(method: str, path: str, block_s: float) -> dict:
    """`child` in a fresh interpreter (so the peak RSS is this call's alone)."""
    cmd = [sys.executable, "-m", "benchmarks.bench_audio_stream", "--child", method, path, "--block-s", str(block_s)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{method} on {path} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(minutes: tuple[float, ...] = DEFAULT_MINUTES, block_s: float = 30.0, rate: int = SR) -> dict:
    """Run the benchmark; print a Markdown table and return the figures."""
    tmp = tempfile.mkdtemp(prefix="bench-audio-stream-")
    rows, figures = [], []
    try:
        for length in minutes:
            path = os.path.join(tmp, f"tones_{length:g}min.wav")
            started = time.perf_counter()
            write_long_wav(path, length, rate)
            write_s = time.perf_counter() - started
            results = {m: measure(m, path, block_s) for m in METHODS}
            whole, stream = results["load_and_prepare"], results["stream"]
            assert abs(whole["samples_44k"] - stream["samples_44k"]) <= 1, (whole, stream)
            for method, r in results.items():
                rows.append([f"{length:g} min", METHODS[method], f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}",
                             f"{r['duration_s'] / r['wall_s']:.0f}x", f"{r['growth_mb']:.0f}", f"{r['peak_rss_mb']:.0f}"])
            figures.append({"minutes": length, "file_mb": os.path.getsize(path) / 2**20, "write_s": write_s,
                            **{m: r for m, r in results.items()}})
            os.remove(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    header = (f"Audio front end on long recordings: WAV {rate / 1000:g} kHz stereo 16-bit, each call in a fresh process; "
              f"streaming blocks of {block_s:g} s. Peak RSS growth = VmHWM at the end - VmRSS after imports.\n\n")
    table = markdown_table(["recording", "front end", "wall s", "CPU s", "x real time (wall)", "peak RSS growth MB",
                            "peak RSS MB"], rows)
    markdown = header + table + f"\n\n{machine()}."
    print(markdown)
    return {"markdown": markdown, "figures": figures, "block_s": block_s, "rate": rate}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--block-s", type=float, default=30.0)
    parser.add_argument("--minutes", type=float, nargs="+", default=list(DEFAULT_MINUTES))
    parser.add_argument("--rate", type=int, default=SR, help="sample rate of the generated WAVs (Hz)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.block_s)))
    else:
        main(tuple(args.minutes), args.block_s, args.rate)
