"""A self-contained HTML report of one scoring run: an index page and one page per recording.

    <out>/runs/<run_id>/report/index.html          run summary, sortable table of recordings, error list
    <out>/runs/<run_id>/report/<safe-name>.html    one recording: scores with sigma, the curve over time,
                                                   CQT with the attention drawn over it, bar map and flags

Pages open offline (file://): no network, fonts, external CSS or JS. Charts are inline SVG written here,
the CQT thumbnail an inline PNG (`encode_png`), and a few lines of inline JS sort the index table. A
Content-Security-Policy in every page forbids loading anything from elsewhere. Every string that comes
from file names, metadata or messages goes through `html.escape`; page file names come from
`page_name` (ASCII, no '/', plus a hash of the recording id, so distinct ids never share a page).

Rows of older runs lack the per-bar columns (`bars`, `bar_flags`, `time_flags`, `observation`,
`cqt_thumb`): their sections are left out.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import json
import math
import re
import struct
import unicodedata
import zlib
from typing import Any, Callable, Sequence

import numpy as np

from pipelines.io import storage
from pipelines.scoring import publish as P

REPORT_DIR = "report"
INDEX = "index.html"
CQT_PITCHES = 88                  # cqt_thumb columns: MIDI 21 (A0) .. 108 (C8)
CQT_LOWEST_MIDI = 21
CQT_MAX_COLUMNS = 1600            # wider thumbnails are max-pooled in time to this many frames
PAGE_NAME_CHARS = 60              # readable part of a page file name, before its hash
TIMELINE_DIMS = 3                 # dimensions drawn as lines on the curve over time (besides the aggregate)
LINE_COLOURS = ("#1f5f99", "#d9822b", "#3a9a5b", "#8e4fb5", "#c23b3b")
CHART_W = 880                     # px, the time charts' width
MIN_SHADE = 0.25                  # the mildest flag's colour, 0 (yellow) .. 1 (red, the recording's worst)


# --- reading a run -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    """A scoring run as the report needs it: its id, where it lives, its manifest and its rows."""
    run_id: str
    uri: str                       # <out>/runs/<run_id>
    manifest: dict[str, Any]
    rows: list[dict[str, Any]]


def load_run(out_uri: str, run_id: str | None = None) -> Run:
    """The run `run_id` under an output prefix, or the published latest run when None."""
    if run_id is None:
        found = P.latest_run(out_uri)
        if found is None:
            raise FileNotFoundError(f"{out_uri}: no published scoring run ({P.LATEST} not found)")
        run_id, manifest = found
    else:
        manifest_uri = storage.join(P.run_uri(out_uri, run_id), P.MANIFEST)
        if not storage.exists(manifest_uri):
            raise FileNotFoundError(f"{manifest_uri}: no such run manifest (not a complete scoring run)")
        manifest = json.loads(storage.read_text(manifest_uri))
    run = P.run_uri(out_uri, run_id)
    rows: list[dict[str, Any]] = []
    for name in manifest.get("result_files", []):
        rows += P.read_table(storage.join(run, name)).to_pylist()
    rows.sort(key=lambda r: str(r.get("recording_id", "")))
    return Run(run_id=run_id, uri=run, manifest=manifest, rows=rows)


def locate_run(uri: str) -> tuple[str, str | None]:
    """(output prefix, run id or None for latest) for either an output prefix or a run directory
    `<out>/runs/<run_id>`."""
    uri = str(uri).rstrip("/")
    if storage.exists(storage.join(uri, P.LATEST)):
        return uri, None
    if storage.exists(storage.join(uri, P.MANIFEST)) and storage.basename(storage.parent(uri)) == P.RUNS_DIR:
        return storage.parent(storage.parent(uri)), storage.basename(uri)
    raise FileNotFoundError(f"{uri}: neither a scoring output prefix (no {P.LATEST}) "
                            f"nor a run directory {P.RUNS_DIR}/<run_id> (no {P.MANIFEST})")


def write_run_report(out_uri: str, run_id: str | None = None, report_uri: str | None = None) -> str:
    """Write the HTML report of a scoring run and return the index page's URI.

    run_id None reports the published latest run. Pages go under `report_uri`, by default
    `<out>/runs/<run_id>/report/`; local paths and s3:// both work."""
    run = load_run(out_uri, run_id)
    target = report_uri or storage.join(run.uri, REPORT_DIR)
    window_aggregate = _window_aggregate_fn(run.manifest)
    recordings = [Recording.from_row(row) for row in run.rows]
    for rec in recordings:
        storage.write_text(storage.join(target, rec.page), render_recording(rec, run.run_id, window_aggregate))
    index = storage.join(target, INDEX)
    storage.write_text(index, render_index(run, recordings))
    return index


def page_name(recording_id: str) -> str:
    """A safe, unique file name for a recording's page: ASCII letters, digits, '-', '_' and '.', then
    8 hex digits of the id's sha1 (so 'a/b' and 'a_b' differ), then '.html'."""
    ascii_text = unicodedata.normalize("NFKD", recording_id).encode("ascii", "ignore").decode()
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_text).strip("._-")[:PAGE_NAME_CHARS] or "recording"
    digest = hashlib.sha1(recording_id.encode("utf-8")).hexdigest()[:8]
    return f"{readable}-{digest}.html"


