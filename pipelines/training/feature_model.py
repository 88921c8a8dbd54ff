"""The feature model: gradient-boosted trees on 62 whole-performance descriptors, blended into the
network's recording scores (`train.feature_blend`).

The network reads 10 s windows and averages their scores, so what belongs to a whole performance (its
dynamic range, its tempo against the score, how much pedal it uses) reaches it only in pieces. Gradient
boosting on `pipelines.features.descriptors.recording_descriptors` (13 descriptors of the performance
against its score, 18 of its note alignment, 15 of the score alone and 16 fault measures of the
pseudo-labels) knows those, and the two systems
err differently: on PercePiano the blend beats both on every protocol (benchmarks/RESULTS.md, section
percepiano).

How it runs:
- preprocessing stores the descriptors of every recording with an aligned score on each of its rows
  (`perf_features`, float32 [62]); the scoring job computes them alike from the notes it aligns;
- after the expert stage, `fit_feature_model` fits one tree ensemble per dimension on the train and val
  splits' recordings (never test) and writes `feature_model.pkl` and `feature_model.json` into the best
  checkpoint's model directory; trees fitted on train alone predict the val recordings once more
  (`feature_model_val.json`), and the calibration blends those: the val split calibrates the blended sigma
  with trees that never saw it, as the test and a library get;
- `jobs/evaluate.py`, the calibration and `jobs/score.py` blend each recording's score as
  (1 - w) * network + w * trees with w = `train.feature_blend`, for recordings that have the descriptors
  (a score was aligned) and dimensions the trees were fitted on (at least 20 labelled recordings); the
  rest keep the network's score. Window scores, attention curves and per-bar feedback stay the network's.

Unfamiliar music (`NoveltyReference`, `feature_model_novelty.npz`): the calibration's val split is music like
the training side's, so on a composition unlike anything trained on the calibrated sigma is too narrow
(PercePiano's composition split: sigma 8.4 against an RMSE of 12.6, ECE 0.14). With the trees the checkpoint
keeps the fitted recordings' standardised descriptors. A recording's novelty is the mean distance to its
NOVELTY_NEIGHBOURS nearest fitted recordings over the typical one (the median of the same distance among the
fitted recordings, each without itself): 1 is as familiar as the training music is to itself. Each
standardised descriptor counts at most NOVELTY_Z_CLIP standard deviations (one the training side never varied
would otherwise weigh by its unit). From 1 to NOVELTY_FAR its sigma widens linearly towards what knowing
nothing costs, the spread of the fitted labels:
sigma'^2 = sigma^2 + lam * max(spread^2 - sigma^2, 0), lam = clip((novelty - 1) / (NOVELTY_FAR - 1), 0, 1).
Scores are left alone. `jobs/evaluate.py` and `jobs/score.py` apply it after the calibration and report each
recording's `novelty` (RESULTS.md, section percepiano: ECE 0.140 -> 0.085 on the composition split).

The trees are scikit-learn's `HistGradientBoostingRegressor`, saved with pickle (scikit-learn's own
persistence): load feature models only from checkpoints you trained, as with any pickled model.
"""
from __future__ import annotations

import datetime
import io
import json
import logging
import pickle
import warnings
from typing import Any

import numpy as np

from pipelines.features.descriptors import DESCRIPTOR_NAMES
from pipelines.io import storage

log = logging.getLogger("pianoeval.train")

FEATURE_MODEL_FILE = "feature_model.pkl"
FEATURE_MODEL_META = "feature_model.json"
FEATURE_MODEL_HOLDOUT = "feature_model_val.json"     # {recording_id: [D]} of val recordings, trees fit on train
FEATURE_MODEL_NOVELTY = "feature_model_novelty.npz"  # the fitted recordings' descriptors (NoveltyReference)
FEATURE_COLUMN = "perf_features"
NOVELTY_NEIGHBOURS = 10        # novelty: mean distance to this many nearest fitted recordings
NOVELTY_FAR = 2.0              # ... at this many times the typical distance, sigma is the labels' spread
NOVELTY_MAX_POINTS = 5000      # a larger training side keeps a seeded sample of this many recordings
NOVELTY_Z_CLIP = 5.0           # a standardised descriptor counts at most this many standard deviations away:
                               # one the fitted recordings never varied (every training score at one written
                               # tempo) would otherwise make novelty depend on that descriptor's unit


