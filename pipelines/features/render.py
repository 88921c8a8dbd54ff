"""Render MIDI to piano audio with FluidSynth.

Two back ends, same output (mono float32, pedal honoured, tail trimmed):
- `pyfluidsynth` (default): the library in-process, one fresh synthesizer per render, float output.
  Measured here for 40 s of three-note chords with pedal: 0.4-0.6 s with FluidR3 (the CLI: 1.3 s);
  with MuseScore_General.sf3 the first load decodes the bank (about 4-10 s), later loads in the same
  process take about 0.1 s because a keeper synthesizer holds the bank in FluidSynth's sample cache
  (the CLI pays the decoding on every call: 10.7 s). A fresh synthesizer per render is bit-exact from
  call to call; re-using one after `system_reset` is not (voice state leaks), so none is re-used.
- `cli`: the `fluidsynth` program (`-ni -F out.wav`), used when the library cannot be loaded.

The sustain (CC64), sostenuto (CC66) and soft (CC67) controllers are passed through, so a released
note rings on while the pedal is down. After the last event the synthesizer runs until the sound
decays below `TAIL_FLOOR_DBFS` (at most `TAIL_MAX_S`), and trailing near-silence is trimmed.
"""
from __future__ import annotations

import functools
import io
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from ctypes import c_int, c_void_p
from pathlib import Path

import numpy as np

from pipelines import constants as C
from pipelines.io import storage
from pipelines.io.errors import close_hanging_notes

SOUNDFONT_ENV = "PIANOEVAL_SOUNDFONT"
DEFAULT_SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf3/MuseScore_General.sf3")
SYNTH_GAIN = 0.5                # FluidSynth master gain (its default 0.2 is very quiet)
TAIL_MAX_S = 4.0                # longest decay rendered after the last MIDI event
TAIL_BLOCK_S = 0.1              # decay is checked block by block
TAIL_FLOOR_DBFS = -70.0         # a tail block quieter than this (peak, dBFS) ends the render
TRIM_FLOOR_DB = -60.0           # trailing samples this far below the peak are trimmed
TRIM_MARGIN_S = 0.05            # silence kept after the last audible sample
MAX_PEAK = 0.99                 # louder renders are scaled down to this peak (never clipped)

_LOCK = threading.Lock()


class RenderError(RuntimeError):
    """MIDI could not be rendered; the message names the input and the cause in one line."""


MAX_RENDER_S = 4 * 3600.0      # default limit of render_midi: longer MIDI is refused before rendering


def default_soundfont() -> str:
    """The soundfont used when none is given: $PIANOEVAL_SOUNDFONT, else FluidR3_GM, else MuseScore_General."""
    env = os.environ.get(SOUNDFONT_ENV)
    if env:
        if not Path(env).is_file():
            raise RenderError(f"{env}: soundfont named by ${SOUNDFONT_ENV} does not exist")
        return env
    for path in DEFAULT_SOUNDFONTS:
        if Path(path).is_file():
            return path
    raise RenderError(f"no soundfont found ({', '.join(DEFAULT_SOUNDFONTS)}): "
                      "install fluid-soundfont-gm or set $PIANOEVAL_SOUNDFONT")


def check_soundfont(soundfont: str | None) -> str:
    path = soundfont or default_soundfont()
    if not Path(path).is_file():
        raise RenderError(f"{path}: soundfont does not exist")
    return os.path.abspath(path)


# --- MIDI events -----------------------------------------------------------------------------

def _load_midi(midi, name: str):
    import pretty_midi
    if isinstance(midi, pretty_midi.PrettyMIDI):
        return midi
    data = midi if isinstance(midi, (bytes, bytearray)) else _read_midi_bytes(str(midi))
    try:
        with warnings.catch_warnings():
            # pretty_midi warns when tempo / key / time-signature events sit on a track other than the first;
            # rendering plays every track's notes at the file's own timing either way, so it changes nothing
            warnings.filterwarnings("ignore", message="Tempo, Key or Time signature change events found")
            pm = pretty_midi.PrettyMIDI(io.BytesIO(bytes(data)))
        close_hanging_notes(pm, bytes(data))      # a key held at the end of the file still sounds
        return pm
    except Exception as exc:  # mido/pretty_midi raise many types for corrupt files
        detail = f"{type(exc).__name__}: {exc}" if str(exc).strip() else type(exc).__name__
        raise RenderError(f"{name}: not a readable MIDI file ({detail})") from None


