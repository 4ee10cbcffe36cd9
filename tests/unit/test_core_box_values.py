"""Regions from ComfyUI's core BOUNDING_BOX values (pixels, as detector nodes
give them) and back: the pure half of the core box types (the host test feeds
real core nodes)."""

import pytest

from omg_core.ops.regions import detected_box_list, pixel_boxes, regions_from_widgets

EMPTY = '{"version": 1, "boxes": []}'
ONE = '{"version": 1, "boxes": [{"x0": 0.0, "y0": 0.0, "x1": 0.5, "y1": 0.5}]}'


def test_every_shape_a_core_node_gives_is_read():
    box = {"x": 10, "y": 20, "width": 30, "height": 40}
    assert detected_box_list(None) == []
    assert detected_box_list(box) == [box]  # Bounding Box primitive
    assert detected_box_list([box, box]) == [box, box]
    assert detected_box_list([[box], [box, box]]) == [box]  # a detector's batch: the first image's boxes
    with pytest.raises(ValueError, match="core BOUNDING_BOX"):
        detected_box_list("10,20,30,40")


def test_detected_boxes_follow_the_drawn_ones_and_the_last_line_serves_the_rest():
    faces = [
        [{"x": 0, "y": 0, "width": 64, "height": 64, "label": "face"}, {"x": 128, "y": 64, "width": 64, "height": 128}]
    ]
    spec = regions_from_widgets(256, 256, ONE, "a drawn box\na face of omgcat", "drawn negative\nblurry", None, faces)
    assert [r.prompt for r in spec.regions] == ["a drawn box", "a face of omgcat", "a face of omgcat"]
    assert [r.negative_prompt for r in spec.regions] == ["drawn negative", "blurry", "blurry"]
    assert spec.regions[1].box == (0.0, 0.0, 0.25, 0.25) and spec.regions[1].label == "face"
    assert spec.regions[2].box == (0.5, 0.25, 0.75, 0.75)


def test_boxes_round_trip_through_the_core_pixel_format():
    faces = [[{"x": 16, "y": 32, "width": 64, "height": 96}]]
    spec = regions_from_widgets(256, 128, EMPTY, "omgcat", "", None, faces)
    out = pixel_boxes(spec)
    assert out == [[{"x": 16, "y": 32, "width": 64, "height": 96, "label": "omgcat"}]]
    again = regions_from_widgets(256, 128, EMPTY, "omgcat", "", None, out)
    assert again.regions[0].box == spec.regions[0].box


def test_boxes_partly_outside_are_clipped_and_wholly_outside_refused():
    spec = regions_from_widgets(100, 100, EMPTY, "p", "", None, [{"x": -20, "y": 50, "width": 40, "height": 80}])
    assert spec.regions[0].box == (0.0, 0.5, 0.2, 1.0)
    with pytest.raises(ValueError, match="does not overlap the 100×100 image"):
        regions_from_widgets(100, 100, EMPTY, "p", "", None, [{"x": 200, "y": 0, "width": 40, "height": 40}])


def test_detected_boxes_without_a_prompt_line_or_beyond_the_limit_are_refused():
    box = {"x": 0, "y": 0, "width": 8, "height": 8}
    with pytest.raises(ValueError, match="no prompt line for them"):
        regions_from_widgets(64, 64, ONE, "only the drawn box's line", "", None, [box])
    with pytest.raises(ValueError, match="max_detections"):
        regions_from_widgets(64, 64, EMPTY, "p", "", None, [box] * 17)
    with pytest.raises(ValueError, match="x must be a number"):
        regions_from_widgets(64, 64, EMPTY, "p", "", None, [{"x": "left", "y": 0, "width": 8, "height": 8}])


def test_no_detections_leave_the_drawn_regions_as_they_are():
    spec = regions_from_widgets(64, 64, ONE, "drawn", "", None, [[]])
    assert [r.prompt for r in spec.regions] == ["drawn"]
