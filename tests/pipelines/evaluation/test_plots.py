"""Plots: PNG files of the stated pixel size at the requested paths, shape checks on their inputs."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from pipelines.evaluation import plots as P

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DPI = 100                                  # the plots' figures are drawn at 100 dots per inch


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk, after checking the signature."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_reliability_diagram_writes_a_png_and_creates_its_folder(tmp_path, labels_with_gaps):
    y_true, y_pred = labels_with_gaps(n=60, d=5)
    sigma = np.full_like(y_pred, 10.0)
    target = tmp_path / "rel" / "reliability.png"
    path = P.reliability_diagram(y_true, y_pred, sigma, target, [f"d{i}" for i in range(5)])
    assert path == target
    assert png_size(path) == (int(5.5 * DPI), int(5.0 * DPI))            # a 5.5 x 5 inch figure


@pytest.mark.parametrize("n_dims, grid", [(1, (1, 1)), (5, (3, 2)), (10, (4, 3))])
def test_scatter_plot_draws_a_grid_of_one_panel_per_dimension(tmp_path, labels_with_gaps, n_dims, grid):
    y_true, y_pred = labels_with_gaps(n=60, d=n_dims)
    names = [f"d{i}" for i in range(n_dims)]
    for sigma in (None, np.full_like(y_pred, 10.0)):
        path = P.scatter_plot(y_true, y_pred, names, tmp_path / "scatter.png", sigma=sigma)
        n_cols, n_rows = grid                                           # ceil(sqrt(D)) columns, 3 inches each
        assert png_size(path) == (3 * n_cols * DPI, 3 * n_rows * DPI)


def test_plots_reject_mismatched_shapes(tmp_path):
    y = np.zeros((4, 2))
    with pytest.raises(ValueError, match="sigma has shape"):
        P.reliability_diagram(y, y, np.zeros((4, 3)), tmp_path / "r.png")
    with pytest.raises(ValueError, match="y_pred has shape"):
        P.scatter_plot(y, np.zeros((3, 2)), None, tmp_path / "s.png")
    with pytest.raises(ValueError, match="dimension names"):
        P.scatter_plot(y, y, ["only_one"], tmp_path / "s.png")
    assert not list(tmp_path.iterdir())                                 # nothing written