def _read_midi_bytes(uri: str) -> bytes:
    try:
        return storage.read_bytes(uri, max_bytes=storage.MAX_SMALL_FILE_BYTES)
    except storage.StorageUnavailable:    # a fault of the moment, not of the file: the caller retries
        raise
    except storage.StorageError as exc:
        raise RenderError(f"cannot read MIDI {exc}") from None


def midi_events(pm) -> list[tuple[float, int, int, int, int]]:
    """(time_s, order, channel, a, b) sorted; order 0 note-off, 1 controller, 2 note-on, 3 program.

    Each non-drum instrument gets its own channel (9 skipped); a = pitch / controller / program,
    b = velocity / value.
    """
    events = []
    channels = [c for c in range(16) if c != 9]
    instruments = [i for i in pm.instruments if not i.is_drum]
    for inst, channel in zip(instruments, channels):
        events.append((0.0, 3, channel, int(inst.program), 0))
        for note in inst.notes:
            events.append((float(note.start), 2, channel, int(note.pitch), int(note.velocity)))
            events.append((float(note.end), 0, channel, int(note.pitch), 0))
        for cc in inst.control_changes:
            events.append((float(cc.time), 1, channel, int(cc.number), int(cc.value)))
    return sorted(events, key=lambda e: (e[0], e[1] != 3, e[1], e[2], e[3]))


# --- pyfluidsynth back end -------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _fluidsynth_module():
    try:
        import fluidsynth
    except (ImportError, OSError) as exc:
        raise RenderError(f"pyfluidsynth/libfluidsynth not available ({exc}): "
                          "apt-get install fluidsynth; pip install pyfluidsynth") from None
    write_float = fluidsynth.cfunc(
        "fluid_synth_write_float", c_int, ("synth", c_void_p, 1), ("len", c_int, 1),
        ("lbuf", c_void_p, 1), ("loff", c_int, 1), ("lincr", c_int, 1),
        ("rbuf", c_void_p, 1), ("roff", c_int, 1), ("rincr", c_int, 1))
    return fluidsynth, write_float


def _new_synth(soundfont: str, sample_rate: int):
    fluidsynth, _ = _fluidsynth_module()
    synth = fluidsynth.Synth(gain=SYNTH_GAIN, samplerate=float(sample_rate),
                             **{"synth.chorus.active": 0, "synth.reverb.active": 1})
    sfid = synth.sfload(soundfont)
    if sfid < 0:
        synth.delete()
        raise RenderError(f"{soundfont}: FluidSynth cannot load this soundfont")
    return synth, sfid


@functools.lru_cache(maxsize=4)
def _keeper(soundfont: str, sample_rate: int):
    """A synthesizer kept alive so FluidSynth's sample cache holds the (decoded) bank."""
    return _new_synth(soundfont, sample_rate)


def _write_block(synth, write_float, n: int) -> np.ndarray:
    """n stereo frames -> float32 [n, 2]."""
    buf = np.zeros((n, 2), dtype=np.float32)
    if n > 0:
        write_float(synth.synth, n, buf.ctypes.data, 0, 2, buf.ctypes.data, 1, 2)
    return buf


def _render_pyfluidsynth(events, soundfont: str, sample_rate: int) -> np.ndarray:
    _, write_float = _fluidsynth_module()
    with _LOCK:
        _keeper(soundfont, sample_rate)
        synth, sfid = _new_synth(soundfont, sample_rate)
    try:
        blocks, cursor = [], 0
        for time_s, order, channel, a, b in events:
            frame = int(round(time_s * sample_rate))
            if frame > cursor:
                blocks.append(_write_block(synth, write_float, frame - cursor))
                cursor = frame
            if order == 3:
                synth.program_select(channel, sfid, 0, a)
            elif order == 2:
                synth.noteon(channel, a, b)
            elif order == 0:
                synth.noteoff(channel, a)
            else:
                synth.cc(channel, a, b)
        floor = 10.0 ** (TAIL_FLOOR_DBFS / 20.0)
        block = int(TAIL_BLOCK_S * sample_rate)
        for _ in range(int(TAIL_MAX_S / TAIL_BLOCK_S)):
            tail = _write_block(synth, write_float, block)
            blocks.append(tail)
            if np.abs(tail).max() < floor:
                break
    finally:
        synth.delete()
    return np.concatenate(blocks).mean(axis=1)


