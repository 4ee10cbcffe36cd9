"""The pack inside a real ComfyUI server: ``main.py`` on a loopback port."""

from __future__ import annotations

import json
from pathlib import Path

import demo_assets
import pytest

import comfy_host

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = comfy_host.prepare_base_directory(tmp_path_factory.mktemp("comfy-base"))
    demo_assets.ensure_demo_models(base / "models")
    host = comfy_host.ServerHost(base)
    host.start()
    yield host
    host.stop()


@pytest.fixture(scope="module")
def server_object_info(server):
    return server.get("/object_info")


def pack_node_ids(object_info: dict) -> set[str]:
    return {name for name, info in object_info.items() if info.get("python_module", "").endswith(comfy_host.PACK_NAME)}


def test_object_info_lists_every_pack_node(server_object_info, object_info):
    expected = pack_node_ids(object_info)
    assert expected, "the pack registered no nodes in-process"
    assert pack_node_ids(server_object_info) == expected
    for name in expected:
        info = server_object_info[name]
        assert info["category"].startswith("OMG"), name
        assert info["display_name"].startswith("OMG "), name


def test_web_directory_is_served(server):
    extensions = server.get("/extensions")
    assert any(e.startswith(f"/extensions/{comfy_host.PACK_NAME}/") for e in extensions)


def test_workflow_templates_lists_every_example(server):
    templates = server.get("/workflow_templates")
    listed = set(templates.get(comfy_host.PACK_NAME, []))
    assert listed == {p.stem for p in WORKFLOWS}


def test_there_are_example_workflows():
    assert any(p.name == "omg_two_concepts_regions.json" for p in WORKFLOWS)


@pytest.mark.parametrize("workflow_path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_runs_through_prompt_api(server, server_object_info, workflow_path):
    workflow = json.loads(workflow_path.read_text())
    prompt = comfy_host.workflow_to_api(workflow, server_object_info)
    entry = server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success"
    images = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    assert images, f"{workflow_path.name} produced no image"
    for img in images:
        assert img["type"] in ("output", "temp"), img
        path = server.base_dir / img["type"] / img.get("subfolder", "") / img["filename"]
        assert path.stat().st_size > 0


def test_demo_workflow_draws_each_concept_in_its_own_box(server, server_object_info):
    """What the README's demo command shows, read by the toy world's detector: each
    concept its region prompt names in that region's box. The workflow as saved, with
    its latent batch raised to 4 (seed 0): the benchmark's own rate for this pair and
    method was 5 of 8 with placement over 0.3 of the steps (the default now places over
    0.6, which the benchmark measures higher), so at least 2 of 4 must hold both."""
    import numpy as np
    import torch
    from PIL import Image

    from omg_core.toyworld.detector import load_detector

    workflow = json.loads((REPO / "workflows" / "omg_two_concepts_regions.json").read_text())
    prompt = comfy_host.workflow_to_api(workflow, server_object_info)
    (latent,) = [n for n in prompt.values() if n["class_type"] == "EmptyLatentImage"]
    latent["inputs"]["batch_size"] = 4
    entry = server.run_prompt(prompt)
    images = [
        img for out in entry["outputs"].values() for img in out.get("images", []) if "two_concepts" in img["filename"]
    ]
    assert len(images) == 4
    regions = next(n for n in workflow["nodes"] if n["type"] == "OMGRegions")
    boxes = [tuple(b[k] for k in ("x0", "y0", "x1", "y1")) for b in json.loads(regions["widgets_values"][2])["boxes"]]
    wanted = [line.removeprefix("a ") for line in regions["widgets_values"][3].splitlines()]
    assert len(wanted) == len(boxes) == 2 and set(wanted) <= {"target", "house", "kite", "berry"}, wanted
    detector, found = load_detector(), []
    for image in images:
        path = server.base_dir / "output" / image.get("subfolder", "") / image["filename"]
        pixels = np.array(Image.open(path).convert("RGB"))
        found.append(detector.classify(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255, boxes))
    assert sum(f == wanted for f in found) >= 2, found