# --- one recording, tidied -----------------------------------------------------------------------------

def _num(value: Any) -> float | None:
    """A finite float, or None for missing / NaN / infinite values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _list(value: Any) -> list:
    return list(value) if value is not None else []


@dataclasses.dataclass
class Recording:
    """One result row with defaults for missing columns (old runs) and NaN turned into None."""
    recording_id: str
    page: str
    status: str
    error_kind: str
    message: str
    mode: str
    source_uri: str
    score_uri: str
    scored_in_run: str
    duration_s: float | None
    has_score: bool
    match_rate: float | None
    score_mismatch: bool
    dimensions: list[str]
    scores: list[float | None]
    sigma: list[float | None]
    low_confidence: list[bool]
    aggregate: float | None
    aggregate_sigma: float | None
    window_start_s: list[float]
    window_end_s: list[float]
    window_scores: list[list[float | None]]       # [windows][dimensions]
    curve_hop_s: float | None
    attention_curve: list[float]
    bars: list[dict[str, Any]]
    bar_flags: list[dict[str, Any]]
    time_flags: list[dict[str, Any]]
    observation: str
    cqt: np.ndarray | None                        # uint8 [frames, 88]
    cqt_fps: float | None
    novelty: float | None = None                  # 1 = as familiar as the training music (results.py)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Recording":
        rid = str(row.get("recording_id") or "")
        dims = [str(d) for d in _list(row.get("dimensions"))]
        return cls(
            recording_id=rid, page=page_name(rid), status=str(row.get("status") or ""),
            error_kind=str(row.get("error_kind") or ""), message=str(row.get("message") or ""),
            mode=str(row.get("mode") or ""), source_uri=str(row.get("source_uri") or ""),
            score_uri=str(row.get("score_uri") or ""), scored_in_run=str(row.get("scored_in_run") or ""),
            duration_s=_num(row.get("duration_s")), has_score=bool(row.get("has_score")),
            match_rate=_num(row.get("match_rate")), score_mismatch=bool(row.get("score_mismatch")),
            dimensions=dims, scores=[_num(v) for v in _list(row.get("scores"))],
            sigma=[_num(v) for v in _list(row.get("sigma"))],
            low_confidence=[bool(v) for v in _list(row.get("low_confidence"))],
            aggregate=_num(row.get("aggregate")), aggregate_sigma=_num(row.get("aggregate_sigma")),
            window_start_s=[_num(v) or 0.0 for v in _list(row.get("window_start_s"))],
            window_end_s=[_num(v) or 0.0 for v in _list(row.get("window_end_s"))],
            window_scores=[[_num(v) for v in _list(w)] for w in _list(row.get("window_scores"))],
            curve_hop_s=_num(row.get("curve_hop_s")),
            attention_curve=[_num(v) or 0.0 for v in _list(row.get("attention_curve"))],
            bars=[b for b in _list(row.get("bars")) if b], bar_flags=[f for f in _list(row.get("bar_flags")) if f],
            time_flags=[f for f in _list(row.get("time_flags")) if f],
            observation=str(row.get("observation") or ""),
            cqt=_cqt_array(row.get("cqt_thumb")), cqt_fps=_num(row.get("cqt_thumb_fps")),
            novelty=_num(row.get("novelty")),
        )

    def is_uncertain(self, i: int) -> bool:
        return i < len(self.low_confidence) and self.low_confidence[i]

    def score(self, i: int) -> float | None:
        return self.scores[i] if i < len(self.scores) else None

    def sigma_of(self, i: int) -> float | None:
        return self.sigma[i] if i < len(self.sigma) else None

    @property
    def n_flags(self) -> int:
        return len(self.bar_flags) + len(self.time_flags)

    @property
    def span_s(self) -> float:
        """The time axis of the charts: the longest of duration, windows, attention curve and CQT."""
        ends = [self.duration_s or 0.0, max(self.window_end_s, default=0.0)]
        if self.curve_hop_s:
            ends.append(len(self.attention_curve) * self.curve_hop_s)
        if self.cqt is not None and self.cqt_fps:
            ends.append(self.cqt.shape[0] / self.cqt_fps)
        return max(ends) or 1.0


def _cqt_array(value: Any) -> np.ndarray | None:
    """cqt_thumb bytes as uint8 [frames, 88], or None when empty or malformed."""
    if not value:
        return None
    data = np.frombuffer(bytes(value), dtype=np.uint8)
    if data.size % CQT_PITCHES:
        return None
    return data.reshape(-1, CQT_PITCHES)


def _window_aggregate_fn(manifest: dict[str, Any]) -> Callable[[dict[str, float]], float | None] | None:
    """The schema's aggregate over per-dimension scores, rebuilt from the run's config; None when the
    config does not name a schema this code knows."""
    from model.schema import load_schema

    config = manifest.get("config") or {}
    try:
        schema = load_schema(config.get("dimensions", "seed10"))
        if config.get("aggregate_weights") is not None:
            schema = schema.with_aggregate_weights(list(config["aggregate_weights"]))
    except Exception:  # an unknown or malformed schema: draw the dimensions only
        return None
    if not schema.aggregate:
        return None

    def aggregate(scores: dict[str, float]) -> float | None:
        return schema.aggregate_score(scores) if all(n in scores for n in schema.names) else None
    return aggregate


# --- formatting ------------------------------------------------------------------------------------------

esc = html.escape


def fmt(value: float | None, digits: int = 0, unit: str = "") -> str:
    """A number for people ('–' when unknown)."""
    return "–" if value is None else f"{value:.{digits}f}{unit}"


def fmt_time(seconds: float | None) -> str:
    """m:ss (h:mm:ss from an hour on)."""
    if seconds is None:
        return "–"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def fmt_range(start: float | None, end: float | None) -> str:
    return f"{fmt_time(start)}–{fmt_time(end)}"


def bar_label(flag: dict[str, Any]) -> str:
    first, last = flag.get("bar"), flag.get("last_bar")
    return f"bars {first}–{last}" if last is not None and last != first else f"bar {first}"


def pretty_dim(name: str) -> str:
    return name.replace("_", " ")


# --- PNG -------------------------------------------------------------------------------------------------

def _palette() -> np.ndarray:
    """256 colours from near-black through purple and orange to pale yellow, uint8 [256, 3]."""
    stops = np.array([0.0, 0.3, 0.6, 0.82, 1.0])
    colours = np.array([[10, 8, 30], [80, 25, 110], [200, 60, 70], [245, 150, 45], [252, 245, 175]], float)
    x = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(x, stops, colours[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


PALETTE = _palette()


def encode_png(pixels: np.ndarray, palette: np.ndarray = PALETTE) -> bytes:
    """An 8-bit indexed-colour PNG. pixels: uint8 [height, width] palette indices; palette: uint8 [n, 3]."""
    height, width = pixels.shape
    scanlines = np.hstack([np.zeros((height, 1), np.uint8), pixels.astype(np.uint8)])   # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)   # 8 bits, palette, deflate, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"PLTE", palette.astype(np.uint8).tobytes())
            + chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 9)) + chunk(b"IEND", b""))


def cqt_image(cqt: np.ndarray) -> np.ndarray:
    """uint8 [88, columns]: high pitches at the top, time max-pooled to at most CQT_MAX_COLUMNS columns."""
    frames = cqt.shape[0]
    step = max(1, math.ceil(frames / CQT_MAX_COLUMNS))
    if step > 1:
        padded = np.zeros((math.ceil(frames / step) * step, CQT_PITCHES), np.uint8)
        padded[:frames] = cqt
        cqt = padded.reshape(-1, step, CQT_PITCHES).max(axis=1)
    return np.ascontiguousarray(cqt.T[::-1])


# --- SVG charts ------------------------------------------------------------------------------------------

def _svg(width: float, height: float, body: list[str], label: str) -> str:
    return (f'<svg class="chart" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}" '
            f'role="img" aria-label="{esc(label)}" xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>")


def _text(x: float, y: float, text: str, cls: str = "", anchor: str = "start") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" class="{cls}" text-anchor="{anchor}">{esc(text)}</text>'


def scores_svg(rec: Recording) -> str:
    """Horizontal bars 0..100 per dimension with ±sigma whiskers; uncertain dimensions as a grey band
    over score ± sigma with no number; the aggregate last."""
    label_w, plot_w, value_w, row_h, top = 170, 380, 150, 24, 22
    entries = [(pretty_dim(d), rec.score(i), rec.sigma_of(i), rec.is_uncertain(i), False)
               for i, d in enumerate(rec.dimensions)]
    if rec.aggregate is not None:
        entries.append(("aggregate", rec.aggregate, rec.aggregate_sigma, False, True))
    height = top + row_h * len(entries) + 8
    x0 = label_w

    def x(value: float) -> float:
        return x0 + plot_w * min(max(value, 0.0), 100.0) / 100.0
    body = []
    for tick in range(0, 101, 25):
        body.append(f'<line x1="{x(tick):.1f}" y1="{top - 4}" x2="{x(tick):.1f}" y2="{height - 6}" class="grid"/>')
        body.append(_text(x(tick), top - 8, str(tick), "axis", "middle"))
    for row, (name, score, sigma, uncertain, is_aggregate) in enumerate(entries):
        y = top + row * row_h
        mid = y + row_h / 2
        cls = "agg" if is_aggregate else ("uncertain" if uncertain else "")
        body.append(_text(label_w - 8, mid + 4, name, f"label {cls}", "end"))
        if score is None:
            body.append(_text(x0 + plot_w + 10, mid + 4, "no score", "value muted"))
            continue
        lo, hi = (x(score - sigma), x(score + sigma)) if sigma is not None else (x(score), x(score))
        if uncertain:
            body.append(f'<rect x="{lo:.1f}" y="{y + 5}" width="{max(hi - lo, 1):.1f}" height="{row_h - 10}" '
                        f'class="band"/>')
            text = "uncertain" + (f" (σ {sigma:.0f})" if sigma is not None else "")
            body.append(_text(x0 + plot_w + 10, mid + 4, text, "value uncertain"))
            continue
        body.append(f'<rect x="{x0}" y="{y + 5}" width="{x(score) - x0:.1f}" height="{row_h - 10}" '
                    f'class="{"bar-agg" if is_aggregate else "bar"}"/>')
        if sigma is not None:
            body.append(f'<path d="M{lo:.1f},{mid:.1f}H{hi:.1f}M{lo:.1f},{mid - 5:.1f}V{mid + 5:.1f}'
                        f'M{hi:.1f},{mid - 5:.1f}V{mid + 5:.1f}" class="whisker"/>')
        text = f"{score:.0f}" + (f" ± {sigma:.0f}" if sigma is not None else "")
        body.append(_text(x0 + plot_w + 10, mid + 4, text, f"value {cls}"))
    return _svg(label_w + plot_w + value_w, height, body, "scores per dimension, 0 to 100, with sigma")


class TimeAxis:
    """Maps seconds to x pixels across a chart of CHART_W px with a left margin."""

    def __init__(self, span_s: float, left: float = 44.0, right: float = 12.0) -> None:
        self.span_s, self.left, self.width = span_s, left, CHART_W - left - right

    def x(self, seconds: float) -> float:
        return self.left + self.width * min(max(seconds, 0.0), self.span_s) / self.span_s

    def ticks(self, y: float, height: float) -> list[str]:
        """Vertical grid lines and m:ss labels below them, about every 100 px."""
        raw = self.span_s / max(1, self.width // 100)
        step = next((s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600) if s >= raw), 3600)
        out = []
        t = 0.0
        while t <= self.span_s + 1e-9:
            x = self.x(t)
            out.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x:.1f}" y2="{y + height:.1f}" class="grid"/>')
            out.append(_text(x, y + height + 14, fmt_time(t), "axis", "middle"))
            t += step
        return out


def _flag_ranges(rec: Recording) -> list[tuple[float, float]]:
    """Time ranges of the recording's flags, seconds."""
    out = []
    for flag in rec.bar_flags + rec.time_flags:
        start, end = _num(flag.get("start_s")), _num(flag.get("end_s"))
        if start is not None and end is not None:
            out.append((start, end))
    return out


