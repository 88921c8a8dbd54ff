"""Per-recording preprocessing: one recording (+ score) in, feature rows (one per window) out.

`RecordingProcessor` does the heavy set-up once (CQT kernels, transcription model, augmenter) and is
what the Ray Data job wraps; it is plain Python and unit-testable without Ray. Every failure becomes a
single `status="error"` row whose message names the file and the cause; nothing is skipped silently.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np

from pipelines import constants as C
from pipelines.config import Config
from pipelines.features.rows import dumps_labels, empty_row, error_row, pack_array
from pipelines.io import storage
from pipelines.io.errors import one_line
from pipelines.io.notes import Performance, Score, empty_pedal, empty_perf_notes

MAX_AUGMENT_DRAWS = 20


class PreprocessError(RuntimeError):
    """A recording could not be processed; the message names the file and the cause."""


@dataclasses.dataclass
class Variant:
    """One version of a recording fed to segmentation: the original or an augmented copy."""
    mert_audio: np.ndarray          # (S,) 24 kHz
    cqt_audio: np.ndarray           # (S',) 44.1 kHz
    perf: Performance | None
    score: Score | None
    augment: str = ""
    label_perf: Performance | None = None   # performance MIDI for the pseudo-labels when `perf` is transcribed


def _stage(uri: str, what: str, exc: BaseException) -> Exception:
    if isinstance(exc, storage.StorageUnavailable):     # not the input's fault: passed on for a retry
        return exc
    text = one_line(exc)
    if uri and uri in text:                      # the stage's own error already names the file
        return PreprocessError(text)
    return PreprocessError(f"{uri}: {what} failed: {type(exc).__name__}: {text}")


def _stable_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha1("|".join(map(str, parts)).encode()).digest()[:8], "little")


def recording_stats(windows: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """[(tokens (N, 8), attributes (N, N_PERF_ATTRS), onsets (N,)) per window of one recording] -> float32 (2S,),
    `model.statistics.recording_statistics` of them (the `recording_stats` column; the scoring job's too)."""
    import torch

    from model.statistics import recording_statistics

    longest = max([len(w[0]) for w in windows] + [1])
    notes = np.zeros((len(windows), longest, 8), np.int64)
    attrs = np.zeros((len(windows), longest, C.N_PERF_ATTRS), np.float32)
    times = np.zeros((len(windows), longest), np.float32)
    for i, (tok, att, tim) in enumerate(windows):
        notes[i, : len(tok)], attrs[i, : len(tok)], times[i, : len(tok)] = tok, att, tim
    lengths = torch.tensor([len(w[0]) for w in windows], dtype=torch.long).reshape(-1)
    return recording_statistics(torch.from_numpy(notes), torch.from_numpy(attrs), torch.from_numpy(times), lengths,
                                C.N_PERF_ATTRS).numpy().astype(np.float32)


def segment_notes(score: Score, perf: Performance, alignment, attrs: np.ndarray, seg, max_notes: int,
                  tokens_by_offset: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The symbolic input of one window: OctupleMIDI tokens (n, 8), aligned attributes (n, A) and performed
    onsets in seconds from the window start (n,), for at most `max_notes` of its alignment tokens.

    OctupleMIDI bars are relative to the window's first bar; `tokens_by_offset` caches the encoding of
    the whole alignment per bar offset across the windows of one recording."""
    from pipelines.features.octuple import encode_alignment

    idx = np.flatnonzero(seg.token_mask)[:max_notes]
    offset = max(seg.bar_start, 0)
    if offset not in tokens_by_offset:
        tokens_by_offset[offset] = encode_alignment(score, perf, alignment, bar_offset=offset)
    times = alignment.tokens["perf_onset_s"][idx] - seg.start_s
    return tokens_by_offset[offset][idx], attrs[idx], times


def copy_clean_pseudo_labels(clean_rows: list[dict], aug_rows: list[dict]) -> None:
    """Give each augmented row the pseudo-labels of the matching clean segment (in place).

    The labels describe the playing, which augmentation does not change, so they are computed on the clean
    variant only (noise or MP3 artefacts must not lower tone, a time stretch must not move rhythm).
    A segment with score bars matches the clean segment of most overlapping bars (a time stretch moves the
    windows over the music); one without bars matches by index when both variants have as many segments;
    anything else gets NaN labels rather than another segment's.
    """
    nan = dumps_labels({})
    by_index = len(clean_rows) == len(aug_rows)
    for k, aug in enumerate(aug_rows):
        best, best_overlap = None, 0
        if aug["bar_start"] >= 0:
            for clean in clean_rows:
                overlap = min(aug["bar_end"], clean["bar_end"]) - max(aug["bar_start"], clean["bar_start"]) + 1
                if clean["bar_start"] >= 0 and overlap > best_overlap:
                    best, best_overlap = clean, overlap
        elif by_index and clean_rows[k]["bar_start"] < 0:
            best = clean_rows[k]
        aug["pseudo_json"] = best["pseudo_json"] if best is not None else nan


def _midi_labeller(score: Score | None, label_perf: Performance, spans: list[tuple[float, float]]):
    """seg, audio_features -> pseudo-labels of the performance MIDI's notes in the window's time span.

    Used when the model's notes are transcribed: the labels describe the playing, which the MIDI records
    exactly (the transcription's dropped and false notes would otherwise read as wrong notes and smeared
    rhythm). The MIDI is aligned to the score on its own; windows are the same time spans."""
    from pipelines.features import align as A
    from pipelines.features import pseudo_labels as L
    from pipelines.features.attributes import note_attributes
    from pipelines.features.segment import onset_masks

    if score is not None:
        alignment = A.align(score, label_perf)
        attrs = note_attributes(score, label_perf, alignment)
        masks = onset_masks(alignment.tokens["perf_onset_s"], spans)
    else:
        alignment = attrs = None
        masks = onset_masks(label_perf.notes["onset_s"], spans)

    def label(seg, audio_features):
        return L.pseudo_labels(score, label_perf, alignment, attrs, audio_features, note_mask=masks[seg.index])
    return label


class RecordingProcessor:
    """Callable: record dict -> list of feature-row dicts (see pipelines/features/rows.py)."""

    def __init__(self, config: Config, soundfont: str | None = None) -> None:
        from pipelines.features.augment import Augmenter
        from pipelines.features.cqt import CQTExtractor

        self.config = config
        self.data = config.data
        self.soundfont = soundfont
        self.cqt = CQTExtractor(device="auto") if self.data.store_cqt else None
        self.augmenter = Augmenter(self.data.augment) if self.data.augment.enabled else None
        self._transcriber = None

    # --- heavy resources -------------------------------------------------------------------------
    @property
    def transcriber(self):
        if self._transcriber is None:
            from pipelines.features.transcribe import Transcriber
            self._transcriber = Transcriber(backend=self.data.transcriber)
        return self._transcriber

    # --- stages ----------------------------------------------------------------------------------
    def load_audio(self, record: dict) -> tuple[np.ndarray, int]:
        from pipelines.io.audio import load_audio
        if record.get("audio_uri"):
            return load_audio(record["audio_uri"], max_duration_s=self.data.max_duration_s)
        if record.get("midi_uri"):
            from pipelines.features.render import render_midi
            with storage.local_path(record["midi_uri"]) as path:
                return render_midi(path, soundfont=self.soundfont, sample_rate=C.CQT_SAMPLE_RATE_HZ,
                                   max_seconds=self.data.max_duration_s), C.CQT_SAMPLE_RATE_HZ
        raise PreprocessError(f"{record.get('recording_id')}: the record has neither audio nor performance MIDI")

    def notes_source(self, record: dict) -> str:
        """Where this recording's model notes come from: "midi" or "transcription".

        `auto` gives the model what the scoring job will see for such a recording: a recording with audio is
        scored from its transcription (a library holds audio, not MIDI), so its notes are transcribed and
        its performance MIDI only labels it; a MIDI-only recording (PercePiano, a digital piano) is scored
        from its MIDI. `prefer_midi` takes the MIDI whenever there is one (the earlier default)."""
        source, midi_uri = self.data.performance_source, record.get("midi_uri")
        if source == "midi":
            if not midi_uri:
                raise PreprocessError(f"{record.get('audio_uri')}: data.performance_source is 'midi' but the "
                                      "recording has no performance MIDI")
            return "midi"
        if source == "transcribe" or not midi_uri:
            return "transcription"
        if source == "prefer_midi":
            return "midi"
        return "transcription" if record.get("audio_uri") else "midi"      # auto

    def performance(self, record: dict, audio_44k: np.ndarray) -> Performance | None:
        if self.notes_source(record) == "midi":
            from pipelines.io.performance import load_performance
            return load_performance(record["midi_uri"])
        return self.transcriber(audio_44k, C.CQT_SAMPLE_RATE_HZ)

    def label_performance(self, record: dict, perf: Performance | None) -> Performance | None:
        """The performance MIDI that labels transcribed notes (None: the notes label themselves)."""
        if not record.get("midi_uri") or perf is None or perf.source != "transcription":
            return None
        from pipelines.io.performance import load_performance
        return load_performance(record["midi_uri"])

    def variants(self, record: dict, decoded, perf: Performance | None, score: Score | None,
                 label_perf: Performance | None = None) -> list[Variant]:
        """The original recording and, on the training split, its seeded augmented copies.

        Transcribed notes are transcribed again from each augmented copy (noise, reverb and MP3 change what
        the transcriber hears, as they would at scoring time); MIDI notes are transformed with the audio."""
        from pipelines.io.audio import resample
        out = [Variant(decoded.mert, decoded.cqt, perf, score, label_perf=label_perf)]
        if self.augmenter is None or record.get("split") != "train":
            return out
        from pipelines.features.augment import transform_pedal, transform_perf_notes, transform_score_notes
        for copy in range(self.data.augment.copies):
            rng = np.random.default_rng(_stable_seed(self.data.augment.seed, record["recording_id"], copy))
            for _ in range(MAX_AUGMENT_DRAWS):        # a copy with no transform drawn would only duplicate
                y_aug, info = self.augmenter(decoded.cqt, C.CQT_SAMPLE_RATE_HZ, rng)
                if info.applied:
                    break
            else:
                continue
            if perf is None:
                aug_perf = None
            elif perf.source == "transcription":
                aug_perf = self.transcriber(y_aug, C.CQT_SAMPLE_RATE_HZ)
            else:
                aug_perf = dataclasses.replace(perf, notes=transform_perf_notes(perf.notes, info),
                                               pedal=transform_pedal(perf.pedal, info))
            aug_score = None if score is None else dataclasses.replace(
                score, notes=transform_score_notes(score.notes, info))
            out.append(Variant(resample(y_aug, C.CQT_SAMPLE_RATE_HZ, C.MERT_SAMPLE_RATE_HZ), y_aug,
                               aug_perf, aug_score, augment=info.describe()))
        return out

    def segment_rows(self, record: dict, variant: Variant, content_hash: str, with_pseudo: bool = True) -> list[dict]:
        """Align, segment and pack one variant into rows (pseudo-labels left empty unless with_pseudo)."""
        from pipelines.features import align as A
        from pipelines.features import pseudo_labels as L
        from pipelines.features import segment as S
        from pipelines.features.attributes import note_attributes

        data = self.data
        duration_s = len(variant.cqt_audio) / C.CQT_SAMPLE_RATE_HZ
        perf, score = variant.perf, variant.score
        alignment = attrs = None
        if score is not None and perf is not None and len(perf.notes):
            alignment = A.align(score, perf)
            attrs = note_attributes(score, perf, alignment)
            segments = S.segment_alignment(alignment, score, duration_s, data.train_window_s, data.window_overlap)
        else:
            perf_or_empty = perf if perf is not None else Performance(empty_perf_notes(), empty_pedal(), "none")
            segments = S.segment_performance(perf_or_empty, duration_s, data.train_window_s, data.window_overlap)
        cqt = self.cqt(variant.cqt_audio)[0] if self.cqt is not None else None      # (F, 168)
        base = {
            "recording_id": record["recording_id"], "split": record.get("split") or "",
            "piece_id": record.get("piece_id") or "", "performer_id": record.get("performer_id") or "",
            "source_uri": record.get("audio_uri") or record.get("midi_uri") or "",
            "content_hash": content_hash, "has_score": alignment is not None,
            "perf_source": perf.source if perf is not None else "none",
            "labels_json": dumps_labels(record.get("labels")), "augment": variant.augment,
        }
        labeller = None
        if with_pseudo and variant.label_perf is not None and len(variant.label_perf.notes):
            labeller = _midi_labeller(score, variant.label_perf, [(s.start_s, s.end_s) for s in segments])
        rows, windows = [], []                         # windows: each row's symbolic input, for recording_stats
        tokens_by_offset: dict[int, np.ndarray] = {}   # OctupleMIDI bars are relative to the window's first bar
        for seg in segments:
            row = empty_row()
            row.update(base)
            row.update(segment_index=seg.index, start_s=float(seg.start_s), end_s=float(seg.end_s),
                       bar_start=int(seg.bar_start), bar_end=int(seg.bar_end))
            if data.store_audio:
                a0 = int(round(seg.start_s * C.MERT_SAMPLE_RATE_HZ))
                a1 = int(round(seg.end_s * C.MERT_SAMPLE_RATE_HZ))
                audio = variant.mert_audio[a0:a1]
                row.update(audio=pack_array(audio, "f2"), audio_samples=len(audio))
            frames = None
            if cqt is not None:
                f0 = int(np.floor(seg.start_s * C.CQT_FRAMES_PER_S))
                f1 = min(len(cqt), int(np.ceil(seg.end_s * C.CQT_FRAMES_PER_S)) + 1)
                frames = cqt[f0:f1]
                row.update(cqt=pack_array(frames, "f2"), cqt_frames=len(frames))
            audio_features = {"cqt": frames} if frames is not None and len(frames) else None
            if alignment is not None:
                seg_tokens, seg_attrs, times = segment_notes(score, perf, alignment, attrs, seg, data.max_notes,
                                                             tokens_by_offset)
                row.update(notes=pack_array(seg_tokens, "i2"), note_attrs=pack_array(seg_attrs, "f4"),
                           note_times=pack_array(times, "f4"), n_notes=len(seg_tokens))
                windows.append((seg_tokens, seg_attrs, times))
            if not with_pseudo:
                pseudo = {}
            elif labeller is not None:
                pseudo = labeller(seg, audio_features)
            elif alignment is not None:
                pseudo = L.pseudo_labels(score, perf, alignment, attrs, audio_features, note_mask=seg.token_mask)
            elif perf is not None:
                pseudo = L.pseudo_labels(None, perf, None, None, audio_features, note_mask=seg.token_mask)
            else:
                pseudo = {}
            row["pseudo_json"] = dumps_labels(pseudo)
            rows.append(row)
        if alignment is not None:           # the whole recording's statistics and descriptors, on each of its windows
            from pipelines.features.descriptors import recording_descriptors
            context = pack_array(recording_stats(windows), "f4")
            described = pack_array(recording_descriptors(perf, score, alignment, attrs), "f4")
            for row in rows:
                row["recording_stats"], row["perf_features"] = context, described
        return rows

    # --- entry point -----------------------------------------------------------------------------
    def process(self, record: dict) -> list[dict]:
        refused = (record.get("extra") or {}).get("error")
        if refused:                 # refused by the corpus reader (e.g. a path outside the corpus root)
            raise PreprocessError(str(refused))
        uri = record.get("audio_uri") or record.get("midi_uri") or str(record.get("recording_id"))
        try:
            content_hash = storage.content_hash(uri) if (record.get("audio_uri") or record.get("midi_uri")) else ""
        except Exception as exc:
            raise _stage(uri, "reading", exc) from None
        try:
            from pipelines.io.audio import prepare_audio
            y, sr = self.load_audio(record)
            decoded = prepare_audio(y, sr, uri, self.data.min_duration_s, self.data.max_duration_s)
        except Exception as exc:
            raise _stage(uri, "audio decoding", exc) from None
        try:
            perf = self.performance(record, decoded.cqt)
        except Exception as exc:
            raise _stage(record.get("midi_uri") or uri, "performance notes", exc) from None
        score = None
        if record.get("score_uri"):
            try:
                from pipelines.io.notation import load_score
                score = load_score(record["score_uri"])
            except Exception as exc:
                raise _stage(record["score_uri"], "score reading", exc) from None
        try:
            label_perf = self.label_performance(record, perf)
        except Exception as exc:
            raise _stage(record.get("midi_uri") or uri, "performance MIDI (labels)", exc) from None
        if score is not None and perf is not None:    # bound the note DTWs before any variant is aligned
            performed = max(len(perf.notes), len(label_perf.notes) if label_perf is not None else 0)
            cells = float(performed) * float(len(np.unique(score.notes["onset_beat"])))
            if cells > self.data.max_alignment_cells:
                raise PreprocessError(f"{record['score_uri']}: too many notes to align ({performed} performed "
                                      f"x {len(score.notes)} written: {cells:.3g} cells > data.max_alignment_cells "
                                      f"{self.data.max_alignment_cells:.3g})")
        try:
            variants = self.variants(record, decoded, perf, score, label_perf)
        except Exception as exc:
            raise _stage(uri, "augmentation", exc) from None
        rows: list[dict] = []
        clean_rows: list[dict] = []
        for variant in variants:
            try:
                variant_rows = self.segment_rows(record, variant, content_hash, with_pseudo=not variant.augment)
            except Exception as exc:
                raise _stage(record.get("score_uri") or uri,
                             f"alignment/segmentation{' of ' + variant.augment if variant.augment else ''}",
                             exc) from None
            if variant.augment:
                copy_clean_pseudo_labels(clean_rows, variant_rows)
            else:
                clean_rows = variant_rows
            rows.extend(variant_rows)
        return rows

    def __call__(self, record: dict) -> list[dict]:
        """Rows for one recording; on any failure exactly one error row naming the file and cause."""
        try:
            rows = self.process(record)
            if not rows:
                raise PreprocessError(f"{record.get('audio_uri') or record.get('recording_id')}: no segments")
            return rows
        except storage.StorageUnavailable:   # the storage, not the input: ProcessRecordings retries it
            raise
        except Exception as exc:  # every other failure is recorded, never raised out of the batch
            return [error_row(record, one_line(exc))]