N_FEATURES = len(DESCRIPTOR_NAMES)


def _standardised(features: np.ndarray, centre: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(R, F) descriptors -> (R, F) float64 standard deviations from the centre, each within NOVELTY_Z_CLIP."""
    return np.clip((np.asarray(features, np.float64) - centre) / scale, -NOVELTY_Z_CLIP, NOVELTY_Z_CLIP)


class NoveltyReference:
    """How unlike the fitted recordings a recording's descriptors are, and the sigma that follows (see the
    module docstring). centre, scale: f8 [62] standardisation; points: f4 [N, 62] standardised fitted
    recordings; typical: their median leave-one-out neighbour distance; spread: f8 [D] their labels' std."""

    def __init__(self, centre: np.ndarray, scale: np.ndarray, points: np.ndarray, typical: float,
                 spread: np.ndarray) -> None:
        self.centre, self.scale = np.asarray(centre, np.float64), np.asarray(scale, np.float64)
        self.points, self.typical = np.asarray(points, np.float32), float(typical)
        self.spread = np.asarray(spread, np.float64)
        self._points64 = self.points.astype(np.float64)
        self._norms = (self._points64 ** 2).sum(axis=1)

    @classmethod
    def fit(cls, features: np.ndarray, targets: np.ndarray) -> "NoveltyReference | None":
        """From the fitted recordings' descriptors (N, 62) and labels (N, D); None under 2 x NOVELTY_NEIGHBOURS."""
        features = np.asarray(features, np.float64)
        if len(features) < 2 * NOVELTY_NEIGHBOURS:
            return None
        spread = np.nanstd(np.asarray(targets, np.float64), axis=0)
        if len(features) > NOVELTY_MAX_POINTS:      # distances are measured against the same sample later
            keep = np.sort(np.random.default_rng(0).choice(len(features), NOVELTY_MAX_POINTS, replace=False))
            features = features[keep]
        centre, scale = features.mean(axis=0), features.std(axis=0)
        scale = np.where(scale > 1e-9, scale, 1.0)
        ref = cls(centre, scale, _standardised(features, centre, scale).astype(np.float32), 1.0, spread)
        typical = float(np.median(ref._distance(features, leave_one_out=True)))
        ref.typical = typical if typical > 0 else 1.0
        return ref

    def _distance(self, features: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
        z = _standardised(features, self.centre, self.scale)
        k = min(NOVELTY_NEIGHBOURS, len(self.points) - int(leave_one_out))
        out = np.empty(len(z))
        for start in range(0, len(z), 256):             # (256, N) distances at a time
            block = z[start:start + 256]
            d = np.sqrt(np.maximum((block ** 2).sum(1)[:, None] - 2.0 * block @ self._points64.T
                                   + self._norms[None, :], 0.0))
            last = int(leave_one_out) + k                 # the nearest (itself, left out) and its k neighbours
            d = np.partition(d, last - 1, axis=1)[:, :last]
            d = np.sort(d, axis=1)[:, int(leave_one_out):]
            out[start:start + 256] = d.mean(axis=1)
        return out

    def novelty(self, features: np.ndarray) -> np.ndarray:
        """(R, 62) -> (R,): neighbour distance over the typical one (1 = as familiar as the training music)."""
        return self._distance(np.atleast_2d(features)) / self.typical

    def widen(self, sigma: np.ndarray, novelty: np.ndarray) -> np.ndarray:
        """(R, D) sigma and (R,) novelty (NaN: unknown, left alone) -> (R, D) sigma widened towards the spread."""
        sigma = np.asarray(sigma, np.float64)
        lam = np.clip((np.asarray(novelty, np.float64) - 1.0) / (NOVELTY_FAR - 1.0), 0.0, 1.0)
        lam = np.where(np.isfinite(lam), lam, 0.0)[:, None]
        gap = np.maximum(self.spread[None, :] ** 2 - sigma ** 2, 0.0)
        return np.sqrt(sigma ** 2 + lam * np.where(np.isfinite(gap), gap, 0.0))

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, centre=self.centre, scale=self.scale, points=self.points, typical=self.typical,
                 spread=self.spread)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "NoveltyReference":
        z = np.load(io.BytesIO(data))
        return cls(z["centre"], z["scale"], z["points"], float(z["typical"]), z["spread"])