def _attention_points(rec: Recording, axis: TimeAxis, y_bottom: float, height: float) -> str:
    """Polyline points of the attention curve (scaled to its maximum) at bin centres."""
    peak = max(rec.attention_curve, default=0.0)
    if not rec.curve_hop_s or peak <= 0:
        return ""
    return " ".join(f"{axis.x((i + 0.5) * rec.curve_hop_s):.1f},{y_bottom - height * v / peak:.1f}"
                    for i, v in enumerate(rec.attention_curve))


def timeline_svg(rec: Recording, window_aggregate: Callable | None) -> str:
    """Per-window scores (the aggregate and the first dimensions) as lines at window centres over a
    0..100 scale, flagged time ranges shaded, the attention curve as a filled strip below."""
    axis = TimeAxis(rec.span_s)
    top, plot_h, strip_h = 10, 160, 40
    strip_top = top + plot_h + 10
    height = strip_top + strip_h + 24

    def y(score: float) -> float:
        return top + plot_h * (1 - min(max(score, 0.0), 100.0) / 100.0)
    body = [f'<rect x="{axis.x(s):.1f}" y="{top}" width="{max(axis.x(e) - axis.x(s), 2):.1f}" '
            f'height="{strip_top + strip_h - top}" class="flagged-range"/>' for s, e in _flag_ranges(rec)]
    body += axis.ticks(top, strip_top + strip_h - top)
    for tick in (0, 50, 100):
        body.append(f'<line x1="{axis.left}" y1="{y(tick):.1f}" x2="{axis.left + axis.width}" y2="{y(tick):.1f}" '
                    f'class="grid"/>')
        body.append(_text(axis.left - 6, y(tick) + 4, str(tick), "axis", "end"))
    centres = [(s + e) / 2 for s, e in zip(rec.window_start_s, rec.window_end_s)]
    legend = []
    for name, values, colour, width in _timeline_series(rec, window_aggregate):
        points = [(axis.x(t), y(v)) for t, v in zip(centres, values) if v is not None]
        if not points:
            continue
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            body.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="{width}"/>')
        body += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"/>' for px, py in points]
        legend.append(f'<span><i style="background:{colour}"></i>{esc(pretty_dim(name))}</span>')
    strip = _attention_points(rec, axis, strip_top + strip_h, strip_h)
    if strip:
        base = strip_top + strip_h
        body.append(f'<polygon points="{axis.x(0):.1f},{base} {strip} {axis.x(rec.span_s):.1f},{base}" '
                    f'class="attention-area"/>')
        body.append(_text(axis.left - 6, strip_top + strip_h / 2 + 4, "attn", "axis", "end"))
    if rec.time_flags or rec.bar_flags:
        legend.append('<span><i class="flag-swatch"></i>flagged</span>')
    legend.append('<span><i class="attn-swatch"></i>model attention</span>')
    chart = _svg(CHART_W, height, body, "scores per window over time and model attention")
    return chart + f'<div class="legend">{"".join(legend)}</div>'


