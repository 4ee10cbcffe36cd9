"""The interference heatmap is a valid ComfyUI IMAGE that shows the numbers."""

import math

import torch

from omg_core.ops.orthogonality import CrossTalkReport
from omg_core.render.heatmaps import crosstalk_image, heatmap
from omg_core.render.palette import scale_colour as colour


def _report(n=3):
    m = torch.tensor([[math.nan, 0.0, 1.0], [0.0, math.nan, 0.5], [1.0, 0.5, math.nan]])[:n, :n]
    return CrossTalkReport(["omgcat", "omgdog", "a_long_concept_name_here"][:n], m, 2 * m)


def test_crosstalk_image_is_a_float_image_batch_in_the_unit_range():
    img = crosstalk_image(_report())
    assert img.dtype == torch.float32 and img.ndim == 4 and img.shape[0] == 1 and img.shape[3] == 3
    assert img.shape[1] >= 200 and img.shape[2] >= 400
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0


def test_cells_are_coloured_by_value_and_the_diagonal_is_grey():
    im = heatmap(torch.tensor([[math.nan, 0.0], [1.0, math.nan]]), ["a", "b"], "t", vmax=1.0)
    px = im.load()
    cell, top = 64, 56
    left = next(x for x in range(im.width) if px[x, top + 3] != (255, 255, 255))  # first cell's left edge

    def corner(i, j):  # a pixel inside the cell away from its text
        return px[left + j * cell + 3, top + i * cell + 3]

    assert corner(0, 0) == (200, 200, 200)
    assert corner(0, 1) == colour(0.0, 1.0)
    assert corner(1, 0) == colour(1.0, 1.0)
    assert colour(0.0, 1.0) != colour(1.0, 1.0)


def test_heatmap_grows_with_the_number_of_concepts():
    small = heatmap(torch.zeros(2, 2), ["a", "b"], "t")
    large = heatmap(torch.zeros(12, 12), [f"c{i}" for i in range(12)], "t")
    assert large.height > small.height and large.width > small.width