def count_unfamiliar(novelty) -> dict[str, Any]:
    """Of the recordings with a known novelty (NaN: none), how many had their sigma widened (novelty above 1),
    how many reached the labels' spread (NOVELTY_FAR), and their median novelty."""
    values = np.asarray(novelty, np.float64)
    values = values[np.isfinite(values)]
    return {"recordings": int(len(values)), "widened": int((values > 1.0).sum()),
            "far": int((values >= NOVELTY_FAR).sum()),
            "median_novelty": float(np.median(values)) if len(values) else None}


class FeatureModel:
    """A fitted feature model: `predict` (R, 62) -> (R, D), `blend` into the network's scores, and with a
    `NoveltyReference` the `novelty` of recordings and the sigma it `widen`s."""

    def __init__(self, baseline, names: list[str], weight: float, meta: dict[str, Any] | None = None,
                 holdout: dict[str, list[float]] | None = None, reference: NoveltyReference | None = None) -> None:
        self.baseline, self.names, self.weight = baseline, list(names), float(weight)
        self.reference = reference
        self.meta = meta or {}
        self.holdout = {r: np.asarray(v, dtype=np.float64) for r, v in (holdout or {}).items()}
        # dimensions with trees (a dimension with too few labels holds a constant: the network keeps it)
        self.fitted = np.array([not isinstance(m, float) for m in baseline.models], dtype=bool)

    def summary(self) -> dict[str, Any]:
        """What evaluation summaries and scoring manifests record of it."""
        return {"weight": self.weight, "recordings": self.meta.get("recordings"), "fitted": self.meta.get("fitted")}

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.baseline.predict(np.asarray(features, dtype=np.float32).astype(np.float64))

    def novelty(self, features: list[np.ndarray | None]) -> np.ndarray:
        """(R,) novelty of each recording's descriptors; NaN without descriptors or without a reference."""
        out = np.full(len(features), np.nan)
        rows = [i for i, f in enumerate(features) if f is not None and len(f) == N_FEATURES]
        if rows and self.reference is not None:
            out[rows] = self.reference.novelty(np.stack([features[i] for i in rows]))
        return out

    def widen(self, sigma: np.ndarray, novelty: np.ndarray) -> np.ndarray:
        """(R, D) calibrated sigma -> widened for unfamiliar recordings (unchanged without a reference)."""
        return np.asarray(sigma, np.float64) if self.reference is None else self.reference.widen(sigma, novelty)

    def blend(self, scores: np.ndarray, features: list[np.ndarray | None], ids: list[str] | None = None,
              holdout: bool = False) -> np.ndarray:
        """(R, D) network scores and each recording's descriptors (None: none) -> (R, D) blended scores.
        holdout: a val recording (by `ids`) takes the prediction of the trees fitted without it."""
        out = np.array(scores, dtype=np.float64, copy=True)
        rows = [i for i, f in enumerate(features) if f is not None and len(f) == N_FEATURES]
        if not rows or not self.fitted.any():
            return out
        trees = self.predict(np.stack([features[i] for i in rows]))
        if holdout and ids is not None:
            for k, i in enumerate(rows):
                if ids[i] in self.holdout:
                    trees[k] = self.holdout[ids[i]]
        w = self.weight
        for k, i in enumerate(rows):
            ok = self.fitted & np.isfinite(trees[k]) & np.isfinite(out[i])
            out[i, ok] = (1.0 - w) * out[i, ok] + w * trees[k, ok]
        return out


def features_by_recording(table) -> dict[str, np.ndarray]:
    """{recording_id: float32 [62]} from the `perf_features` column (first non-empty row of each recording)."""
    from pipelines.features.rows import unpack_array

    out: dict[str, np.ndarray] = {}
    if FEATURE_COLUMN not in table.column_names:
        return out
    for rid, blob in zip(table.column("recording_id").to_pylist(), table.column(FEATURE_COLUMN).to_pylist()):
        if rid not in out and blob:
            values = unpack_array(blob, "f4")
            if len(values) == N_FEATURES:
                out[rid] = values
    return out