def _timeline_series(rec: Recording, window_aggregate: Callable | None) -> list[tuple[str, list, str, float]]:
    """(name, per-window values, colour, line width) of the lines on the curve over time."""
    series = []
    if window_aggregate is not None:
        values = []
        for window in rec.window_scores:
            named = {d: v for d, v in zip(rec.dimensions, window) if v is not None}
            values.append(window_aggregate(named))
        series.append(("aggregate", values, "#222", 2.5))
    for i, name in enumerate(rec.dimensions[:TIMELINE_DIMS]):
        values = [w[i] if i < len(w) else None for w in rec.window_scores]
        series.append((name, values, LINE_COLOURS[i % len(LINE_COLOURS)], 1.5))
    return series


def cqt_svg(rec: Recording) -> str:
    """The CQT thumbnail (inline PNG) on the recording's time axis, octave labels on the left, the
    attention curve drawn over it; flagged bars marked along the top."""
    if rec.cqt is None or not rec.cqt_fps:
        return ""
    axis = TimeAxis(rec.span_s)
    top, plot_h = 8, 176
    height = top + plot_h + 24
    png = base64.b64encode(encode_png(cqt_image(rec.cqt))).decode("ascii")
    image_end = axis.x(rec.cqt.shape[0] / rec.cqt_fps)
    body = [f'<image x="{axis.left}" y="{top}" width="{image_end - axis.left:.1f}" height="{plot_h}" '
            f'preserveAspectRatio="none" class="cqt" href="data:image/png;base64,{png}"/>']
    body += axis.ticks(top + plot_h, 0)
    for midi in range(24, 109, 12):                      # C1 .. C8
        py = top + plot_h * (1 - (midi - CQT_LOWEST_MIDI + 0.5) / CQT_PITCHES)
        body.append(_text(axis.left - 6, py + 4, f"C{midi // 12 - 1}", "axis", "end"))
    body += [f'<rect x="{axis.x(s):.1f}" y="{top - 6}" width="{max(axis.x(e) - axis.x(s), 2):.1f}" height="5" '
             f'class="flag-tick"/>' for s, e in _flag_ranges(rec)]
    strip = _attention_points(rec, axis, top + plot_h - 2, plot_h * 0.9)
    if strip:
        body.append(f'<polyline points="{strip}" class="attention-line-under"/>')
        body.append(f'<polyline points="{strip}" class="attention-line"/>')
    return _svg(CHART_W, height, body, "constant-Q spectrogram with the model's attention drawn over it")


