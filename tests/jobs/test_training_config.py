"""jobs/_common.py's training config: the pseudo stage under a schema without pseudo-labels."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jobs._common import training_config  # noqa: E402


def _args(config: str, stage: str | None, *overrides: str) -> argparse.Namespace:
    return argparse.Namespace(config=config, stage=stage, num_workers=None, gpu=False, overrides=list(overrides))


def test_a_pseudo_stage_of_the_percepiano_preset_trains_seed10s_technical_dimensions(capsys):
    config = training_config(_args("percepiano", "pseudo", "train.epochs=3"))
    assert config.schema().name == "seed10" and config.train.stage == "pseudo"
    assert config.train.epochs == 3 and config.model.aggregation == "mean"      # the rest of the preset stays
    line = capsys.readouterr().out.strip()
    assert "percepiano19 has no pseudo-labelled dimensions" in line and "\n" not in line


def test_the_expert_stage_keeps_its_schema(capsys):
    assert training_config(_args("percepiano", None)).schema().name == "percepiano19"
    assert training_config(_args("tiny", "pseudo")).schema().name == "seed10"
    assert capsys.readouterr().out == ""
