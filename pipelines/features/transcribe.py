"""Piano transcription (audio -> performed notes) with pretrained models whose weights ship in a package.

Backends:
- "basic-pitch" (default, CPU): Spotify's basic-pitch ICASSP 2022 model, run from the ONNX file
  inside the `basic-pitch` wheel with onnxruntime (no TensorFlow). Input mono 22,050 Hz, analysed in
  2 s windows (43,844 samples) that overlap by 30 frames of 256 samples; output 86 frames/s of note,
  onset and pitch-contour activations over the 88 piano keys, decoded into notes by basic-pitch's
  own `model_output_to_notes`. It predicts no pedal: the Performance's pedal array is empty.
  Velocity = round(127 * mean note activation) (an activation, not a loudness measurement).
  Defaults differ from basic-pitch's (onset 0.5, frame 0.3, 127.7 ms, melodia on): onset 0.6,
  frame 0.4, 58 ms, melodia off, tuned for piano on rendered performances (see below).
- "transkun" (optional, GPU): Transkun 2.0 (Yan & Duan), a semi-CRF piano model with sustain/soft
  pedal output, far more accurate (onset F1 about 0.99 on rendered piano) but about 1.1x real time on
  2 CPU cores. Needs `pip install transkun` and a torchaudio built for the installed torch (GPU images
  usually have one); it is not installed here, so this path is not exercised by the tests.

`transcribe_blocks` transcribes a recording given as an iterator of blocks (from
`pipelines.io.audio_stream.AudioStream.blocks`), holding a few tens of seconds of audio and
activations, never the recording. The basic-pitch model windows are those of the whole-array call
(same 2 s grid from sample 0, fed through soxr's streaming resampler, which gives the one-shot
resampler's samples), so the activations are the same; activations are decoded into notes in 30 s
segments with 3 s of context on each side: a note belongs to the segment its onset frame falls in
(taken from one side only), and a note still sounding at a segment's end is decoded again in the next
segment from its onset, so sustained notes are joined. On a 61 s rendered piece fed in 20 s blocks the
result matched the whole-array transcription with onset F1 1.0 (tests/pipelines/features/
test_transcribe_blocks.py). Unlike the whole-array call, it keeps the last 0.7 % of the recording:
`stitch_windows` keeps floor(n * 86 / 22,050) frames, but the stitched windows give 142 frames per
36,164 samples (86.6 frames/s), so the whole-array call drops the end (0.4 s of 60 s, 73 s of 3 h).

`onset_f1` scores a transcription against reference notes with mir_eval (MIREX conventions).
"""
from __future__ import annotations

import contextlib
import math
import dataclasses
import logging
from typing import Iterable, Iterator

import numpy as np

from pipelines.constants import PIANO_MAX_PITCH, PIANO_MIN_PITCH
from pipelines.io.notes import PEDAL_DTYPE, Performance, empty_pedal, make_perf_notes

BASIC_PITCH_SAMPLE_RATE_HZ = 22_050        # basic_pitch.constants.AUDIO_SAMPLE_RATE
BASIC_PITCH_HOP_SAMPLES = 256              # FFT_HOP: one activation frame
BASIC_PITCH_WINDOW_SAMPLES = 2 * BASIC_PITCH_SAMPLE_RATE_HZ - BASIC_PITCH_HOP_SAMPLES   # 43,844
BASIC_PITCH_OVERLAP_FRAMES = 30            # frames shared by neighbouring windows
BASIC_PITCH_OVERLAP_SAMPLES = BASIC_PITCH_OVERLAP_FRAMES * BASIC_PITCH_HOP_SAMPLES
BASIC_PITCH_WINDOW_HOP_SAMPLES = BASIC_PITCH_WINDOW_SAMPLES - BASIC_PITCH_OVERLAP_SAMPLES
BASIC_PITCH_FRAMES_PER_S = BASIC_PITCH_SAMPLE_RATE_HZ // BASIC_PITCH_HOP_SAMPLES        # 86
_ONNX_OUTPUTS = {"note": "StatefulPartitionedCall:1", "onset": "StatefulPartitionedCall:2",
                 "contour": "StatefulPartitionedCall:0"}