# --- bars and flags ----------------------------------------------------------------------------------------

def _flag_covers(flag: dict[str, Any], bar: dict[str, Any]) -> bool:
    """Whether a flag covers a bar: its bar number lies in [bar, last_bar] and, where both are known,
    the times overlap (repeated sections reuse bar numbers)."""
    number, first = bar.get("bar"), flag.get("bar")
    if number is None or first is None:
        return False
    last = flag.get("last_bar") if flag.get("last_bar") is not None else first
    if not first <= number <= last:
        return False
    f0, f1, b0, b1 = (_num(flag.get("start_s")), _num(flag.get("end_s")), _num(bar.get("start_s")),
                      _num(bar.get("end_s")))
    if None in (f0, f1, b0, b1):
        return True
    return (f0 < b1 and b0 < f1) or f0 == b0


def _severity_colour(severity: float | None, worst: float | None) -> str:
    """Yellow (mild) to red (the recording's worst flag). Severities have no common scale (a count of notes,
    a tempo ratio, points below the recording's score), so each is shown relative to the worst one."""
    if severity is None or not worst or worst <= 0:
        share = 0.5
    else:
        share = MIN_SHADE + (1 - MIN_SHADE) * min(max(severity / worst, 0.0), 1.0)
    return f"hsl({48 - 48 * share:.0f}, 90%, {72 - 16 * share:.0f}%)"


def _worst(flags: list[dict[str, Any]]) -> float | None:
    return max((v for v in (_num(f.get("severity")) for f in flags) if v is not None), default=None)


