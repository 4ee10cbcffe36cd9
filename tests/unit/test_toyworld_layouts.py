"""The composition benchmark's layouts and how it reads a box: random
layouts keep the generator's rules, a user's file is checked, and each box
gets one outcome."""

import json

import numpy as np
import pytest

from omg_core.toyworld.layouts import MIN_GAP, SIDE_RANGE, apart, random_layouts, read_layouts
from omg_core.toyworld.outcomes import Blob, box_outcome, strays


def test_random_layouts_keep_the_generator_rules_and_follow_the_seed():
    layouts = random_layouts((2, 3, 4), 20, seed=7)
    assert [len(x) for x in layouts] == [2] * 20 + [3] * 20 + [4] * 20
    for layout in layouts:
        for i, (x0, y0, x1, y1) in enumerate(layout.boxes):
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            assert SIDE_RANGE[0] - 1e-3 <= x1 - x0 <= SIDE_RANGE[1] + 1e-3
            assert SIDE_RANGE[0] - 1e-3 <= y1 - y0 <= SIDE_RANGE[1] + 1e-3
            assert all(apart(layout.boxes[i], other, MIN_GAP - 1e-3) for other in layout.boxes[i + 1 :])
    assert random_layouts((2,), 3, seed=7) == random_layouts((2,), 3, seed=7)
    assert random_layouts((2,), 3, seed=7) != random_layouts((2,), 3, seed=8)


def test_a_layouts_file_is_read_and_bad_ones_are_refused(tmp_path):
    path = tmp_path / "layouts.json"
    path.write_text(json.dumps([[[0, 0, 0.4, 0.4], [0.6, 0.6, 1, 1]], [{"box": [0, 0, 0.5, 1], "concept": "house"}]]))
    first, second = read_layouts(path, ["house", "berry"])
    assert first.boxes == ((0.0, 0.0, 0.4, 0.4), (0.6, 0.6, 1.0, 1.0)) and first.concepts is None
    assert second.concepts == ("house",)
    for bad, message in (
        ([[[0, 0, 2, 1]]], "must lie in 0..1"),
        ([[{"box": [0, 0, 1, 1], "concept": "dragon"}]], "unknown concept"),
        ([[{"box": [0, 0, 0.5, 1], "concept": "house"}, [0.5, 0, 1, 1]]], "every box or of none"),
        ({"boxes": []}, "non-empty JSON list"),
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            read_layouts(path, ["house", "berry"])


def _blob(label, rows, cols, size=16):
    mask = np.zeros((size, size), dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return Blob((cols[0] / size, rows[0] / size, cols[1] / size, rows[1] / size), mask, label)


def test_each_box_gets_one_outcome_and_strays_lie_outside_every_box():
    box = (0.0, 0.0, 0.5, 0.5)
    spilled = _blob("house", (0, 8), (6, 14))  # a quarter of it inside the box
    assert box_outcome("house", "house", ["berry"], [], box) == "right"
    assert box_outcome("empty", "house", ["berry"], [spilled], box) == "spill"
    assert box_outcome("berry", "house", ["berry"], [], box) == "bleed"
    assert box_outcome("red circle", "house", ["berry"], [], box) == "base"
    assert box_outcome("empty", "house", ["berry"], [], box) == "empty"
    assert box_outcome("kite", "house", ["berry"], [], box) == "other"
    inside, outside = _blob("house", (1, 7), (1, 7)), _blob("red circle", (10, 15), (10, 15))
    assert strays([inside, outside, _blob("empty", (10, 15), (0, 4))], [box]) == 1