WINDOWS_PER_BATCH = 16                     # windows per ONNX call (about 30 s of audio)
BASIC_PITCH_FRAMES_PER_WINDOW = 172        # model output frames per window (ANNOT_N_FRAMES)
BASIC_PITCH_ENERGY_TOL = 11                # frames below threshold that end a note (basic-pitch's energy_tol)
BASIC_PITCH_MIDI_OFFSET = 21               # activation column 0 is MIDI pitch 21 (A0)
# model_frames_to_time's drift correction: seconds subtracted per 172 frames (with basic-pitch's 1.8 ms)
_WINDOW_OFFSET_S = (BASIC_PITCH_HOP_SAMPLES / BASIC_PITCH_SAMPLE_RATE_HZ) * (
    BASIC_PITCH_FRAMES_PER_WINDOW - BASIC_PITCH_WINDOW_SAMPLES / BASIC_PITCH_HOP_SAMPLES) + 0.0018

DECODE_SEGMENT_S = 30.0                    # transcribe_blocks: activations decoded into notes together
DECODE_CONTEXT_S = 3.0                     # ... with this much on each side (decoded, then dropped)
MAX_NOTE_LOOKBACK_S = 60.0                 # a note sounding longer than this is cut at a segment's end

# Tuned by benchmarks.bench_transcription.tune on 6 FluidR3-rendered PercePiano performances of
# Schubert D960 mvt. 2 (a coarse grid; no piece of the benchmark table): mean onset F1 0.842, against
# 0.733 with basic-pitch's own defaults (0.5 / 0.3 / 127.7 ms / melodia on). Melodia's extra notes
# without onsets are mostly false positives on piano.
DEFAULT_ONSET_THRESHOLD = 0.6
DEFAULT_FRAME_THRESHOLD = 0.4
DEFAULT_MIN_NOTE_MS = 58.0
DEFAULT_MELODIA_TRICK = False

ONSET_TOLERANCE_S = 0.05                   # MIREX onset tolerance
OFFSET_RATIO = 0.2                         # MIREX offset tolerance: 20 % of the reference duration
OFFSET_MIN_TOLERANCE_S = 0.05


class TranscriptionError(RuntimeError):
    """Transcription could not run; the message names the cause in one line."""