def _sorted_flags(flags: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(flags, key=lambda f: (_num(f.get("bar")) or 0, _num(f.get("start_s")) or 0))


def bar_map_html(rec: Recording) -> str:
    """One cell per bar, coloured by its worst flag, with the reasons as its tooltip and a link to them."""
    if not rec.bars:
        return ""
    flags = _sorted_flags(rec.bar_flags)
    worst_of_all = _worst(flags)
    cells = []
    for bar in sorted(rec.bars, key=lambda b: b.get("index") if b.get("index") is not None else 0):
        number = bar.get("bar")
        covering = [i for i, f in enumerate(flags) if _flag_covers(f, bar)]
        times = fmt_range(_num(bar.get("start_s")), _num(bar.get("end_s")))
        if not covering:
            cells.append(f'<span class="cell" title="{esc(f"bar {number} ({times})")}">{esc(str(number))}</span>')
            continue
        colour = _severity_colour(_worst([flags[i] for i in covering]), worst_of_all)
        reasons = "; ".join(f"{pretty_dim(str(flags[i].get('dimension') or ''))}: {flags[i].get('reason') or ''}"
                            for i in covering)
        cells.append(f'<a class="cell flagged" href="#flag-{covering[0]}" style="background:{colour}" '
                     f'title="{esc(f"bar {number} ({times}): {reasons}")}">{esc(str(number))}</a>')
    return f'<div class="barmap" aria-label="bar map">{"".join(cells)}</div>'


def bar_flags_html(rec: Recording) -> str:
    """The flags as a list under the bar map: bars, time, dimension, kind and reason."""
    if not rec.bar_flags:
        return '<p class="muted">No bars flagged.</p>' if rec.bars else ""
    items = []
    worst = _worst(rec.bar_flags)
    for i, flag in enumerate(_sorted_flags(rec.bar_flags)):
        colour = _severity_colour(_num(flag.get("severity")), worst)
        items.append(
            f'<tr id="flag-{i}"><td><i class="sev" style="background:{colour}"></i>{esc(bar_label(flag))}</td>'
            f'<td>{fmt_range(_num(flag.get("start_s")), _num(flag.get("end_s")))}</td>'
            f'<td>{esc(pretty_dim(str(flag.get("dimension") or "")))}</td><td>{esc(str(flag.get("kind") or ""))}</td>'
            f'<td class="reason">{esc(str(flag.get("reason") or ""))}</td></tr>')
    return ('<table class="flags"><thead><tr><th>Bars</th><th>Time</th><th>Dimension</th><th>Kind</th>'
            f'<th>Reason</th></tr></thead><tbody>{"".join(items)}</tbody></table>')


def time_flags_html(rec: Recording) -> str:
    """Flagged time ranges (recordings without a score)."""
    if not rec.time_flags:
        return ""
    flags = sorted(rec.time_flags, key=lambda f: _num(f.get("start_s")) or 0)
    worst = _worst(flags)
    items = "".join(
        f'<tr><td><i class="sev" style="background:{_severity_colour(_num(f.get("severity")), worst)}"></i>'
        f'{fmt_range(_num(f.get("start_s")), _num(f.get("end_s")))}</td>'
        f'<td>{esc(pretty_dim(str(f.get("dimension") or "")))}</td>'
        f'<td class="reason">{esc(str(f.get("reason") or ""))}</td></tr>' for f in flags)
    return ('<table class="flags"><thead><tr><th>Time</th><th>Dimension</th><th>Reason</th></tr></thead>'
            f'<tbody>{items}</tbody></table>')


# (column header, bar field, digits, unit) of the bar-by-bar table
BAR_COLUMNS = (
    ("notes", "score_notes", 0, ""), ("matched", "matched", 0, ""), ("missed", "missed", 0, ""),
    ("wrong", "wrong", 0, ""), ("extra", "extra", 0, ""), ("unclear", "unclear", 0, ""),
    ("onset dev", "onset_dev_ms", 0, " ms"), ("tempo", "tempo_pct", 1, " %"), ("unsteady", "unsteady_ms", 0, " ms"),
    ("velocity", "velocity", 0, ""), ("contrast", "velocity_contrast", 1, ""), ("length", "duration_ratio", 2, "×"),
    ("slurred", "legato_ratio", 2, "×"), ("staccato", "staccato_ratio", 2, "×"),
    ("pedal changes", "pedal_held_changes", 0, ""), ("pedal down", "pedal_down_pct", 0, " %"),
    ("attention", "attention", 2, ""),
)


def bar_table_html(rec: Recording) -> str:
    """Every bar's measurements, folded away under a <details>."""
    if not rec.bars:
        return ""
    head = "".join(f"<th>{esc(title)}</th>" for title, *_ in BAR_COLUMNS)
    rows = []
    for bar in sorted(rec.bars, key=lambda b: b.get("index") if b.get("index") is not None else 0):
        cells = "".join(f"<td>{fmt(_num(bar.get(key)), digits, unit)}</td>" for _, key, digits, unit in BAR_COLUMNS)
        rows.append(f'<tr><td>{esc(str(bar.get("bar")))}</td>'
                    f'<td>{fmt_range(_num(bar.get("start_s")), _num(bar.get("end_s")))}</td>{cells}</tr>')
    return (f'<details><summary>Bar by bar ({len(rec.bars)} bars)</summary><div class="scroll">'
            f'<table class="bars"><thead><tr><th>bar</th><th>time</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div></details>')


# --- pages -----------------------------------------------------------------------------------------------

STYLE = """
:root { --ink:#1d2530; --muted:#6b7683; --line:#dde3ea; --accent:#1f5f99; --bg:#f6f8fa; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       margin: 0; background: #fff; }
main { max-width: 960px; margin: 0 auto; padding: 24px 20px 60px; }
main.wide { max-width: 1400px; }
h1 { font-size: 24px; margin: 8px 0 4px; overflow-wrap: anywhere; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
a { color: var(--accent); }
.meta { color: var(--muted); margin: 0 0 12px; }
.meta span + span::before { content: " · "; }
.muted { color: var(--muted); }
.observation { background: #fff7e0; border-left: 5px solid #e0a100; padding: 12px 16px; font-size: 17px;
               margin: 16px 0; }
.note { background: var(--bg); border-left: 5px solid var(--muted); padding: 8px 14px; }
.error { background: #fdecec; border-left: 5px solid #c23b3b; padding: 10px 14px; overflow-wrap: anywhere; }
.counts { display: flex; gap: 12px; margin: 12px 0; }
.counts div { background: var(--bg); border-radius: 6px; padding: 8px 16px; }
.counts b { font-size: 22px; display: block; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable th { cursor: pointer; user-select: none; white-space: nowrap; background: var(--bg); }
table.sortable th[aria-sort=ascending]::after { content: " ▲"; }
table.sortable th[aria-sort=descending]::after { content: " ▼"; }
td.uncertain, .uncertain { color: #9aa3ad; font-style: italic; }
td.reason { max-width: 460px; }
td.practise { min-width: 220px; max-width: 360px; }
tr.status-error td { background: #fff5f5; }
svg.chart { display: block; max-width: 100%; height: auto; font-size: 11px; }
svg .axis { fill: var(--muted); font-size: 10px; }
svg .label { fill: var(--ink); font-size: 12px; }
svg .value { fill: var(--ink); font-size: 12px; }
svg .agg { font-weight: 600; }
svg .uncertain { fill: #9aa3ad; font-style: italic; }
svg .grid { stroke: #e8ecf0; stroke-width: 1; }
svg .bar { fill: #7aa7d1; }
svg .bar-agg { fill: var(--accent); }
svg .band { fill: #c9cfd6; opacity: .55; }
svg .whisker { stroke: #2b3440; stroke-width: 1.3; fill: none; }
svg .flagged-range { fill: #f4b8a8; opacity: .35; }
svg .flag-tick { fill: #d9482b; }
svg .attention-area { fill: #9ccbb4; opacity: .7; }
svg .attention-line { fill: none; stroke: #7ff7e6; stroke-width: 1.6; }
svg .attention-line-under { fill: none; stroke: #000; stroke-opacity: .5; stroke-width: 3.2; }
svg .cqt { image-rendering: pixelated; }
.legend { font-size: 12px; color: var(--muted); display: flex; gap: 14px; flex-wrap: wrap; margin: 4px 0 0 44px; }
.legend i { display: inline-block; width: 14px; height: 4px; margin-right: 5px; vertical-align: middle; }
.legend i.flag-swatch { background: #f4b8a8; height: 10px; }
.legend i.attn-swatch { background: #9ccbb4; height: 10px; }
.barmap { display: flex; flex-wrap: wrap; gap: 3px; margin: 8px 0 12px; }
.barmap .cell { min-width: 30px; padding: 3px 4px; text-align: center; font-size: 11px; border-radius: 3px;
                background: #e9eef3; color: var(--muted); text-decoration: none; }
.barmap .cell.flagged { color: #2a1a10; font-weight: 600; }
i.sev { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
details summary { cursor: pointer; color: var(--accent); margin: 12px 0 6px; }
"""

# Sorts table.sortable by the clicked column: data-sort when present, else the text; numbers as numbers;
# empty cells last in both directions.
SORT_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener('click', function () {
      var ascending = th.getAttribute('aria-sort') !== 'ascending';
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col];
        return cell.hasAttribute('data-sort') ? cell.getAttribute('data-sort') : cell.textContent.trim();
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === '' || y === '') { return (x === '') - (y === ''); }
        var nx = Number(x), ny = Number(y);
        var order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""

# Nothing may load from anywhere else; inline styles, scripts and data: images only.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _page(title: str, body: str, script: str = "", wide: bool = False) -> str:
    tail = f"<script>{script}</script>" if script else ""
    main = '<main class="wide">' if wide else "<main>"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
            f"<body>{main}{body}</main>{tail}</body></html>\n")


