"""Dimension schemas: the named list of assessment dimensions a model predicts.

A schema is data, not code. The built-in ones are `seed10` and `percepiano19`; a YAML file with
`name`, `dimensions` (a list of `{name, group, source}`) and optional `aggregate` weights makes another.
Checkpoints carry the schema as a dictionary (`DimensionSchema.to_dict`) and rebuild it from there.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from model.errors import ConfigError

TECHNICAL = "technical"
INTERPRETIVE = "interpretive"


@dataclasses.dataclass(frozen=True)
class Dimension:
    name: str
    group: str = TECHNICAL          # technical | interpretive
    source: str = "expert"          # pseudo (computable from alignment/signal) | expert (labels only)
    description: str = ""


@dataclasses.dataclass(frozen=True)
class DimensionSchema:
    name: str
    dimensions: tuple[Dimension, ...]
    # aggregate = sum over groups of weight * mean(dimensions in the group); empty = no aggregate
    aggregate: tuple[tuple[float, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        names = [d.name for d in self.dimensions]
        if not names:
            raise ConfigError(f"dimension schema {self.name!r} has no dimensions")
        if len(set(names)) != len(names):
            raise ConfigError(f"dimension schema {self.name!r} repeats a dimension name")
        for weight, members in self.aggregate:
            missing = [m for m in members if m not in names]
            if missing:
                raise ConfigError(f"aggregate of schema {self.name!r} names unknown dimension {missing[0]!r}")
            if weight < 0:
                raise ConfigError(f"aggregate weight {weight} in schema {self.name!r} is negative")

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    @property
    def pseudo_names(self) -> list[str]:
        return [d.name for d in self.dimensions if d.source == "pseudo"]

    def __len__(self) -> int:
        return len(self.dimensions)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def aggregate_score(self, scores: dict[str, float]) -> float | None:
        """Weighted aggregate of per-dimension scores (0-100); None if the schema defines none."""
        if not self.aggregate:
            return None
        total, weight_sum = 0.0, 0.0
        for weight, members in self.aggregate:
            total += weight * sum(scores[m] for m in members) / len(members)
            weight_sum += weight
        return total / weight_sum

    def with_aggregate_weights(self, weights: list[float]) -> "DimensionSchema":
        if len(weights) != len(self.aggregate):
            raise ConfigError(f"schema {self.name!r} has {len(self.aggregate)} aggregate groups, got {len(weights)} weights")
        groups = tuple((float(w), members) for w, (_, members) in zip(weights, self.aggregate))
        return dataclasses.replace(self, aggregate=groups)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dimensions": [dataclasses.asdict(d) for d in self.dimensions],
            "aggregate": [{"weight": w, "dimensions": list(m)} for w, m in self.aggregate],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DimensionSchema":
        try:
            dims = tuple(Dimension(**d) for d in data["dimensions"])
            agg = tuple((float(a["weight"]), tuple(a["dimensions"])) for a in data.get("aggregate", []))
            return cls(name=str(data["name"]), dimensions=dims, aggregate=agg)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"malformed dimension schema: {exc}") from None


SEED10 = DimensionSchema(
    name="seed10",
    dimensions=(
        Dimension("note_accuracy", TECHNICAL, "pseudo", "right notes: no wrong, missed or extra notes"),
        Dimension("rhythmic_precision", TECHNICAL, "pseudo", "steady, accurate timing against the local tempo"),
        Dimension("dynamics_control", TECHNICAL, "pseudo", "controlled, shaped dynamics; neither flat nor erratic"),
        Dimension("articulation", TECHNICAL, "pseudo", "note lengths as written (legato/staccato)"),
        Dimension("pedaling", TECHNICAL, "pseudo", "clean, sufficient sustain pedalling"),
        Dimension("tone", TECHNICAL, "pseudo", "even, balanced tone and voicing"),
        Dimension("phrasing", INTERPRETIVE, "expert", "shaping of phrases"),
        Dimension("musicality", INTERPRETIVE, "expert", "overall musical sense"),
        Dimension("overall", INTERPRETIVE, "expert", "overall quality"),
        Dimension("expressiveness", INTERPRETIVE, "expert", "expressive range and intent"),
    ),
    aggregate=(
        (0.35, ("note_accuracy", "rhythmic_precision")),
        (0.25, ("dynamics_control", "tone")),
        (0.25, ("musicality", "expressiveness")),
        (0.15, ("phrasing",)),
    ),
)

# PercePiano's 19 dimensions in label order; each rating is low end <-> high end.
_PERCEPIANO = (
    ("timing", "stable <-> unstable"),
    ("articulation_length", "short <-> long"),
    ("articulation_touch", "soft/cushioned <-> hard/solid"),
    ("pedal_amount", "sparse/dry <-> saturated/wet"),
    ("pedal_clarity", "clean <-> blurred"),
    ("timbre_variety", "even <-> colorful"),
    ("timbre_depth", "shallow <-> rich"),
    ("timbre_brightness", "bright <-> dark"),
    ("timbre_loudness", "soft <-> loud"),
    ("dynamic_sophistication", "sophisticated/mellow <-> raw/crude"),
    ("dynamic_range", "little <-> large range"),
    ("music_making_pace", "fast-paced <-> slow-paced"),
    ("music_making_space", "flat <-> spacious"),
    ("music_making_balance", "disproportioned <-> balanced"),
    ("music_making_drama", "pure <-> dramatic/expressive"),
    ("emotion_mood", "optimistic/pleasant <-> dark"),
    ("emotion_energy", "low <-> high energy"),
    ("emotion_imagination", "honest <-> imaginative"),
    ("interpretation", "unsatisfactory/doubtful <-> convincing"),
)
PERCEPIANO19 = DimensionSchema(
    name="percepiano19",
    dimensions=tuple(
        Dimension(name, TECHNICAL if i < 11 else INTERPRETIVE, "expert", desc)
        for i, (name, desc) in enumerate(_PERCEPIANO)
    ),
)

BUILTIN_SCHEMAS = {s.name: s for s in (SEED10, PERCEPIANO19)}


def load_schema(name_or_path: str) -> DimensionSchema:
    """A built-in schema by name, or one read from a YAML file."""
    if name_or_path in BUILTIN_SCHEMAS:
        return BUILTIN_SCHEMAS[name_or_path]
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        import yaml
        with open(path) as f:
            return DimensionSchema.from_dict(yaml.safe_load(f))
    known = ", ".join(sorted(BUILTIN_SCHEMAS))
    raise ConfigError(f"unknown dimension schema {name_or_path!r}: use one of {known} or a YAML file path")
