"""Corpus readers: one `Recording` per recording, from local paths or `s3://` prefixes.

Three layouts are understood; `read_corpus` picks one:

- **maestro**: a MAESTRO v3 table (`maestro-v3.0.0.csv`, or any `maestro*.csv` / `maestro*.json` at the
  top of the prefix) with `canonical_composer, canonical_title, split, year, midi_filename,
  audio_filename, duration`. Optional extra columns (written by the demo generator) override the
  derived ids: `recording_id, piece_id, performer_id, score_filename`. Without them the recording id is
  `<year>/<audio file stem>`, the piece id a slug of composer + title, and, since MAESTRO does not name
  its performers, the performer id is the recording id (every recording its own, unknown, performer).
  Labels come from an optional `labels.csv` beside the table (`recording_id` + one column per
  dimension, values 0..100, blank = missing).
- **percepiano**: `performances/*.mid`, `scores_midi/`, `scores_xml/`, `labels_mean.json` (see
  `shared/data/percepiano/README.md`). A segment `<piece>_<N>bars_<player>_<segment>` becomes a
  recording with that id; `audio_uri` is None (render the performance MIDI on demand). Labels use the
  `percepiano19` schema's names, rating x 100. The performer id is `percepiano-p<player index>` (the
  index the labels give, one-to-one with the file's player token). The piece id is the *passage*,
  `<piece>_<N>bars_<segment>` (e.g. `Beethoven_WoO80_var27_8bars_15`): every player of the same passage
  shares it, which is the grouping of the published "piece split". `extra["composition"]`
  (`Beethoven_WoO80`, `Schubert_D960`) and `extra["movement"]` (`Beethoven_WoO80_var27`,
  `Schubert_D960_mv2`) allow stricter splits (the 8- and 16-bar segments of one movement overlap);
  `extra["work"]` is the unit of the composition split: `Schubert_D960_mv2`, `Schubert_D960_mv3` and
  `Beethoven_WoO80` (its variations together).
  Segments without ratings get `labels=None`.
- **library**: every audio file (`constants.AUDIO_EXTENSIONS`) under the prefix, with an optional
  sidecar score of the same stem in the same folder (MusicXML preferred: `.musicxml`, `.mxl`, then
  `.mid`, `.midi`). Recording id = path relative to the prefix without extension; piece id = stem;
  performer `unknown`; no labels.

Bad input (missing table columns, unreadable JSON, labels for unknown recordings, duplicate ids, a
path that does not exist) raises `CorpusError` with a one-line message naming the input. A MAESTRO entry
whose file name is absolute, a URI or has a `..` segment is refused on its own: its recording keeps no URI and
`extra["error"]` names the table line and the file, which preprocessing turns into that recording's error row
(nothing outside the corpus root is read).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import re
from typing import Any, Iterable

from model.schema import PERCEPIANO19
from pipelines import constants as C
from pipelines.io import storage
from pipelines.io.labels_table import LabelsTableError, read_labels_table

MAESTRO_CSV = "maestro-v3.0.0.csv"
MAESTRO_JSON = "maestro-v3.0.0.json"
MAESTRO_REQUIRED = ("canonical_composer", "canonical_title", "split", "year", "midi_filename",
                    "audio_filename", "duration")
LABELS_CSV = "labels.csv"
PERCEPIANO_LABELS = "labels_mean.json"
PERCEPIANO_PERFORMANCES = "performances"
LAYOUTS = ("auto", "maestro", "percepiano", "library")
UNKNOWN_PERFORMER = "unknown"
# sidecar score extensions, in order of preference (MusicXML carries bars and voices)
SIDECAR_SCORE_EXTENSIONS = (".musicxml", ".mxl", ".mid", ".midi")
# `<piece>_<N>bars_<player>_<segment>`, e.g. Schubert_D960_mv2_8bars_10_04
logger = logging.getLogger(__name__)
_PERCEPIANO_NAME = re.compile(r"^(?P<piece>.+)_(?P<bars>\d+)bars_(?P<player>[^_]+)_(?P<segment>[^_]+)$")


class CorpusError(ValueError):
    """A corpus could not be read; the message names the input and the cause in one line."""


@dataclasses.dataclass
class Recording:
    """One recording of a corpus and everything known about it (URIs are local paths or s3://)."""
    recording_id: str
    audio_uri: str | None             # None: render from midi_uri on demand (PercePiano)
    midi_uri: str | None              # performance MIDI, if any
    score_uri: str | None             # score MIDI or MusicXML, if any
    piece_id: str
    performer_id: str
    labels: dict[str, float] | None   # dimension -> 0..100, None if unlabeled
    duration_s: float | None = None
    split: str | None = None          # split given by the corpus (MAESTRO's), if any
    extra: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recording":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# --- shared helpers --------------------------------------------------------------------------

def _check_exists(uri: str, what: str) -> None:
    try:
        found = storage.exists(uri)
    except storage.StorageError as exc:
        raise CorpusError(f"{uri}: cannot read {what}: {exc}") from None
    if not found:
        raise CorpusError(f"{uri}: {what} does not exist")


def _read_text(uri: str, what: str) -> str:
    try:
        return storage.read_text(uri, max_bytes=storage.MAX_SMALL_FILE_BYTES)
    except (storage.StorageError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{uri}: cannot read {what}: {exc}") from None


def _list(uri: str, suffixes: tuple[str, ...] | None, what: str, recursive: bool = True) -> list[storage.FileEntry]:
    try:
        return storage.list_files(uri, suffixes=suffixes, recursive=recursive, with_hash=False)
    except (storage.StorageError, FileNotFoundError) as exc:
        raise CorpusError(f"{uri}: cannot list {what}: {exc}") from None


def _stem(name: str) -> str:
    base = storage.basename(name)
    return base.rsplit(".", 1)[0] if "." in base else base


def _relative(uri: str, root: str) -> str:
    """Path of `uri` below `root` ('/'-separated), for both local paths and s3:// URIs."""
    if not storage.is_s3(root):
        root = storage.resolve(root)[1]
    root = root.rstrip("/") + "/"
    if not uri.startswith(root):
        raise CorpusError(f"{uri}: not below the corpus root {root}")
    return uri[len(root):]


def slugify(text: str) -> str:
    """Lower-case ASCII slug: 'Frédéric Chopin' -> 'frederic-chopin'."""
    import unicodedata
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-") or "untitled"


def check_unique_ids(recordings: Iterable[Recording], source: str) -> None:
    seen: set[str] = set()
    for rec in recordings:
        if rec.recording_id in seen:
            raise CorpusError(f"{source}: duplicate recording id {rec.recording_id!r}")
        seen.add(rec.recording_id)


def _read_csv(uri: str, required: tuple[str, ...], what: str) -> list[dict[str, str]]:
    text = _read_text(uri, what)
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    missing = [c for c in required if c not in columns]
    if missing:
        raise CorpusError(f"{uri}: {what} lacks column(s) {', '.join(missing)}")
    try:
        return list(reader)
    except csv.Error as exc:
        raise CorpusError(f"{uri}: malformed CSV: {exc}") from None


def _attach_labels(recordings: list[Recording], labels: dict[str, dict[str, float] | None],
                   source: str) -> None:
    by_id = {r.recording_id: r for r in recordings}
    unknown = [rid for rid in labels if rid not in by_id]
    if unknown:
        raise CorpusError(f"{source}: labels for {len(unknown)} unknown recording id(s), e.g. {unknown[0]!r}")
    for rid, values in labels.items():
        by_id[rid].labels = values


# --- MAESTRO ---------------------------------------------------------------------------------

def find_maestro_table(root: str) -> str | None:
    """The MAESTRO table under a corpus root (canonical name first), or None."""
    for name in (MAESTRO_CSV, MAESTRO_JSON):
        if storage.exists(storage.join(root, name)):
            return storage.join(root, name)
    if storage.is_s3(root) or storage.is_dir(root):
        # local listings hash every file they return: list only the top level there
        entries = _list(root, (".csv", ".json"), "corpus", recursive=storage.is_s3(root))
        top = [e.uri for e in entries
               if "/" not in _relative(e.uri, root) and storage.basename(e.uri).lower().startswith("maestro")]
        csvs = [u for u in top if u.lower().endswith(".csv")]
        return (csvs or top or [None])[0]
    return None


def _maestro_rows(table_uri: str) -> list[dict[str, str]]:
    if table_uri.lower().endswith(".csv"):
        return _read_csv(table_uri, MAESTRO_REQUIRED, "MAESTRO table")
    try:
        data = json.loads(_read_text(table_uri, "MAESTRO table"))
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{table_uri}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CorpusError(f"{table_uri}: expected a column-oriented JSON object")
    missing = [c for c in MAESTRO_REQUIRED if c not in data]
    if missing:
        raise CorpusError(f"{table_uri}: MAESTRO table lacks column(s) {', '.join(missing)}")
    keys = list(data["midi_filename"].keys())
    return [{col: "" if values.get(k) is None else str(values.get(k)) for col, values in data.items()}
            for k in keys]


def leaves_root(name: str) -> bool:
    """True for a file name from a corpus table that is not a plain path below the corpus root: absolute
    (`/x`, `C:\\x`), a URI (`s3://`, `file://`), or with a `..` segment (either slash)."""
    parts = name.replace("\\", "/").split("/")
    return (name.startswith(("/", "\\")) or "://" in name or re.match(r"^[A-Za-z]:", name) is not None
            or ".." in parts or "\x00" in name)


def _maestro_recording(row: dict[str, str], root: str, where: str) -> Recording:
    midi = (row.get("midi_filename") or "").strip()
    audio = (row.get("audio_filename") or "").strip()
    if not midi and not audio:
        raise CorpusError(f"{where}: neither midi_filename nor audio_filename is given")
    score = (row.get("score_filename") or "").strip()
    outside = [f"{field} {value!r}" for field, value in
               (("audio_filename", audio), ("midi_filename", midi), ("score_filename", score))
               if value and leaves_root(value)]
    refused = f"{where}: entry refused, {'; '.join(outside)} outside the corpus root {root}" if outside else ""
    year = (row.get("year") or "").strip()
    stem = _stem(audio or midi)
    default_id = f"{year}/{stem}" if year else stem
    rec_id = (row.get("recording_id") or "").strip() or default_id
    composer, title = (row.get("canonical_composer") or "").strip(), (row.get("canonical_title") or "").strip()
    duration_text = (row.get("duration") or "").strip()
    try:
        duration = float(duration_text) if duration_text else None
    except ValueError:
        raise CorpusError(f"{where}: duration {duration_text!r} is not a number") from None
    extra = {"composer": composer, "title": title, "year": year}
    if refused:      # no URI at all: nothing of this entry is read; preprocessing records it as an error row
        logger.warning("%s", refused)
        extra["error"] = refused
        audio = midi = score = ""
    return Recording(
        recording_id=rec_id,
        audio_uri=storage.join(root, audio) if audio else None,
        midi_uri=storage.join(root, midi) if midi else None,
        score_uri=storage.join(root, score) if score else None,
        piece_id=(row.get("piece_id") or "").strip() or slugify(f"{composer} {title}"),
        performer_id=(row.get("performer_id") or "").strip() or default_id,
        labels=None,
        duration_s=duration,
        split=(row.get("split") or "").strip() or None,
        extra=extra,
    )


def read_maestro(uri: str) -> list[Recording]:
    """Recordings of a MAESTRO-layout corpus; `uri` is its root folder or the table (CSV/JSON) itself."""
    _check_exists(uri, "MAESTRO corpus")
    lower = uri.lower()
    if lower.endswith((".csv", ".json")) and not storage.is_dir(uri):
        table, root = uri, storage.parent(uri)
    else:
        table, root = find_maestro_table(uri), uri.rstrip("/")
        if table is None:
            raise CorpusError(f"{uri}: no MAESTRO table ({MAESTRO_CSV} or maestro*.csv/json) found")
    rows = _maestro_rows(table)
    if not rows:
        raise CorpusError(f"{table}: MAESTRO table has no rows")
    recordings = [_maestro_recording(row, root, f"{table} line {i}") for i, row in enumerate(rows, start=2)]
    check_unique_ids(recordings, table)
    labels_uri = storage.join(root, LABELS_CSV)
    if storage.exists(labels_uri):
        try:
            labels = read_labels_table(labels_uri)
        except LabelsTableError as exc:
            raise CorpusError(str(exc)) from None
        _attach_labels(recordings, labels, labels_uri)
    return recordings


# --- PercePiano ------------------------------------------------------------------------------

def parse_percepiano_name(name: str) -> dict[str, str]:
    """Split a PercePiano segment name into piece, bars, player, segment and the derived groupings."""
    match = _PERCEPIANO_NAME.match(name)
    if match is None:
        raise CorpusError(f"{name}: not a PercePiano segment name (<piece>_<N>bars_<player>_<segment>)")
    parts = match.groupdict()
    piece = parts["piece"]
    return {
        **parts,
        "passage": f"{piece}_{parts['bars']}bars_{parts['segment']}",
        "composition": "_".join(piece.split("_")[:2]),
        "movement": piece,
        # the unit of the strict composition split: a Schubert movement, or all of Beethoven's variations
        "work": piece if re.search(r"_mv\d+$", piece) else "_".join(piece.split("_")[:2]),
        "score_stem": f"{piece}_{parts['bars']}bars_Score_{parts['segment']}",
    }


def _percepiano_labels(uri: str) -> dict[str, tuple[dict[str, float], int]]:
    try:
        data = json.loads(_read_text(uri, "PercePiano labels"))
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{uri}: not valid JSON: {exc}") from None
    names = PERCEPIANO19.names
    out = {}
    for segment, values in data.items():
        if not isinstance(values, list) or len(values) != len(names) + 1:
            raise CorpusError(f"{uri}: entry {segment!r} should hold {len(names)} ratings and a player index")
        ratings = [float(v) for v in values[:-1]]
        if not all(0.0 <= r <= 1.0 for r in ratings):
            raise CorpusError(f"{uri}: entry {segment!r} has a rating outside 0..1")
        out[segment] = ({n: 100.0 * r for n, r in zip(names, ratings)}, int(values[-1]))
    return out


def _player_indices(labels: dict[str, tuple[dict[str, float], int]], source: str) -> dict[str, int]:
    """Player token in the file name -> player index in the labels (checked one-to-one)."""
    mapping: dict[str, int] = {}
    for segment, (_, index) in labels.items():
        token = parse_percepiano_name(segment)["player"]
        if mapping.setdefault(token, index) != index:
            raise CorpusError(f"{source}: player {token!r} has two indices ({mapping[token]} and {index})")
    return mapping


def read_percepiano(uri: str, use_xml_scores: bool = False) -> list[Recording]:
    """Recordings of the PercePiano layout (performance MIDI + score + expert ratings), see module doc."""
    root = uri.rstrip("/")
    _check_exists(root, "PercePiano corpus")
    labels_uri = storage.join(root, PERCEPIANO_LABELS)
    _check_exists(labels_uri, "PercePiano labels file")
    labels = _percepiano_labels(labels_uri)
    players = _player_indices(labels, labels_uri)
    perf_dir = storage.join(root, PERCEPIANO_PERFORMANCES)
    performances = _list(perf_dir, C.MIDI_EXTENSIONS, "PercePiano performances")
    if not performances:
        raise CorpusError(f"{perf_dir}: no performance MIDI files")
    score_dir = storage.join(root, "scores_xml" if use_xml_scores else "scores_midi")
    score_exts = (".musicxml", ".mxl", ".xml") if use_xml_scores else C.MIDI_EXTENSIONS
    scores = {_stem(e.uri): e.uri for e in _list(score_dir, score_exts, "PercePiano scores")} \
        if storage.exists(score_dir) else {}
    recordings = [_percepiano_recording(e.uri, labels, players, scores) for e in performances]
    check_unique_ids(recordings, perf_dir)
    known = {r.recording_id for r in recordings}
    orphans = [s for s in labels if s not in known]
    if orphans:
        raise CorpusError(f"{labels_uri}: ratings for {len(orphans)} segment(s) without a performance, "
                          f"e.g. {orphans[0]!r}")
    return recordings


def _percepiano_recording(midi_uri: str, labels: dict, players: dict[str, int],
                          scores: dict[str, str]) -> Recording:
    name = _stem(midi_uri)
    parts = parse_percepiano_name(name)
    rated = labels.get(name)
    index = rated[1] if rated else players.get(parts["player"])
    performer = f"percepiano-p{index}" if index is not None else f"percepiano-{parts['player']}"
    return Recording(
        recording_id=name,
        audio_uri=None,
        midi_uri=midi_uri,
        score_uri=scores.get(parts["score_stem"]),
        piece_id=parts["passage"],
        performer_id=performer,
        labels=dict(rated[0]) if rated else None,
        extra={"composition": parts["composition"], "movement": parts["movement"], "work": parts["work"],
               "segment_bars": int(parts["bars"]), "segment": parts["segment"], "player": parts["player"],
               "label_schema": PERCEPIANO19.name},
    )


# --- library ---------------------------------------------------------------------------------

def read_library(uri: str) -> list[Recording]:
    """Every audio file under a prefix, with an optional same-stem sidecar score (see module doc)."""
    root = uri.rstrip("/")
    _check_exists(root, "audio library")
    entries = _list(root, C.AUDIO_EXTENSIONS + SIDECAR_SCORE_EXTENSIONS, "audio library")
    audio = [e.uri for e in entries if e.uri.lower().endswith(C.AUDIO_EXTENSIONS)]
    if not audio:
        raise CorpusError(f"{uri}: no audio files ({', '.join(C.AUDIO_EXTENSIONS)}) found")
    sidecars = _sidecar_scores([e.uri for e in entries], root)
    recordings = []
    for audio_uri in audio:
        rel = _relative(audio_uri, root)
        rec_id = rel.rsplit(".", 1)[0]
        recordings.append(Recording(
            recording_id=rec_id, audio_uri=audio_uri, midi_uri=None, score_uri=sidecars.get(rec_id),
            piece_id=_stem(audio_uri), performer_id=UNKNOWN_PERFORMER, labels=None,
        ))
    check_unique_ids(recordings, uri)
    return recordings


def _sidecar_scores(uris: list[str], root: str) -> dict[str, str]:
    """Relative path without extension -> the preferred score file of that stem."""
    best: dict[str, tuple[int, str]] = {}
    for uri in uris:
        lower = uri.lower()
        for rank, ext in enumerate(SIDECAR_SCORE_EXTENSIONS):
            if lower.endswith(ext):
                key = _relative(uri, root)[: -len(ext)]
                if key not in best or rank < best[key][0]:
                    best[key] = (rank, uri)
    return {key: uri for key, (_, uri) in best.items()}


# --- dispatch --------------------------------------------------------------------------------

def detect_layout(uri: str) -> str:
    """'maestro' if a MAESTRO table is present, 'percepiano' for labels_mean.json + performances/,
    else 'library'."""
    root = uri.rstrip("/")
    if root.lower().endswith((".csv", ".json")) and not storage.is_dir(root):
        return "maestro"
    if find_maestro_table(root) is not None:
        return "maestro"
    if storage.exists(storage.join(root, PERCEPIANO_LABELS)) and \
            storage.exists(storage.join(root, PERCEPIANO_PERFORMANCES)):
        return "percepiano"
    return "library"


def read_corpus(uri: str, layout: str = "auto") -> list[Recording]:
    """Read a corpus of any known layout (`auto` detects it, see `detect_layout`)."""
    if layout not in LAYOUTS:
        raise CorpusError(f"{uri}: unknown corpus layout {layout!r} (use one of {', '.join(LAYOUTS)})")
    _check_exists(uri, "corpus")
    if layout == "auto":
        layout = detect_layout(uri)
    readers = {"maestro": read_maestro, "percepiano": read_percepiano, "library": read_library}
    return readers[layout](uri)