def render_recording(rec: Recording, run_id: str, window_aggregate: Callable | None = None) -> str:
    """The page of one recording."""
    meta = [f"<span>{esc(rec.mode or 'unknown mode')}</span>", f"<span>{fmt_time(rec.duration_s)}</span>",
            f"<span>status {esc(rec.status)}</span>"]
    if rec.has_score and rec.match_rate is not None:
        meta.append(f"<span>score match {rec.match_rate:.0%}</span>")
    if rec.status == "skipped" and rec.scored_in_run:
        meta.append(f"<span>unchanged, scored in run {esc(rec.scored_in_run)}</span>")
    parts = [f'<p><a href="{INDEX}">← run {esc(run_id)}</a></p>', f"<h1>{esc(rec.recording_id)}</h1>",
             f'<p class="meta">{"".join(meta)}</p>']
    files = f"recording: {esc(rec.source_uri)}" + (f"<br>score: {esc(rec.score_uri)}" if rec.score_uri else "")
    if rec.status == "error":
        parts.append(f'<div class="error"><b>Error ({esc(rec.error_kind or "unknown")}):</b> {esc(rec.message)}</div>')
        parts.append(f'<p class="muted">{files}</p>')
        return _page(f"{rec.recording_id} – error", "".join(parts))
    if rec.observation:
        parts.append(f'<div class="observation"><b>Practise next:</b> {esc(rec.observation)}</div>')
    if rec.score_mismatch:
        parts.append('<div class="note">The score given did not match the playing: assessed from the audio '
                     'alone, every dimension uncertain.</div>')
    if rec.message:
        parts.append(f'<div class="note">{esc(rec.message)}</div>')
    if rec.novelty is not None and rec.novelty > 1.0:
        parts.append(f'<div class="note">This playing is unlike the recordings the model learned from (novelty '
                     f'{rec.novelty:.1f}; 1 is as familiar as its training music): its uncertainty is widened.</div>')
    parts.append("<h2>Scores</h2>" + scores_svg(rec)
                 + '<p class="muted">0–100 with ±σ; grey bands are uncertain dimensions (σ too large to give a '
                   'number), drawn over score ± σ.</p>')
    if rec.window_scores or rec.attention_curve:
        parts.append("<h2>Over time</h2>" + timeline_svg(rec, window_aggregate))
    cqt = cqt_svg(rec)
    if cqt:
        parts.append("<h2>Spectrogram and attention</h2>" + cqt
                     + '<p class="muted">Constant-Q spectrogram (piano range, A0–C8); the light line is where '
                       'the model listened.</p>')
    if rec.bars or rec.bar_flags:
        parts.append("<h2>Bars</h2>" + bar_map_html(rec) + bar_flags_html(rec) + bar_table_html(rec))
    if rec.time_flags:
        parts.append("<h2>Flagged passages</h2>" + time_flags_html(rec))
    parts.append(f'<p class="muted">{files}</p>')
    return _page(rec.recording_id, "".join(parts))


