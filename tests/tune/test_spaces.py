"""Search spaces keyed by config paths, checked against the config before a sweep starts; the sweep's
summary, plot and best/ config as the other jobs read them. (The sweeps themselves: test_sweep.py.)"""
from __future__ import annotations

import math

import pytest

from model.errors import ConfigError
from pipelines.config import load_config
from tune.search import default_max_concurrent, metric_plot, pick_best, summary_table
from tune.spaces import apply_params, available_spaces, check_space, default_space_name, load_space, param_space


def test_named_spaces_load_and_fit_every_preset_they_serve():
    assert {"default", "lr", "mert"} <= set(available_spaces())
    for preset in ("tiny", "mert-v1-95m", "mert-v1-330m"):
        config = load_config(preset)
        params = load_space(default_space_name(config))
        check_space(params, config)
        assert {"train.lr_head", "model.fusion_dropout", "model.lstm_dropout", "model.head_dropout"} <= \
            {p.path for p in params}
    assert default_space_name(load_config("tiny")) == "default"
    assert default_space_name(load_config("mert-v1-95m")) == "mert"


def test_space_values_land_on_the_config_paths_they_name():
    config = load_config("tiny")
    resolved = apply_params(config.to_dict(), {"train.lr_head": 0.004, "model.lstm_dropout": 0.3,
                                               "train.batch_size": 16.0})
    assert resolved["train"]["lr_head"] == 0.004
    assert resolved["model"]["lstm_dropout"] == 0.3
    assert resolved["train"]["batch_size"] == 16 and isinstance(resolved["train"]["batch_size"], int)
    assert config.train.lr_head != 0.004            # the base config is left as it was


def test_tune_domains_sample_inside_the_declared_ranges():
    from ray.tune.search.sample import Categorical, Float, Integer

    space = param_space(load_space({"train.lr_head": {"loguniform": [1e-4, 1e-2]},
                                    "model.head_dropout": {"uniform": [0.0, 0.4]},
                                    "train.batch_size": {"choice": [4, 8]},
                                    "train.grad_accum_steps": {"randint": [1, 4]}}))
    assert isinstance(space["train.lr_head"], Float) and isinstance(space["train.batch_size"], Categorical)
    assert isinstance(space["train.grad_accum_steps"], Integer)
    for _ in range(50):
        assert 1e-4 <= space["train.lr_head"].sample() <= 1e-2
        assert 0.0 <= space["model.head_dropout"].sample() <= 0.4
        assert 1 <= space["train.grad_accum_steps"].sample() < 4


@pytest.mark.parametrize("space, message", [
    ({"train.lr_hed": {"loguniform": [1e-4, 1e-2]}}, "lr_hed"),                 # a typo in the key
    ({"lr_head": {"loguniform": [1e-4, 1e-2]}}, "not a config path"),
    ({"train.lr_head": {"loguniform": [0.0, 1e-2]}}, "low > 0"),
    ({"train.lr_head": {"uniform": [0.01, 0.001]}}, "low < high"),
    ({"train.lr_head": {"gaussian": [0.0, 1.0]}}, "kinds"),
    ({"train.lr_head": {"uniform": ["a", "b"]}}, "numbers"),
    ({"model.head_dropout": {"uniform": [0.0, 1.5]}}, "head_dropout"),          # outside the config's range
    ({"train.batch_size": {"choice": [8, 0]}}, "batch_size"),
    ({}, "non-empty"),
])
def test_a_bad_space_fails_in_one_line_naming_the_key(space, message):
    with pytest.raises(ConfigError) as info:
        check_space(load_space(space), load_config("tiny"))
    text = str(info.value)
    assert message in text and "\n" not in text


def test_unknown_space_name_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="default"):
        load_space("nonesuch")
    bad = tmp_path / "space.yaml"
    bad.write_text("train.lr_head: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_space(str(bad))
    good = tmp_path / "mine.yaml"
    good.write_text("train.lr_head: {loguniform: [1.0e-4, 1.0e-2]}\n")
    assert [p.path for p in load_space(str(good))] == ["train.lr_head"]


def test_concurrency_leaves_room_for_the_data_tasks_that_feed_each_trial():
    tiny = load_config("tiny")                              # 2 workers x 0.5 CPU
    assert default_max_concurrent(tiny, {"CPU": 2.0}) == 1      # this machine: one trial at a time
    assert default_max_concurrent(tiny, {"CPU": 16.0}) == 8
    gpu = load_config("mert-v1-95m", ["train.num_workers=2"])
    assert default_max_concurrent(gpu, {"CPU": 64.0, "GPU": 8.0}) == 4
    assert default_max_concurrent(gpu, {"CPU": 64.0, "GPU": 1.0}) == 1


def _rows():
    return [
        {"trial": "a", "train.lr_head": 1e-3, "val_loss": 0.5, "best_epoch": 3, "epochs_run": 3,
         "status": "completed", "checkpoints": ["/x/a3"], "error": ""},
        {"trial": "b", "train.lr_head": 8e-3, "val_loss": 0.9, "best_epoch": 1, "epochs_run": 1,
         "status": "stopped by ASHA", "checkpoints": ["/x/b1"], "error": ""},
        {"trial": "c", "train.lr_head": 3e-3, "val_loss": math.nan, "best_epoch": 0, "epochs_run": 0,
         "status": "error", "checkpoints": [], "error": "boom"},
    ]


def test_summary_table_and_plot_cover_every_trial():
    summary = {"metric": "val_loss", "rows": _rows(), "space": ["train.lr_head"]}
    table = summary_table(summary)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["trial", "lr_head", "val_loss"]
    assert len(lines) == 4 and "stopped by ASHA" in table and "error" in lines[3]
    png = metric_plot(summary["rows"], "train.lr_head", "val_loss")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert pick_best(summary["rows"], "min")["trial"] == "a"


def test_best_config_directory_is_taken_by_config_loading(tmp_path):
    """jobs/train.py --config <sweep>/best reads best/config.yaml (a resolved config)."""
    config = load_config("tiny")
    resolved = load_config(None, [], extra=apply_params(config.to_dict(), {"train.lr_head": 0.0042}))
    best = tmp_path / "best"
    best.mkdir()
    (best / "config.yaml").write_text(resolved.to_yaml())
    again = load_config(str(best), ["train.epochs=2"])
    assert again.train.lr_head == 0.0042 and again.train.epochs == 2
    assert again.model == resolved.model
    assert load_config(str(best / "config.yaml")).train.lr_head == 0.0042


def test_best_config_on_s3_is_taken_by_config_loading(s3_bucket):
    from pipelines.io import storage

    resolved = load_config("tiny", ["train.lr_head=0.0042"])
    storage.write_text(f"{s3_bucket}/sweep/best/config.yaml", resolved.to_yaml())
    assert load_config(f"{s3_bucket}/sweep/best").train.lr_head == 0.0042
    with pytest.raises(ConfigError, match="no such YAML"):
        load_config(f"{s3_bucket}/nothing/here")