@contextlib.contextmanager
def _quiet_basic_pitch_import() -> Iterator[None]:
    """basic_pitch logs a warning per missing optional runtime (TF, CoreML, TFLite) on import."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def resample_mono(y: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """Mono float32 audio at `target_sr`. y: [n] or [n, channels] (channels averaged)."""
    y = np.asarray(y, dtype=np.float32)
    if y.ndim == 2:
        y = y.mean(axis=1)
    if y.ndim != 1:
        raise TranscriptionError(f"audio must be [samples] or [samples, channels], got shape {y.shape}")
    if sr == target_sr:
        return y
    import soxr

    return soxr.resample(y, sr, target_sr).astype(np.float32)


def frame_windows(y: np.ndarray) -> np.ndarray:
    """Audio at 22,050 Hz [n] -> overlapping model windows float32 [n_windows, 43,844, 1].

    Half an overlap of zeros goes before the signal so that, after `stitch_windows` drops half an
    overlap at each window edge, frame 0 lines up with sample 0.
    """
    padded = np.concatenate([np.zeros(BASIC_PITCH_OVERLAP_SAMPLES // 2, np.float32), y])
    starts = np.arange(0, max(len(padded), 1), BASIC_PITCH_WINDOW_HOP_SAMPLES)
    tail = starts[-1] + BASIC_PITCH_WINDOW_SAMPLES - len(padded)
    padded = np.concatenate([padded, np.zeros(max(tail, 0), np.float32)])
    index = starts[:, None] + np.arange(BASIC_PITCH_WINDOW_SAMPLES)[None, :]
    return padded[index][..., None]


def stitch_windows(activations: np.ndarray, n_samples: int) -> np.ndarray:
    """Per-window activations [n_windows, frames, bins] -> one track [n_frames, bins] for n_samples
    of 22,050 Hz audio (half the overlap dropped at each window edge).

    Window j's kept frame i starts at audio sample j * 36,164 + i * 256 (about 86.6 frames/s, not 86):
    every frame that starts inside the audio is kept, so the end of a recording is transcribed too."""
    half = BASIC_PITCH_OVERLAP_FRAMES // 2
    trimmed = activations[:, half:activations.shape[1] - half, :]
    starts = (np.arange(trimmed.shape[0])[:, None] * BASIC_PITCH_WINDOW_HOP_SAMPLES
              + np.arange(trimmed.shape[1])[None, :] * BASIC_PITCH_HOP_SAMPLES).reshape(-1)   # increasing
    n_frames = int(np.count_nonzero(starts < n_samples))
    return trimmed.reshape(-1, activations.shape[2])[:n_frames]


def _piano_notes(onset_s, offset_s, pitch, velocity) -> np.ndarray:
    """PERF_NOTE_DTYPE [n] from four sequences, keeping piano-range pitches and positive durations."""
    onset_s, offset_s = np.asarray(onset_s, np.float64), np.asarray(offset_s, np.float64)
    pitch, velocity = np.asarray(pitch, np.int64), np.asarray(velocity, np.int64)
    keep = (pitch >= PIANO_MIN_PITCH) & (pitch <= PIANO_MAX_PITCH) & (offset_s > onset_s)
    return make_perf_notes(onset_s[keep], offset_s[keep], pitch[keep], np.clip(velocity[keep], 1, 127))


class _BasicPitchBackend:
    """basic-pitch's ICASSP 2022 ONNX model on onnxruntime (CPU)."""

    sample_rate = BASIC_PITCH_SAMPLE_RATE_HZ

    def __init__(self, onset_threshold: float, frame_threshold: float, min_note_ms: float,
                 melodia_trick: bool, n_threads: int | None) -> None:
        import onnxruntime as ort

        with _quiet_basic_pitch_import():
            from basic_pitch import FilenameSuffix, build_icassp_2022_model_path
        options = ort.SessionOptions()
        if n_threads:
            options.intra_op_num_threads = int(n_threads)
        path = build_icassp_2022_model_path(FilenameSuffix.onnx)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise TranscriptionError(f"{path}: cannot load the basic-pitch ONNX model ({exc})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.onset_threshold, self.frame_threshold = onset_threshold, frame_threshold
        self.min_note_frames = int(round(min_note_ms / 1000.0 * BASIC_PITCH_FRAMES_PER_S))
        self.melodia_trick = melodia_trick

    def activations(self, y: np.ndarray) -> dict[str, np.ndarray]:
        """Audio at 22,050 Hz [n] -> {note, onset: [frames, 88], contour: [frames, 264]} in 0..1."""
        windows = frame_windows(y)
        names = list(_ONNX_OUTPUTS)
        outputs: dict[str, list[np.ndarray]] = {k: [] for k in names}
        for start in range(0, len(windows), WINDOWS_PER_BATCH):
            for key, value in self.run_windows(windows[start:start + WINDOWS_PER_BATCH], names).items():
                outputs[key].append(value)
        return {k: stitch_windows(np.concatenate(v), len(y)) for k, v in outputs.items()}

    def run_windows(self, batch: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        """Model windows [w, 43,844, 1] -> {name: [w, 172, bins]} for the outputs named (note, onset, contour)."""
        values = self.session.run([_ONNX_OUTPUTS[k] for k in names], {self.input_name: batch})
        return dict(zip(names, values))

    def notes_of(self, note: np.ndarray, onset: np.ndarray) -> list[tuple[int, int, int, float]]:
        """basic-pitch's note decoding of activations [frames, 88]: (start frame, end frame, MIDI pitch,
        mean note activation) per note, frames counted from the first row given."""
        from basic_pitch.note_creation import output_to_notes_polyphonic

        return output_to_notes_polyphonic(
            note, onset, onset_thresh=self.onset_threshold, frame_thresh=self.frame_threshold,
            min_note_len=self.min_note_frames, infer_onsets=True, max_freq=None, min_freq=None,
            melodia_trick=self.melodia_trick, energy_tol=BASIC_PITCH_ENERGY_TOL)

    def __call__(self, y: np.ndarray) -> Performance:
        from basic_pitch.note_creation import model_output_to_notes

        if len(y) < BASIC_PITCH_HOP_SAMPLES * 2:
            return Performance(notes=_piano_notes([], [], [], []), pedal=empty_pedal(), source="transcription")
        _, events = model_output_to_notes(
            self.activations(y), onset_thresh=self.onset_threshold, frame_thresh=self.frame_threshold,
            min_note_len=self.min_note_frames, include_pitch_bends=False, melodia_trick=self.melodia_trick)
        columns = list(zip(*events)) if events else [[], [], [], []]
        velocity = np.rint(127.0 * np.asarray(columns[3], np.float64))
        notes = _piano_notes(columns[0], columns[1], columns[2], velocity)
        return Performance(notes=notes, pedal=empty_pedal(), source="transcription")


class _TranskunBackend:
    """Transkun 2.0 (optional dependency; runs its packaged pretrained model, on GPU when given)."""

    def __init__(self, device: str = "cpu") -> None:
        try:
            from importlib.resources import files

            import moduleconf
            import torch
        except ImportError as exc:
            raise TranscriptionError(f"transkun backend needs the transkun package ({exc}); "
                                     "pip install transkun where a matching torchaudio is available") from None
        try:
            root = files("transkun") / "pretrained"
        except ModuleNotFoundError:
            raise TranscriptionError("transkun backend needs the transkun package (not installed); "
                                     "pip install transkun where a matching torchaudio is available") from None
        conf_manager = moduleconf.parseFromFile(str(root / "2.0.conf"))
        model = conf_manager["Model"].module.TransKun(conf=conf_manager["Model"].config)
        checkpoint = torch.load(str(root / "2.0.pt"), map_location=device)
        model.load_state_dict(checkpoint.get("best_state_dict", checkpoint.get("state_dict")), strict=False)
        self.model, self.device, self.torch = model.to(device).eval(), device, torch
        self.sample_rate = int(model.fs)

    def __call__(self, y: np.ndarray) -> Performance:
        with self.torch.no_grad():
            x = self.torch.from_numpy(np.ascontiguousarray(y[:, None])).to(self.device)
            events = self.model.transcribe(x, discardSecondHalf=False)
        keys = [e for e in events if e.pitch > 0]
        notes = _piano_notes([e.start for e in keys], [e.end for e in keys], [e.pitch for e in keys],
                             [e.velocity for e in keys])
        # pedals come back as events with pitch = -controller: one down and one up event each
        rows = [(t, -e.pitch, v) for e in events if e.pitch < 0 for t, v in ((e.start, 127), (e.end, 0))]
        pedal = np.array(rows, dtype=PEDAL_DTYPE) if rows else empty_pedal()
        pedal = pedal[np.lexsort((pedal["controller"], pedal["time_s"]))]
        return Performance(notes=notes, pedal=pedal, source="transcription")


class Transcriber:
    """Audio -> `Performance(source="transcription")`; loads its model once.

    `Transcriber()(y, sr)` with y float audio [n] or [n, channels] at any rate `sr` (Hz); it is
    resampled to the model's rate. Notes outside A0..C8 are dropped. basic-pitch gives no pedal.
    """

    BACKENDS = ("basic-pitch", "transkun")

    def __init__(self, backend: str = "basic-pitch", onset_threshold: float = DEFAULT_ONSET_THRESHOLD,
                 frame_threshold: float = DEFAULT_FRAME_THRESHOLD, min_note_ms: float = DEFAULT_MIN_NOTE_MS,
                 melodia_trick: bool = DEFAULT_MELODIA_TRICK, n_threads: int | None = None,
                 device: str = "cpu") -> None:
        if backend not in self.BACKENDS:
            raise ValueError(f"unknown transcription backend {backend!r}; expected one of {self.BACKENDS}")
        if not (0.0 < onset_threshold < 1.0 and 0.0 < frame_threshold < 1.0):
            raise ValueError(f"thresholds must lie in (0, 1), got onset {onset_threshold}, frame {frame_threshold}")
        self.backend_name = backend
        if backend == "basic-pitch":
            self._backend = _BasicPitchBackend(onset_threshold, frame_threshold, min_note_ms, melodia_trick,
                                               n_threads)
        else:
            self._backend = _TranskunBackend(device)

    @property
    def sample_rate(self) -> int:
        """The model's input rate in Hz."""
        return int(self._backend.sample_rate)

    def __call__(self, y: np.ndarray, sr: int) -> Performance:
        if sr <= 0:
            raise TranscriptionError(f"sample rate must be positive, got {sr}")
        audio = resample_mono(y, int(sr), self.sample_rate)
        if not np.all(np.isfinite(audio)):
            raise TranscriptionError("audio holds NaN or infinite samples")
        return self._backend(audio)


# --- block-wise transcription -----------------------------------------------------------------

def transcribe_blocks(transcriber: Transcriber, blocks_44k: Iterable[np.ndarray], sr: int = 44_100, *,
                      segment_s: float = DECODE_SEGMENT_S, context_s: float = DECODE_CONTEXT_S,
                      keep_evidence: bool = False) -> Performance:
    """Transcribe a recording given block by block (mono [n] or [n, channels] float blocks at `sr` Hz,
    in order, of any sizes) into the notes `transcriber(whole_array, sr)` gives, holding about
    segment_s + 2 context_s seconds of activations and one batch of model windows, never the recording.

    The basic-pitch windows lie on the whole-array grid, so the activations are the same; notes are
    decoded per segment of `segment_s` with `context_s` of activations on each side. A note is kept by
    the segment its onset falls in; one still sounding at that segment's end (decoding stopped by the
    segment, not by the note) is decoded again by the next segment, from its onset, so it is neither
    doubled nor cut (up to MAX_NOTE_LOOKBACK_S long). Raises TranscriptionError for NaN/inf audio, a
    non-positive rate, or a backend other than basic-pitch.

    keep_evidence: also keep the onset activations (uint8, 88 pitches x 86 frames/s: 27 MB an hour) as
    `Performance.onset_evidence`, so per-bar feedback can tell a note the decoder dropped from one not played.
    """
    backend = transcriber._backend
    if not isinstance(backend, _BasicPitchBackend):
        raise TranscriptionError(f"block-wise transcription needs the basic-pitch backend, not {transcriber.backend_name}")
    if sr <= 0:
        raise TranscriptionError(f"sample rate must be positive, got {sr}")
    if not (segment_s > 0 and context_s >= 0.1):
        raise ValueError(f"segment_s must be > 0 and context_s >= 0.1, got {segment_s}, {context_s}")
    import soxr

    evidence: list[np.ndarray] = []

    def _kept(chunks: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
        if keep_evidence:
            evidence.extend(np.round(onset * 255.0).astype(np.uint8) for _, onset in chunks)
        return chunks

    resampler = None if sr == backend.sample_rate else soxr.ResampleStream(sr, backend.sample_rate, 1, dtype="float32")
    frames_per_s = BASIC_PITCH_FRAMES_PER_S
    windows = _WindowStream(backend)
    decoder = _SegmentDecoder(backend, int(round(segment_s * frames_per_s)), int(round(context_s * frames_per_s)),
                              int(round(MAX_NOTE_LOOKBACK_S * frames_per_s)))
    for block in blocks_44k:
        y = np.asarray(block, dtype=np.float32)
        if y.ndim == 2:
            y = y.mean(axis=1)
        if y.ndim != 1:
            raise TranscriptionError(f"audio blocks must be [samples] or [samples, channels], got shape {y.shape}")
        if not np.all(np.isfinite(y)):
            raise TranscriptionError("audio holds NaN or infinite samples")
        decoder.push(_kept(windows.push(y if resampler is None else resampler.resample_chunk(y))))
    if resampler is not None:
        decoder.push(_kept(windows.push(resampler.resample_chunk(np.zeros(0, np.float32), last=True))))
    decoder.push(_kept(windows.finish()))
    if windows.n_samples < BASIC_PITCH_HOP_SAMPLES * 2:           # as the whole-array call: too short for notes
        return Performance(notes=_piano_notes([], [], [], []), pedal=empty_pedal(), source="transcription")
    events = decoder.finish()
    start_f = np.array([e[0] for e in events], np.int64)
    end_f = np.array([e[1] for e in events], np.int64)
    velocity = np.rint(127.0 * np.array([e[3] for e in events], np.float64))
    notes = _piano_notes(model_frame_times(start_f), model_frame_times(end_f), [e[2] for e in events], velocity)
    perf = Performance(notes=notes, pedal=empty_pedal(), source="transcription")
    if keep_evidence:
        onset = np.concatenate(evidence) if evidence else np.zeros((0, 88), np.uint8)
        perf.onset_evidence = OnsetEvidence(onset, 1.0 / EVIDENCE_SECONDS_PER_FRAME)
    return perf


class OnsetEvidence:
    """The transcriber's onset activation (uint8 [frames, 88], pitch 21 + column) at `fps` frames per
    second: how strongly each pitch started at each time, kept so that a written note the decoder
    missed can be told from one that was not played."""

    def __init__(self, onset: np.ndarray, fps: float, first_time_s: float = 0.0) -> None:
        self.onset, self.fps, self.first_time_s = onset, float(fps), float(first_time_s)

    def at(self, pitch: int, time_s: float, reach_s: float = 0.08) -> float:
        """Largest onset activation (0..1) of `pitch` within +-reach_s of `time_s`."""
        col = int(pitch) - 21
        if not 0 <= col < self.onset.shape[1] or len(self.onset) == 0:
            return 0.0
        a = max(0, int(math.floor((time_s - reach_s - self.first_time_s) * self.fps)))
        b = min(len(self.onset), int(math.ceil((time_s + reach_s - self.first_time_s) * self.fps)) + 1)
        return float(self.onset[a:b, col].max()) / 255.0 if b > a else 0.0


# seconds per stitched activation frame on average (model_frame_times' slope, its per-window correction spread)
EVIDENCE_SECONDS_PER_FRAME = (BASIC_PITCH_HOP_SAMPLES / BASIC_PITCH_SAMPLE_RATE_HZ
                              - _WINDOW_OFFSET_S / BASIC_PITCH_FRAMES_PER_WINDOW)


def model_frame_times(frames: np.ndarray) -> np.ndarray:
    """Seconds of stitched activation frames (global indices), as basic_pitch's model_frames_to_time."""
    frames = np.asarray(frames, dtype=np.int64)
    return (frames * BASIC_PITCH_HOP_SAMPLES / BASIC_PITCH_SAMPLE_RATE_HZ
            - _WINDOW_OFFSET_S * np.floor(frames / BASIC_PITCH_FRAMES_PER_WINDOW))


class _WindowStream:
    """22,050 Hz audio pushed in pieces -> stitched note/onset activations [frames, 88] in order.

    Window j covers padded samples [j * 36,164, + 43,844) of (half an overlap of zeros + the audio),
    as `frame_windows` cuts them; it runs once the audio covers it (the last ones, zero-padded, in
    `finish`). Its middle 142 frames start at audio samples j * 36,164 + i * 256; frames starting at
    or after the end of the audio are dropped.
    """

    def __init__(self, backend: _BasicPitchBackend) -> None:
        self.backend = backend
        self.n_samples = 0                                             # audio received
        self._audio = np.zeros(BASIC_PITCH_OVERLAP_SAMPLES // 2, np.float32)   # padded samples from _offset on
        self._offset = 0
        self._next = 0                                                 # next window index
        self._batch: list[np.ndarray] = []                             # windows [43,844] waiting for a run

    def push(self, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Add audio [n]; returns the (note, onset) activation chunks [f, 88] now complete."""
        if len(y):
            self._audio = np.concatenate([self._audio, y])
            self.n_samples += len(y)
        out = []
        padded_end = BASIC_PITCH_OVERLAP_SAMPLES // 2 + self.n_samples
        while self._next * BASIC_PITCH_WINDOW_HOP_SAMPLES + BASIC_PITCH_WINDOW_SAMPLES <= padded_end:
            self._take_window()
            if len(self._batch) == WINDOWS_PER_BATCH:
                out.append(self._run(final=False))
        return out

    def finish(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The remaining windows, zero-padded past the audio, as the whole-array call cuts them."""
        padded_end = BASIC_PITCH_OVERLAP_SAMPLES // 2 + self.n_samples
        while self._next * BASIC_PITCH_WINDOW_HOP_SAMPLES < max(padded_end, 1):
            self._take_window()
        return [self._run(final=True)] if self._batch else []

    def _take_window(self) -> None:
        start = self._next * BASIC_PITCH_WINDOW_HOP_SAMPLES - self._offset
        window = self._audio[start:start + BASIC_PITCH_WINDOW_SAMPLES]
        self._batch.append(np.pad(window, (0, BASIC_PITCH_WINDOW_SAMPLES - len(window))))
        self._next += 1
        drop = self._next * BASIC_PITCH_WINDOW_HOP_SAMPLES - self._offset            # before the next window
        self._audio, self._offset = self._audio[drop:], self._offset + drop

    def _run(self, final: bool) -> tuple[np.ndarray, np.ndarray]:
        first = self._next - len(self._batch)                          # index of the batch's first window
        out = self.backend.run_windows(np.stack(self._batch)[..., None], ["note", "onset"])
        self._batch = []
        half = BASIC_PITCH_OVERLAP_FRAMES // 2
        note, onset = (out[k][:, half:BASIC_PITCH_FRAMES_PER_WINDOW - half] for k in ("note", "onset"))
        if final:                                                      # keep frames that start inside the audio
            starts = ((first + np.arange(note.shape[0]))[:, None] * BASIC_PITCH_WINDOW_HOP_SAMPLES
                      + np.arange(note.shape[1])[None, :] * BASIC_PITCH_HOP_SAMPLES)
            keep = (starts < max(self.n_samples, 1)).reshape(-1)
            return note.reshape(-1, note.shape[2])[keep], onset.reshape(-1, onset.shape[2])[keep]
        return note.reshape(-1, note.shape[2]), onset.reshape(-1, onset.shape[2])


@dataclasses.dataclass
class _OpenNote:
    pitch: int
    start: int                                                         # global frame of its onset
    fallback: tuple[int, int, int, float]                              # the cut version, if not found again


class _SegmentDecoder:
    """Activation frames pushed in order -> basic-pitch notes decoded segment by segment.

    Segment k owns onsets in frames [k L, (k + 1) L) and decodes [k L - C, (k + 1) L + C) (C frames of
    context each side); it starts earlier when a note of the previous segment was still sounding at
    that segment's end, so that note is decoded again from its onset (matched by pitch and onset frame).
    """

    def __init__(self, backend: _BasicPitchBackend, segment: int, context: int, lookback: int) -> None:
        self.backend = backend
        self.segment, self.context, self.lookback = max(1, segment), max(2, context), lookback
        self._note = np.zeros((0, 88), np.float32)                    # frames from _start on
        self._onset = np.zeros((0, 88), np.float32)
        self._start = 0
        self._received = 0
        self._k = 0
        self._open: list[_OpenNote] = []
        self.events: list[tuple[int, int, int, float]] = []            # (start frame, end frame, pitch, amplitude)

    def push(self, chunks: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for note, onset in chunks:
            self._note = np.concatenate([self._note, note])
            self._onset = np.concatenate([self._onset, onset])
            self._received += len(note)
        while (self._k + 1) * self.segment + self.context <= self._received:
            self._decode(final=False)

    def finish(self) -> list[tuple[int, int, int, float]]:
        while self._k * self.segment < self._received or self._open:
            self._decode(final=True)
        return self.events

    def _decode(self, final: bool) -> None:
        a, b = self._k * self.segment, (self._k + 1) * self.segment
        end = min(b + self.context, self._received)
        at_end = final and end == self._received                       # the recording ends here, not the segment
        begin = max(0, min([a - self.context] + [n.start - 2 for n in self._open]))
        lo, hi = begin - self._start, end - self._start
        found = [(s + begin, e + begin, int(p), float(amp))
                 for s, e, p, amp in self.backend.notes_of(self._note[lo:hi], self._onset[lo:hi])]

        def still_sounding(event: tuple[int, int, int, float]) -> bool:
            return not at_end and event[1] > end - 1 - BASIC_PITCH_ENERGY_TOL

        reopened: list[_OpenNote] = []
        for note in self._open:                                        # notes cut by the previous segment
            match = min((e for e in found if e[2] == note.pitch and abs(e[0] - note.start) <= 1),
                        key=lambda e: abs(e[0] - note.start), default=None)
            if match is None:
                self.events.append(note.fallback)
            elif still_sounding(match) and b - match[0] <= self.lookback:
                reopened.append(_OpenNote(note.pitch, match[0], match))
            else:
                self.events.append(match)
        for event in found:                                            # onsets owned by this segment
            if a <= event[0] < b:
                if still_sounding(event) and b - event[0] <= self.lookback:
                    reopened.append(_OpenNote(event[2], event[0], event))
                else:
                    self.events.append(event)
        self._open = reopened
        self._k += 1
        keep_from = max(0, min([b - self.context] + [n.start - 2 for n in self._open]))
        if keep_from > self._start:
            self._note, self._onset = self._note[keep_from - self._start:], self._onset[keep_from - self._start:]
            self._start = keep_from


# --- evaluation --------------------------------------------------------------------------------

def _intervals_and_hz(perf: Performance) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(intervals [n, 2] s, pitches [n] Hz, velocities [n]) with zero-length notes given 1 ms."""
    notes = perf.notes
    onset = notes["onset_s"].astype(np.float64)
    offset = np.maximum(notes["offset_s"].astype(np.float64), onset + 1e-3)
    hz = 440.0 * 2.0 ** ((notes["pitch"].astype(np.float64) - 69.0) / 12.0)
    return np.stack([onset, offset], axis=1).reshape(-1, 2), hz, notes["velocity"].astype(np.float64)


def onset_f1(reference: Performance, estimate: Performance,
             onset_tolerance: float = ONSET_TOLERANCE_S) -> dict[str, float]:
    """Note-level transcription scores (mir_eval.transcription, MIREX conventions).

    Keys: precision, recall, f1 (onset and pitch within `onset_tolerance` s, offsets ignored);
    offset_precision, offset_recall, offset_f1 (also offset within max(20 % of the reference
    duration, 50 ms): velocity-free note F1); velocity_f1 (also velocity, mir_eval.transcription_velocity);
    n_reference, n_estimate. Empty sides score 0 (both empty: 1).
    """
    import mir_eval

    ref_iv, ref_hz, ref_vel = _intervals_and_hz(reference)
    est_iv, est_hz, est_vel = _intervals_and_hz(estimate)
    out = {"n_reference": float(len(ref_hz)), "n_estimate": float(len(est_hz))}
    keys = ("precision", "recall", "f1", "offset_precision", "offset_recall", "offset_f1", "velocity_f1")
    if len(ref_hz) == 0 or len(est_hz) == 0:
        value = 1.0 if len(ref_hz) == len(est_hz) else 0.0
        return {**out, **{k: value for k in keys}}
    prf = mir_eval.transcription.precision_recall_f1_overlap
    p, r, f, _ = prf(ref_iv, ref_hz, est_iv, est_hz, onset_tolerance=onset_tolerance, offset_ratio=None)
    po, ro, fo, _ = prf(ref_iv, ref_hz, est_iv, est_hz, onset_tolerance=onset_tolerance,
                        offset_ratio=OFFSET_RATIO, offset_min_tolerance=OFFSET_MIN_TOLERANCE_S)
    _, _, fv, _ = mir_eval.transcription_velocity.precision_recall_f1_overlap(
        ref_iv, ref_hz, ref_vel, est_iv, est_hz, est_vel, onset_tolerance=onset_tolerance,
        offset_ratio=OFFSET_RATIO, offset_min_tolerance=OFFSET_MIN_TOLERANCE_S)
    return {**out, "precision": float(p), "recall": float(r), "f1": float(f), "offset_precision": float(po),
            "offset_recall": float(ro), "offset_f1": float(fo), "velocity_f1": float(fv)}
