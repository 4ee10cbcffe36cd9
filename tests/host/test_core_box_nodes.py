"""OMG Regions and ComfyUI's core box types (BOUNDING_BOX, ComfyUI 0.33 and
later), through the real executor: boxes from a core node become regions, and
the regions' boxes go back out to a core node that draws them. On a host
without the types the node's schema simply lacks them (checked here too)."""

import pytest


def _has_core_boxes(object_info) -> bool:
    return "BOUNDING_BOX" in {t for info in object_info.values() for t in info.get("output", [])}


def test_the_schema_offers_core_boxes_exactly_where_the_host_has_them(object_info):
    info = object_info["OMGRegions"]
    has = _has_core_boxes({k: v for k, v in object_info.items() if k != "OMGRegions"})
    assert ("detected_boxes" in info["input"].get("optional", {})) == has
    assert ("BOUNDING_BOX" in info["output"]) == has


def test_core_boxes_become_regions_and_go_back_out(host, object_info):
    if not _has_core_boxes(object_info):
        pytest.skip("this ComfyUI has no core BOUNDING_BOX type (0.33 and later have it)")
    prompt = {
        "1": {"class_type": "PrimitiveBoundingBox", "inputs": {"x": 64, "y": 32, "width": 96, "height": 128}},
        "2": {
            "class_type": "OMGRegions",
            "inputs": {
                "width": 256,
                "height": 256,
                "boxes": '{"version": 1, "boxes": [{"x0": 0.0, "y0": 0.0, "x1": 0.25, "y1": 0.25}]}',
                "region_prompts": "a drawn box\na face of omgcat",
                "detected_boxes": ["1", 0],
            },
        },
        "3": {"class_type": "DrawBBoxes", "inputs": {"bboxes": ["2", 2]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    host.run(prompt)
    spec, _preview, boxes = host.node_outputs("2")
    spec, boxes = spec[0], boxes[0]
    assert [r.prompt for r in spec.regions] == ["a drawn box", "a face of omgcat"]
    assert spec.regions[1].box == (0.25, 0.125, 0.625, 0.625)
    assert boxes == [
        [
            {"x": 0, "y": 0, "width": 64, "height": 64, "label": "a drawn box"},
            {"x": 64, "y": 32, "width": 96, "height": 128, "label": "a face of omgcat"},
        ]
    ]
    (drawn,) = host.node_outputs("3")[0]
    # Draw BBoxes sized its canvas from the boxes it was given: they reach 160 × 160 px.
    assert tuple(drawn.shape) == (1, 160, 160, 3)
    assert float(drawn.max()) > 0