def _dimension_names(run: Run, recordings: Sequence[Recording]) -> list[str]:
    """The run's dimensions: the manifest's, else every row's in order of first appearance."""
    names = [str(d) for d in run.manifest.get("dimensions") or []]
    for rec in recordings:
        names += [d for d in rec.dimensions if d not in names]
    return names


def _score_cell(rec: Recording, name: str) -> str:
    if name not in rec.dimensions:
        return '<td class="num" data-sort=""></td>'
    i = rec.dimensions.index(name)
    score, sigma = rec.score(i), rec.sigma_of(i)
    if score is None:
        return '<td class="num" data-sort="">–</td>'
    if rec.is_uncertain(i):
        title = f"σ {sigma:.0f}" if sigma is not None else ""
        return f'<td class="num uncertain" data-sort="" title="{title}">uncertain</td>'
    return f'<td class="num" data-sort="{score:.3f}">{score:.0f}</td>'


def _aggregate_cell(rec: Recording) -> str:
    if rec.aggregate is None:
        return '<td class="num" data-sort="">–</td>'
    sigma = f' <span class="muted">± {rec.aggregate_sigma:.0f}</span>' if rec.aggregate_sigma is not None else ""
    return f'<td class="num" data-sort="{rec.aggregate:.3f}">{rec.aggregate:.0f}{sigma}</td>'


def render_index(run: Run, recordings: Sequence[Recording]) -> str:
    """The run's index page: counts, a sortable table of recordings, the errors."""
    manifest = run.manifest
    counts = {s: sum(r.status == s for r in recordings) for s in ("ok", "skipped", "error")}
    names = _dimension_names(run, recordings)
    meta = [f"<span>{esc(str(manifest[k]))}</span>" for k in ("finished",) if manifest.get(k)]
    if manifest.get("model_version"):
        meta.append(f"<span>model {esc(str(manifest['model_version']))}</span>")
    if manifest.get("input"):
        meta.append(f"<span>input {esc(str(manifest['input']))}</span>")
    head = ["Recording", "Status", "Mode", "Duration", "Aggregate"] + [pretty_dim(n) for n in names] + [
        "Flags", "Practise next"]
    numeric = {"Duration", "Aggregate", "Flags", *(pretty_dim(n) for n in names)}
    header = "".join(f'<th class="{"num" if h in numeric else ""}">{esc(h)}</th>' for h in head)
    rows = []
    for rec in recordings:
        cells = [f'<td><a href="{esc(rec.page)}">{esc(rec.recording_id)}</a></td>', f"<td>{esc(rec.status)}</td>",
                 f"<td>{esc(rec.mode)}</td>",
                 f'<td class="num" data-sort="{rec.duration_s if rec.duration_s is not None else ""}">'
                 f"{fmt_time(rec.duration_s)}</td>", _aggregate_cell(rec)]
        cells += [_score_cell(rec, n) for n in names]
        cells.append(f'<td class="num">{rec.n_flags if rec.status != "error" else ""}</td>')
        cells.append(f'<td class="practise">{esc(rec.observation)}</td>')
        rows.append(f'<tr class="status-{esc(rec.status)}">{"".join(cells)}</tr>')
    errors = [r for r in recordings if r.status == "error"]
    parts = [f"<h1>Scoring run {esc(run.run_id)}</h1>", f'<p class="meta">{"".join(meta)}</p>',
             '<div class="counts">' + "".join(f"<div><b>{counts[s]}</b>{s}</div>" for s in counts) + "</div>",
             "<h2>Recordings</h2>",
             '<p class="muted">Click a column header to sort. “uncertain”: σ too large to give a number.</p>',
             f'<div class="scroll"><table class="sortable" id="recordings"><thead><tr>{header}</tr></thead>'
             f'<tbody>{"".join(rows)}</tbody></table></div>']
    if errors:
        items = "".join(f'<tr><td><a href="{esc(r.page)}">{esc(r.recording_id)}</a></td>'
                        f"<td>{esc(r.error_kind)}</td><td>{esc(r.message)}</td></tr>" for r in errors)
        parts.append(f'<h2>Errors ({len(errors)})</h2><table class="errors" id="errors"><thead><tr><th>Recording</th>'
                     f"<th>Kind</th><th>Message</th></tr></thead><tbody>{items}</tbody></table>")
    return _page(f"Scoring run {run.run_id}", "".join(parts), SORT_SCRIPT, wide=True)