# --- CLI back end ----------------------------------------------------------------------------

def _render_cli(pm, soundfont: str, sample_rate: int, name: str) -> np.ndarray:
    import soundfile as sf
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise RenderError("fluidsynth program not found: apt-get install fluidsynth")
    with tempfile.TemporaryDirectory(prefix="pianoeval-render-") as tmp:
        midi_path, wav_path = os.path.join(tmp, "in.mid"), os.path.join(tmp, "out.wav")
        pm.write(midi_path)
        cmd = [exe, "-ni", "-q", "-g", str(SYNTH_GAIN), "-C", "0", "-R", "1", "-F", wav_path,
               "-r", str(sample_rate), soundfont, midi_path]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(wav_path):
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise RenderError(f"{name}: fluidsynth failed ({detail[-1] if detail else proc.returncode})")
        audio, _ = sf.read(wav_path, dtype="float32", always_2d=True)
    last = max((e[0] for e in midi_events(pm)), default=0.0)
    keep = int((last + TAIL_MAX_S) * sample_rate)
    return audio[:keep].mean(axis=1)


def _library_available() -> bool:
    try:
        _fluidsynth_module()
        return True
    except RenderError:
        return False


# --- public ----------------------------------------------------------------------------------

def trim_tail(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Drop trailing samples quieter than TRIM_FLOOR_DB below the peak (keeping TRIM_MARGIN_S)."""
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak == 0.0:
        return audio
    loud = np.flatnonzero(np.abs(audio) >= peak * 10.0 ** (TRIM_FLOOR_DB / 20.0))
    end = min(len(audio), int(loud[-1]) + 1 + int(TRIM_MARGIN_S * sample_rate))
    return audio[:end]


def render_midi(midi, soundfont: str | None = None, sample_rate: int = C.CQT_SAMPLE_RATE_HZ,
                backend: str = "auto", max_seconds: float | None = MAX_RENDER_S) -> np.ndarray:
    """Render MIDI (a path/URI, raw bytes or a PrettyMIDI) to mono float32 audio [n_samples] at
    `sample_rate` Hz, starting at MIDI time 0, peak <= MAX_PEAK (not normalised otherwise).

    `backend`: 'auto' (pyfluidsynth, else the CLI), 'pyfluidsynth' or 'cli'. `max_seconds`: a MIDI file
    lasting longer (an absurd tempo or tick value can stretch a page to days) is refused before rendering,
    which would otherwise take time and memory in proportion.
    """
    name = "<bytes>" if isinstance(midi, (bytes, bytearray)) else str(getattr(midi, "filename", None) or midi)
    if backend not in ("auto", "pyfluidsynth", "cli"):
        raise RenderError(f"{name}: unknown render backend {backend!r}")
    if not 8000 <= int(sample_rate) <= 192_000:
        raise RenderError(f"{name}: sample rate {sample_rate} Hz is outside 8000..192000")
    font = check_soundfont(soundfont)
    pm = _load_midi(midi, name)
    events = midi_events(pm)
    if not any(e[1] == 2 for e in events):
        raise RenderError(f"{name}: MIDI has no notes to render")
    end_s = max(e[0] for e in events)
    if max_seconds is not None and end_s > max_seconds:
        raise RenderError(f"{name}: MIDI lasts {end_s / 3600:.1f} h, over the {max_seconds:g} s limit for rendering "
                          "(a wrong tempo or tick value?)")
    if backend == "cli" or (backend == "auto" and not _library_available()):
        audio = _render_cli(pm, font, int(sample_rate), name)
    else:
        audio = _render_pyfluidsynth(events, font, int(sample_rate))
    audio = trim_tail(audio.astype(np.float32), int(sample_rate))
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > MAX_PEAK:
        audio *= MAX_PEAK / peak
    return audio
