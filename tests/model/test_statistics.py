"""The input-statistics branch: global descriptors read from the note inputs (model/statistics.py)."""
import math

import torch

from model.builder import build_model
from model.schema import load_schema
from model.statistics import n_statistics, note_statistics
from pipelines.config import load_config
from pipelines.constants import N_PERF_ATTRS, OCTUPLE_N_SPECIAL, OCTUPLE_TS_DENOMINATORS

TS_4_4 = (4 - 1) * len(OCTUPLE_TS_DENOMINATORS) + OCTUPLE_TS_DENOMINATORS.index(4)


def _window(n_quarters: int, seconds_per_quarter: float, velocity: float, pad_to: int):
    """A played 4/4 window: one quarter note per beat at the given tempo, plus padding."""
    notes = torch.zeros(pad_to, 8, dtype=torch.long)
    attrs = torch.zeros(pad_to, N_PERF_ATTRS)
    times = torch.zeros(pad_to)
    for i in range(n_quarters):
        bar, beat = divmod(i, 4)
        notes[i] = torch.tensor([2, bar, beat * 24, 40, 24, 64, 0, TS_4_4]) + OCTUPLE_N_SPECIAL
        attrs[i, 0] = 1.0                 # played
        attrs[i, 3] = velocity
        times[i] = i * seconds_per_quarter
    return notes, attrs, times


def test_statistics_recover_tempo_density_and_loudness_and_ignore_padding():
    a = _window(12, 0.5, 0.4, pad_to=20)
    b = _window(8, 0.25, 0.8, pad_to=20)
    notes, attrs, times = (torch.stack(x) for x in zip(a, b))
    stats = note_statistics(notes, attrs, times, torch.tensor([12, 8]), N_PERF_ATTRS)
    assert stats.shape == (2, n_statistics(N_PERF_ATTRS))
    spq = torch.exp(stats[:, 2 * N_PERF_ATTRS + 1])
    assert torch.allclose(spq, torch.tensor([0.5, 0.25]), atol=1e-4)
    density = torch.exp(stats[:, 2 * N_PERF_ATTRS])
    assert torch.allclose(density, torch.tensor([13 / 6.5, 9 / 2.75]), atol=1e-4)
    assert torch.allclose(stats[:, 3], torch.tensor([0.4, 0.8]))           # velocity mean, padding left out
    assert torch.allclose(stats[:, N_PERF_ATTRS + 3], torch.zeros(2), atol=1e-6)   # its spread


def test_a_window_without_notes_gives_zeros():
    notes, attrs, times = (x.unsqueeze(0) for x in _window(0, 0.5, 0.4, pad_to=4))
    stats = note_statistics(notes, attrs, times, torch.tensor([0]), N_PERF_ATTRS)
    assert torch.count_nonzero(stats) == 0 and torch.isfinite(stats).all()


def test_the_model_reads_the_statistics_only_when_asked():
    schema = load_schema("percepiano19")
    notes, attrs, times = (torch.stack(x) for x in zip(_window(12, 0.5, 0.4, 16), _window(12, 0.25, 0.8, 16)))
    batch = {"notes": notes, "note_attrs": attrs, "note_times": times, "note_lengths": torch.tensor([12, 12])}
    plain = build_model(load_config("percepiano", ["model.input_statistics=false"]).model, schema)
    assert plain.input_stats is None
    torch.manual_seed(0)
    model = build_model(load_config("percepiano", ["model.input_statistics=true"]).model, schema).eval()
    assert any(name.startswith("input_stats.") for name, _ in model.named_parameters())
    with torch.no_grad():
        out = model(batch)
        for p in model.input_stats.parameters():
            p.zero_()
        without = model(batch)
    assert out.scores.shape == (2, len(schema)) and torch.isfinite(out.scores).all()
    assert not torch.allclose(out.scores, without.scores)      # the branch changes the prediction
    assert not math.isclose(float((out.scores[0] - out.scores[1]).abs().sum()),
                            float((without.scores[0] - without.scores[1]).abs().sum()))


def test_recording_statistics_are_the_mean_and_spread_of_the_window_statistics():
    """A recording's context: the mean and spread over its windows of each window's statistics; a loud and a
    soft window give a spread the windows themselves do not show; windows without notes are left out."""
    from model.statistics import n_recording_statistics, recording_statistics

    def context(*windows):
        notes, attrs, times = (torch.stack(x) for x in zip(*windows))
        lengths = torch.tensor([int((w[0][:, 0] > 0).sum()) for w in windows])
        return recording_statistics(notes, attrs, times, lengths, N_PERF_ATTRS)

    loud, soft, empty = _window(12, 0.5, 0.8, 12), _window(12, 0.5, 0.2, 12), _window(0, 0.5, 0.2, 12)
    stats = context(loud, soft, empty)
    size = n_statistics(N_PERF_ATTRS)
    assert stats.shape == (n_recording_statistics(N_PERF_ATTRS),) == (2 * size,)
    assert math.isclose(stats[3], 0.5, abs_tol=1e-5)                  # mean velocity over the windows
    assert math.isclose(stats[size + 3], 0.3, abs_tol=1e-5)           # its spread across them
    assert math.isclose(stats[N_PERF_ATTRS + 3], 0.0, abs_tol=1e-6)   # each window alone is level
    assert not context(loud)[size:].any()                             # one window: no spread
    assert not context(empty).any()


def test_the_model_reads_recording_statistics_only_when_asked_and_says_when_they_are_missing():
    import pytest

    from model.statistics import n_recording_statistics

    schema = load_schema("percepiano19")
    notes, attrs, times = (torch.stack(x) for x in zip(_window(12, 0.5, 0.4, 16), _window(12, 0.25, 0.8, 16)))
    batch = {"notes": notes, "note_attrs": attrs, "note_times": times, "note_lengths": torch.tensor([12, 12])}
    assert build_model(load_config("percepiano").model, schema).recording_stats is None
    torch.manual_seed(0)
    model = build_model(load_config("percepiano", ["model.recording_statistics=true"]).model, schema).eval()
    with pytest.raises(KeyError, match="recording_stats.*preprocess"):
        model(batch)
    context = torch.zeros(2, n_recording_statistics(N_PERF_ATTRS))
    context[1, 3] = 1.0
    with torch.no_grad():
        same = model({**batch, "recording_stats": torch.zeros_like(context)})
        other = model({**batch, "recording_stats": context})
    assert torch.allclose(same.scores[0], other.scores[0])             # each item reads its own context
    assert not torch.allclose(same.scores[1], other.scores[1])


def test_without_performance_attributes_the_model_ignores_them():
    """model.performance_attributes=false (the ablation): windows that differ only in their aligned attributes
    score the same; with them (the default) they do not."""
    schema = load_schema("percepiano19")
    notes, attrs, times = (torch.stack(x) for x in zip(_window(12, 0.5, 0.4, 16), _window(12, 0.5, 0.4, 16)))
    attrs[1, :, 4] += 0.5                                  # the second window: other timing against the score
    batch = {"notes": notes, "note_attrs": attrs, "note_times": times, "note_lengths": torch.tensor([12, 12])}
    for flag, same in (("true", False), ("false", True)):
        torch.manual_seed(0)
        model = build_model(load_config("percepiano", [f"model.performance_attributes={flag}"]).model, schema).eval()
        with torch.no_grad():
            out = model(batch).scores
        assert torch.allclose(out[0], out[1]) is same
    assert attrs[1, 0, 4] != attrs[0, 0, 4]                # the batch itself is left alone
