"""Evaluation protocols (grouped folds) and the splits tables that carry them to training and evaluation."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.evaluation.protocols import balanced_group_folds, group_key, protocol_folds
from pipelines.io.splits_table import SplitsTableError, apply_splits, read_splits_table, write_splits_table

ROOT = Path(__file__).resolve().parents[3]


def _records(n_pieces=12, players=6, works=3):
    return [{"recording_id": f"w{p % works}_p{p}_pl{q}", "piece_id": f"p{p}", "performer_id": f"pl{q}",
             "extra": {"work": f"w{p % works}"}} for p in range(n_pieces) for q in range(players)]


@pytest.mark.parametrize("protocol", ["piece", "performer", "work"])
def test_every_fold_keeps_its_groups_on_one_side_and_tests_every_recording_once(protocol):
    records = _records()
    folds = protocol_folds(records, protocol)
    assert len(folds) == (3 if protocol == "work" else 5)
    tested = Counter()
    for splits in folds:
        assert set(splits) == {r["recording_id"] for r in records}
        side = {}
        for r in records:
            s = splits[r["recording_id"]]
            tested[r["recording_id"]] += s == "test"
            group = group_key(r, protocol)
            in_test = s == "test"
            assert side.setdefault(group, in_test) == in_test, f"{group} on both sides"
        counts = Counter(splits.values())
        assert counts["val"] > 0 and counts["train"] > counts["val"]
        # validation never holds a test group, and for piece/performer it is grouped too
        val_groups = {group_key(r, protocol) for r in records if splits[r["recording_id"]] == "val"}
        train_groups = {group_key(r, protocol) for r in records if splits[r["recording_id"]] == "train"}
        if protocol != "work":
            assert not val_groups & train_groups
    assert set(tested.values()) == {1}
    assert protocol_folds(records, protocol) == folds                 # deterministic for a seed
    assert protocol_folds(records, protocol, seed=1) != folds


def test_balanced_folds_spread_the_recordings():
    groups = [f"g{i}" for i in range(20) for _ in range(1 + i % 4)]
    folds = balanced_group_folds(groups, 4)
    load = Counter(folds[g] for g in groups)
    assert max(load.values()) - min(load.values()) <= 4
    with pytest.raises(ValueError):
        balanced_group_folds(["a", "b"], 3)


def test_splits_table_round_trip_and_application(tmp_path):
    uri = str(tmp_path / "fold0.csv")
    write_splits_table({"b": "val", "a": "train", "c": "test", "d": ""}, uri)
    assert read_splits_table(uri) == {"a": "train", "b": "val", "c": "test", "d": ""}
    table = pa.table({"recording_id": ["a", "b", "c", "d", "e"], "split": ["test"] * 5})
    assert apply_splits(table, read_splits_table(uri)).column("split").to_pylist() == ["train", "val", "test", "",
                                                                                       ""]
    assert apply_splits(table, None) is table


@pytest.mark.parametrize("content, fragment", [
    ("recording_id,fold\na,train\n", "lacks the column(s) split"),
    ("recording_id,split\na,holdout\n", "'holdout' is not train, val or test"),
    ("recording_id,split\na,train\na,test\n", "appears twice"),
    ("recording_id,split\n,train\n", "has no recording_id"),
    ("recording_id,split\na,\n", "no recording in train, val or test"),
])
def test_bad_splits_tables_are_one_line_naming_the_file(tmp_path, content, fragment):
    path = tmp_path / "my splits.csv"
    path.write_text(content)
    with pytest.raises(SplitsTableError) as err:
        read_splits_table(str(path))
    assert fragment in str(err.value) and "my splits.csv" in str(err.value) and "\n" not in str(err.value)


def test_validation_names_are_accepted(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("recording_id,split\na,validation\nb,TRAIN\n")
    assert read_splits_table(str(path)) == {"a": "val", "b": "train"}


def test_splits_job_writes_percepianos_three_works(percepiano_dir, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "jobs" / "splits.py"), "--input", str(percepiano_dir),
                             "--protocol", "work", "--out", str(tmp_path / "work")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    tests = []
    for k in range(3):
        splits = read_splits_table(str(tmp_path / "work" / f"fold{k}.csv"))
        assert len(splits) == 1085
        works = {rid[:len("Schubert_D960_mvN")] if rid.startswith("Schubert") else "Beethoven_WoO80"
                 for rid, s in splits.items() if s == "test"}
        tests.append(works)
        assert f"fold{k}.csv" in result.stdout
    assert sorted(len(w) for w in tests) == [1, 1, 1]
    assert {w for ws in tests for w in ws} == {"Beethoven_WoO80", "Schubert_D960_mv2", "Schubert_D960_mv3"}


def test_training_selects_by_the_splits_table_and_counts_what_it_leaves_out(tmp_path):
    from pipelines.training.run import select_rows, selection_line

    meta = pa.table({"recording_id": ["a", "a", "b", "c", "d"], "split": ["test"] * 5,
                     "augment": ["", "noise", "", "", ""], "status": ["ok"] * 5,
                     "labels_json": ['{"tone": 50}'] * 4 + ["{}"], "pseudo_json": ["{}"] * 5})
    uri = str(tmp_path / "fold.csv")
    write_splits_table({"a": "train", "b": "val", "c": "test", "d": "train"}, uri)
    splits = read_splits_table(uri)
    selection = {"stage": "expert", "names": ["tone"], "labels_lookup": None, "splits": splits}
    train = select_rows(meta, split="train", originals_only=True, **selection)
    val = select_rows(meta, split="val", originals_only=True, **selection)
    assert train.column("recording_id").to_pylist() == ["a"] and val.column("recording_id").to_pylist() == ["b"]
    assert select_rows(meta, split="train", originals_only=False, **selection).num_rows == 2
    line = selection_line(apply_splits(meta, splits), 1, 1, "expert", False, augmented=False)
    assert line == ("training on 1 train / 1 val segments with expert labels; 1 segments without a target for "
                    "the expert stage left out; 1 augmented copies left out (train.augmented=false)")
