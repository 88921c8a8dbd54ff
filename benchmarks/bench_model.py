"""Model benchmark: forward time and peak memory of the tiny and mert-v1-95m presets on CPU.

Run `python -m benchmarks.bench_model` (or call `main()`): it prints and returns a Markdown table with,
for each preset and window (10 s and 30 s), the parameter count, the median forward time of
`repeats` runs after one warm-up (batch 1, torch.no_grad, eval mode, 2 threads, random weights) and
the peak resident memory of a fresh process that built the model and ran it.

Each case runs in its own subprocess so that peak RSS belongs to that case alone. Inputs are what the
pipelines feed the model: a 24 kHz waveform for MERT, a 168-bin log-CQT at ~86.13 frames/s for the CQT
encoder, and 10 OctupleMIDI notes per second (capped at the preset's max_notes) with their attributes.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:                 # also runnable as `python benchmarks/bench_model.py`
    sys.path.insert(0, str(ROOT))

from benchmarks.common import peak_rss_mb  # noqa: E402

PRESETS = ("tiny", "mert-v1-95m")
WINDOWS_S = (10.0, 30.0)
NOTES_PER_S = 10
THREADS = 2
REPEATS = 5


def make_inputs(cfg, seconds: float, seed: int = 0) -> dict:
    """A batch of one window: random audio/CQT and plausible random note tokens."""
    import torch

    from model.config import CQT_FRAMES_PER_S, MERT_SAMPLE_RATE_HZ

    g = torch.Generator().manual_seed(seed)
    samples = int(seconds * MERT_SAMPLE_RATE_HZ)
    frames = int(seconds * CQT_FRAMES_PER_S) + 1
    n = min(int(seconds * NOTES_PER_S), cfg.max_notes)
    notes = torch.stack([torch.randint(2, size, (1, n), generator=g) for size in cfg.octuple_vocab_sizes], dim=-1)
    return {
        "audio": 0.3 * torch.randn(1, samples, generator=g), "audio_lengths": torch.tensor([samples]),
        "cqt": torch.randn(1, frames, cfg.cqt_bins, generator=g) * 2 - 6, "cqt_lengths": torch.tensor([frames]),
        "notes": notes, "note_attrs": torch.randn(1, n, cfg.n_note_attrs, generator=g),
        "note_times": torch.sort(torch.rand(1, n, generator=g) * seconds).values, "note_lengths": torch.tensor([n]),
    }


def run_case(preset: str, seconds: float, repeats: int = REPEATS) -> dict:
    """Build `preset` with random weights, time its forward on one window; runs in the current process."""
    import torch

    from model.builder import build_model
    from pipelines.config import load_config

    torch.set_num_threads(THREADS)
    config = load_config(preset)
    model = build_model(config.model, config.schema(), pretrained=False).eval()
    batch = make_inputs(config.model, seconds)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            start = time.perf_counter()
            out = model(batch)
            if i:                                                            # the first run warms up
                times.append(time.perf_counter() - start)
    return {
        "preset": preset, "window_s": seconds, "audio_encoder": config.model.audio_encoder,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "steps": int(out.lengths[0]), "notes": int(batch["note_lengths"][0]),
        "forward_s": statistics.median(times), "forward_min_s": min(times), "repeats": repeats,
        "peak_rss_mb": peak_rss_mb(),
    }


def _run_isolated(preset: str, seconds: float) -> dict:
    code = ("import json, sys; from benchmarks.bench_model import run_case; "
            f"print(json.dumps(run_case({preset!r}, {seconds!r})))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark case {preset} {seconds} s failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = [
        f"Model forward on CPU ({THREADS} threads, batch 1, torch.no_grad, random weights; median of "
        f"{REPEATS} after a warm-up; peak RSS of a fresh process)",
        "",
        "| preset | audio encoder | window | params | time steps | notes | forward (median) | forward (min) "
        "| x real time | peak RSS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['audio_encoder']} | {r['window_s']:.0f} s | {r['params_m']:.2f} M | {r['steps']} "
            f"| {r['notes']} | {r['forward_s'] * 1000:.0f} ms | {r['forward_min_s'] * 1000:.0f} ms "
            f"| {r['window_s'] / r['forward_s']:.1f} | {r['peak_rss_mb']:.0f} MB |")
    return "\n".join(lines)


def parameter_table() -> str:
    """Parameters per part (total / trainable) of the tiny and mert-v1-95m presets, random weights."""
    from model.builder import build_model
    from pipelines.config import load_config

    counts = {}
    for preset, overrides in (("tiny", []), ("mert-v1-95m", [])):
        cfg = load_config(preset, overrides)
        counts[preset] = build_model(cfg.model, cfg.schema(), pretrained=False).parameter_counts()
    parts = list(dict.fromkeys(p for c in counts.values() for p in c))
    lines = ["| part | " + " | ".join(counts) + " |", "|---|" + "---|" * len(counts)]
    for part in parts:
        cells = [f"{c[part]['total']:,} / {c[part]['trainable']:,}" if part in c else "-" for c in counts.values()]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    return "Parameters per part (total / trainable):\n\n" + "\n".join(lines)


def main() -> str:
    rows = [_run_isolated(preset, seconds) for preset in PRESETS for seconds in WINDOWS_S]
    text = table(rows) + "\n\n" + parameter_table()
    print(text)
    return text


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    main()