def check_feature_column(data_uri: str) -> None:
    """A ValueError in one line when the feature set predates the `perf_features` column or holds another
    revision's number of descriptors."""
    import pyarrow.dataset as pads

    from pipelines.features.rows import unpack_array
    from pipelines.preprocess import _segments_path

    fs, path = _segments_path(data_uri)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    remake = "remake it with jobs/preprocess.py, or train with --set train.feature_blend=0"
    if FEATURE_COLUMN not in dataset.schema.names:
        raise ValueError(f"{data_uri}: the feature set has no '{FEATURE_COLUMN}' column (made before it existed): "
                         f"{remake}")
    for batch in dataset.to_batches(columns=[FEATURE_COLUMN], batch_size=256):
        blob = next((b for b in batch.column(0).to_pylist() if b), None)
        if blob is not None:
            found = len(unpack_array(blob, "f4"))
            if found != N_FEATURES:
                raise ValueError(f"{data_uri}: the feature set has {found} descriptors per recording (an older "
                                 f"revision's), the feature model reads {N_FEATURES}: {remake}")
            return


def feature_model_for(checkpoint_uri: str, names: list[str], stage: str, data_uri: str) -> FeatureModel | None:
    """The feature model an evaluation of `data_uri` against `stage` labels blends (expert targets only), after
    checking that the feature set has the descriptors; None without one."""
    model = load_feature_model(checkpoint_uri, names) if stage == "expert" else None
    if model is not None:
        check_feature_column(data_uri)
    return model


def fit_feature_model(checkpoint_uri: str, data_uri: str, weight: float, *, labels_lookup: dict[str, str] | None = None,
                      splits: dict[str, str] | None = None, seed: int = 0, rank: int = 0) -> dict[str, Any]:
    """Fit the trees on the train and val splits' recordings and write them into the checkpoint's model
    directory, with the val recordings' predictions of trees fitted on train alone (for the calibration).

    Targets: the expert labels (`labels_json`, or the `--labels` table's), one row per recording (the mean
    over its windows). Returns the written record (feature_model.json) plus its "uri"."""
    from model.schema import DimensionSchema
    from pipelines.evaluation.baselines import GradientBoostingFeatureBaseline
    from pipelines.evaluation.evaluate import _mean_target_per_recording, original_rows
    from pipelines.io.model_files import read_checkpoint_meta
    from pipelines.io.splits_table import apply_splits
    from pipelines.preprocess import read_segments_table
    from pipelines.training.batches import label_matrix
    from pipelines.training.run import model_dir_uri

    model_dir = model_dir_uri(checkpoint_uri)
    names = DimensionSchema.from_dict(read_checkpoint_meta(model_dir)["schema"]).names
    check_feature_column(data_uri)
    everything = original_rows(apply_splits(read_segments_table(
        data_uri, columns=["recording_id", "split", "augment", "status", "labels_json", FEATURE_COLUMN]), splits),
        "all")
    ids = everything.column("recording_id").to_pylist()
    texts = everything.column("labels_json").to_pylist()
    if labels_lookup is not None:
        texts = [labels_lookup.get(r, "{}") for r in ids]
    truth = _mean_target_per_recording(ids, label_matrix(texts, names))
    side = dict(zip(ids, everything.column("split").to_pylist()))
    features = features_by_recording(everything)
    usable = [r for r in sorted(truth) if r in features and np.isfinite(truth[r]).any()]
    train = [r for r in usable if side[r] == "train"]
    val = [r for r in usable if side[r] == "val"]
    if not train:
        raise ValueError(f"{data_uri}: no labelled train recording has performance features (no aligned score?)")

    def fit(rec: list[str]):
        return GradientBoostingFeatureBaseline(seed=seed, rank=rank).fit(
            np.stack([features[r] for r in rec]).astype(np.float64), np.stack([truth[r] for r in rec]))

    holdout: dict[str, list[float]] = {}
    if val:                                   # the val recordings as trees that never saw them predict them
        on_train = FeatureModel(fit(train), names, weight)
        predicted = on_train.predict(np.stack([features[r] for r in val]))
        holdout = {r: [float(v) for v in row] for r, row in zip(val, predicted)}
    baseline = fit(train + val)
    model = FeatureModel(baseline, names, weight)
    reference = NoveltyReference.fit(np.stack([features[r] for r in train + val]),
                                     np.stack([truth[r] for r in train + val]))
    import sklearn

    record = {"weight": float(weight), "recordings": len(train) + len(val), "features": list(DESCRIPTOR_NAMES),
              "rank": rank if baseline.projection is not None else 0,
              "novelty": None if reference is None else {"neighbours": NOVELTY_NEIGHBOURS, "far": NOVELTY_FAR,
                                                         "typical_distance": reference.typical},
              "dimensions": names, "fitted": [n for n, f in zip(names, model.fitted) if f],
              "splits": {"train": len(train), "val": len(val)}, "sklearn": sklearn.__version__,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    buffer = io.BytesIO()
    pickle.dump(baseline, buffer, protocol=pickle.HIGHEST_PROTOCOL)
    storage.write_bytes(storage.join(model_dir, FEATURE_MODEL_FILE), buffer.getvalue())
    storage.write_text(storage.join(model_dir, FEATURE_MODEL_HOLDOUT), json.dumps(holdout))
    novelty_uri = storage.join(model_dir, FEATURE_MODEL_NOVELTY)
    if reference is not None:
        storage.write_bytes(novelty_uri, reference.to_bytes())
    elif storage.exists(novelty_uri):                # an earlier fit's reference would describe other recordings
        storage.delete(novelty_uri)
    uri = storage.join(model_dir, FEATURE_MODEL_META)
    storage.write_text(uri, json.dumps(record, indent=2))
    return {**record, "uri": uri}


def load_feature_model(checkpoint_uri: str, names: list[str] | None = None) -> FeatureModel | None:
    """The checkpoint's feature model, or None when it has none. A CheckpointError in one line when its
    files are unreadable or its dimensions are not the checkpoint's."""
    from model.errors import CheckpointError
    from pipelines.training.run import model_dir_uri

    model_dir = model_dir_uri(checkpoint_uri)
    meta_uri, pkl_uri = storage.join(model_dir, FEATURE_MODEL_META), storage.join(model_dir, FEATURE_MODEL_FILE)
    if not storage.exists(meta_uri):
        return None
    try:
        meta = json.loads(storage.read_text(meta_uri))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            baseline = pickle.loads(storage.read_bytes(pkl_uri))
    except Exception as exc:
        raise CheckpointError(f"{pkl_uri}: cannot load the feature model ({type(exc).__name__}: {exc})") from None
    for w in caught:
        if "version" in str(w.message).lower():
            log.warning("%s: fitted with scikit-learn %s, loaded with another version; refit it if scores look off",
                        pkl_uri, meta.get("sklearn"))
    if names is not None and list(meta.get("dimensions", [])) != list(names):
        raise CheckpointError(f"{meta_uri}: the feature model's dimensions are not the checkpoint's")
    if getattr(baseline, "n_features", N_FEATURES) != N_FEATURES:
        raise CheckpointError(f"{meta_uri}: the feature model reads {baseline.n_features} descriptors (an older "
                              f"revision's), this one computes {N_FEATURES}: refit it with jobs/blend.py on a "
                              "feature set made by this revision's jobs/preprocess.py")
    holdout_uri = storage.join(model_dir, FEATURE_MODEL_HOLDOUT)
    holdout = json.loads(storage.read_text(holdout_uri)) if storage.exists(holdout_uri) else {}
    novelty_uri, reference = storage.join(model_dir, FEATURE_MODEL_NOVELTY), None
    if storage.exists(novelty_uri):                  # fitted before it existed: sigma is not widened
        try:
            reference = NoveltyReference.from_bytes(storage.read_bytes(novelty_uri))
        except Exception as exc:
            raise CheckpointError(f"{novelty_uri}: cannot load the feature model's novelty reference "
                                  f"({type(exc).__name__}: {exc})") from None
    return FeatureModel(baseline, meta.get("dimensions", names or []), meta["weight"], meta, holdout, reference)


def remove_feature_model(checkpoint_uri: str) -> bool:
    """Delete a checkpoint's feature model files (its scores become the network's alone); True if there were any."""
    from pipelines.training.run import model_dir_uri

    model_dir = model_dir_uri(checkpoint_uri)
    found = False
    for name in (FEATURE_MODEL_META, FEATURE_MODEL_FILE, FEATURE_MODEL_HOLDOUT, FEATURE_MODEL_NOVELTY):
        uri = storage.join(model_dir, name)
        if storage.exists(uri):
            storage.delete(uri)
            found = True
    return found
