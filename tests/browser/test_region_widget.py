"""The region-box widget in a real browser against a real ComfyUI server.

The boxes a user draws must be the boxes the backend receives: every test here
edits with the mouse or keyboard and then reads the node's ``boxes`` widget,
the API prompt the frontend builds, or the prompt the server executed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from comfy_page import VIEWPORT, ComfyPage, RegionEditor

import comfy_host

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / ".cache" / "screenshots"
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
CORE_BOX_WORKFLOWS = sorted((REPO / "workflows" / "core_boxes").glob("*.json"))
DEMO = "omg_two_concepts_regions"
GRID = 8


@pytest.fixture(params=["litegraph", "vue"])
def ui(request, chromium, comfy_server):
    comfy = ComfyPage(chromium, comfy_server, vue_nodes=request.param == "vue", viewport=VIEWPORT)
    comfy.mode = request.param
    try:
        yield comfy.open()
    finally:
        comfy.close()


@pytest.fixture(scope="module")
def litegraph_ui(chromium, comfy_server):
    comfy = ComfyPage(chromium, comfy_server, vue_nodes=False, viewport=VIEWPORT)
    try:
        yield comfy.open()
    finally:
        comfy.close()


def on_grid(v: float, size: int) -> bool:
    return abs(v * size / GRID - round(v * size / GRID)) < 1e-6


def close(a: float, b: float, size: int) -> bool:
    """Within one latent cell (the mouse lands on screen pixels, the value snaps)."""
    return abs(a - b) * size <= GRID + 1e-6


def test_editing_boxes_with_the_mouse_reaches_the_sampler_unchanged(ui, comfy_server, tmp_path):
    assert ui.log.pack_errors() == [], "the pack's scripts logged errors on load"

    templates = ui.templates()
    assert DEMO in templates.get(comfy_host.PACK_NAME, []), templates
    ui.load_template(comfy_host.PACK_NAME, DEMO)
    (rid,) = ui.node_ids("OMGRegions")
    # The demo saves the generated image and a picture of the attention maps;
    # the image is the one this test waits for.
    save_id = ui.js(
        "() => app.graph.nodes.find((n) => n.comfyClass === 'SaveImage' && "
        "n.widgets.find((w) => w.name === 'filename_prefix').value === 'omg_two_concepts').id"
    )
    ui.show_node(rid)
    ed = RegionEditor(ui, rid)
    W, H = ed.image_size()
    before = ed.boxes()
    assert len(before) == 2

    # Move box 1 right and down by two latent cells: it snaps, keeps its size.
    b0 = before[0]
    cx, cy = (b0["x0"] + b0["x1"]) / 2 * W, (b0["y0"] + b0["y1"]) / 2 * H
    ed.drag((cx, cy), (cx + 2 * GRID, cy + GRID))
    moved = ed.boxes()[0]
    assert close(moved["x0"], b0["x0"] + 2 * GRID / W, W) and on_grid(moved["x0"], W)
    assert close(moved["y0"], b0["y0"] + GRID / H, H) and on_grid(moved["y0"], H)
    assert moved["x1"] - moved["x0"] == pytest.approx(b0["x1"] - b0["x0"], abs=1e-5)

    # Select box 2 with a click, then pull its bottom-right handle up to mid-height.
    b1 = ed.boxes()[1]
    ed.click((b1["x0"] + b1["x1"]) / 2 * W, (b1["y0"] + b1["y1"]) / 2 * H)
    assert ed.boxes()[1] == b1, "a click must select, not change, a box"
    ed.drag((b1["x1"] * W, b1["y1"] * H), (b1["x1"] * W, 0.5 * H))
    resized = ed.boxes()[1]
    assert resized["y1"] == pytest.approx(0.5, abs=GRID / H) and on_grid(resized["y1"], H)
    assert (resized["x0"], resized["y0"]) == (b1["x0"], b1["y0"])

    # Draw a third box in the space freed below box 2.
    start, end = (0.7, 0.62), (0.95, 0.92)
    assert not any(b["x0"] <= start[0] <= b["x1"] and b["y0"] <= start[1] <= b["y1"] for b in ed.boxes())
    ed.drag((start[0] * W, start[1] * H), (end[0] * W, end[1] * H))
    boxes = ed.boxes()
    assert len(boxes) == 3
    new = boxes[2]
    for key, want, size in (("x0", start[0], W), ("y0", start[1], H), ("x1", end[0], W), ("y1", end[1], H)):
        assert close(new[key], want, size) and on_grid(new[key], size), (key, new)

    # Delete it with the keyboard, then undo brings it back (and the editor shows it).
    ui.page.keyboard.press("Delete")
    assert len(ed.boxes()) == 2
    assert ui.node_ids("OMGRegions") == [rid], "Delete removed the node instead of the box"
    ui.page.keyboard.press("Control+z")
    ui.page.wait_for_function(
        "(id) => JSON.parse(app.graph.getNodeById(id).widgets.find((w) => w.name === 'boxes').value).boxes.length === 3",
        arg=rid,
    )
    ui.page.wait_for_function(
        "() => [...document.querySelectorAll('.omg-regions')].some((e) => e.isConnected && e.offsetParent && e.dataset.boxCount === '3')"
    )
    value = ui.widget_value(rid, "boxes")
    assert json.loads(value)["boxes"] == boxes

    # The editor adds nothing of its own to the saved workflow.
    saved = ui.serialised_node(rid)
    schema_widgets = [
        name for name, _ in comfy_host._widget_inputs(comfy_server.get("/object_info/OMGRegions")["OMGRegions"])
    ]
    assert len(saved["widgets_values"]) == len(schema_widgets)
    assert saved["widgets_values"][schema_widgets.index("boxes")] == value

    # Box 3 needs its own prompt line; then the frontend's API prompt carries the value as is.
    prompts = ui.widget_value(rid, "region_prompts").rstrip("\n")
    ui.set_widget_value(rid, "region_prompts", prompts + "\na photo of omgcat cat on a mat")
    assert ui.api_prompt()[str(rid)]["inputs"]["boxes"] == value

    prompt_id = ui.queue()
    entry = ui.wait_for_history(prompt_id)
    executed = entry["prompt"][2]
    assert executed[str(rid)]["inputs"]["boxes"] == value
    assert any(o.get("images") for o in entry["outputs"].values())
    shown = [rid, save_id, *ui.node_ids("KSampler"), *ui.node_ids("OMGApplyRegionalAttention")]
    ui.fit_view(shown, max_scale=0.85)
    ui.wait_for_node_image(save_id)
    frontend = ui.js("() => window.__COMFYUI_FRONTEND_VERSION__ ?? 'unknown'")
    shot = tmp_path / f"omg_regions_{ui.mode}_frontend-{frontend}.png"
    ui.screenshot(shot)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, SCREENSHOTS / shot.name)
    assert ui.log.pack_errors() == []


def test_invalid_boxes_show_an_error_and_the_editor_recovers(litegraph_ui):
    ui = litegraph_ui
    rid = ui.js(
        "() => { app.graph.clear(); const n = LiteGraph.createNode('OMGRegions'); n.pos = [200, 200];"
        " app.graph.add(n); return n.id; }"
    )
    ui.show_node(rid)
    ed = RegionEditor(ui, rid)
    ui.set_widget_value(rid, "boxes", '{"version": 1, "boxes": [{"x0": 0.5}]')
    ui.page.wait_for_selector(".omg-regions[data-state=error]")
    assert "not valid JSON" in ed.error_text()
    assert not ui.page.locator("canvas[data-omg-regions=canvas]").first.is_visible()

    ui.set_widget_value(rid, "boxes", '{"version": 1, "boxes": [{"x0": 0.5, "y0": 0.1, "x1": 0.2, "y1": 0.9}]}')
    ui.page.wait_for_function(
        "() => document.querySelector('.omg-regions-error-text')?.textContent.includes('x0 < x1')"
    )
    ui.page.get_by_role("button", name="Clear all boxes").click()
    ui.page.wait_for_selector(".omg-regions[data-state=ok]")
    assert json.loads(ui.widget_value(rid, "boxes")) == {"version": 1, "boxes": []}
    assert ui.log.pack_errors() == []


TWO_BOXES = json.dumps(
    {
        "version": 1,
        "boxes": [{"x0": 0.05, "y0": 0.1, "x1": 0.45, "y1": 0.9}, {"x0": 0.55, "y0": 0.1, "x1": 0.95, "y1": 0.9}],
    }
)


def test_numeric_fields_snap_toggle_and_copy_paste_keep_boxes(litegraph_ui):
    ui = litegraph_ui
    rid = ui.js(
        "() => { app.graph.clear(); const n = LiteGraph.createNode('OMGRegions'); n.pos = [200, 200];"
        " app.graph.add(n); return n.id; }"
    )
    ui.set_widget_value(rid, "width", 256)
    ui.set_widget_value(rid, "height", 128)
    # Frontend 1.4x keeps widget values by node id across app.graph.clear(): a new node with a
    # reused id starts with the removed one's boxes, so this test sets its own.
    ui.set_widget_value(rid, "boxes", TWO_BOXES)
    ui.show_node(rid)
    ed = RegionEditor(ui, rid)
    first = ed.boxes()[0]
    # Select box 1 and type exact pixel values; other keys of the box are kept.
    ui.set_widget_value(
        rid, "boxes", json.dumps({"version": 1, "boxes": [{**first, "weight": 1.5, "label": "cat"}, ed.boxes()[1]]})
    )
    ui.page.wait_for_timeout(300)
    ed.click((first["x0"] + first["x1"]) / 2 * 256, (first["y0"] + first["y1"]) / 2 * 128)
    for field, value in (("x", "10"), ("y", "20"), ("w", "100"), ("h", "50")):
        box = ui.page.locator(f".omg-regions-bar input[data-field={field}]").first
        box.fill(value)
        box.press("Enter")
    got = ed.boxes()[0]
    assert got == {"x0": 10 / 256, "y0": 20 / 128, "x1": 110 / 256, "y1": 70 / 128, "weight": 1.5, "label": "cat"}

    # The selected box's mixing numbers: shown with their defaults, stored only when they differ,
    # out-of-range input refused; what the editor writes the backend reads as typed.
    def param(name: str):
        return ui.page.locator(f".omg-regions-bar input[data-param={name}]").first

    assert (param("ratio").input_value(), param("weight").input_value(), param("feather").input_value()) == (
        "1",
        "1.5",
        "0",
    )
    for name, value in (("ratio", "0.6"), ("weight", "1"), ("feather", "4"), ("ratio", "1.5")):
        param(name).fill(value)
        param(name).press("Enter")
    got = ed.boxes()[0]
    assert {k: got.get(k) for k in ("ratio", "weight", "feather")} == {"ratio": 0.6, "weight": None, "feather": 4}
    assert param("ratio").input_value() == "0.6"
    from omg_core.ops.regions import regions_from_widgets

    (region, _) = regions_from_widgets(256, 128, ui.widget_value(rid, "boxes"), "a cat\na dog").regions
    assert (region.ratio, region.weight, region.feather) == (0.6, 1.0, 4 / 128)

    # Without snapping, a drag lands off the 8 px grid.
    ui.page.locator(".omg-regions-bar input[type=checkbox]").first.uncheck()
    ed.drag((60, 45), (63, 48))
    off = ed.boxes()[0]
    assert not on_grid(off["x0"], 256) or not on_grid(off["y0"], 128)
    assert ui.serialised_node(rid)["properties"].get("omg_snap_to_grid") is False

    # Copy and paste the node: the copy carries the same boxes.
    value = ui.widget_value(rid, "boxes")
    ui.js(
        "(id) => { const c = app.canvas; c.deselectAll?.(); c.selectNode(app.graph.getNodeById(id));"
        " c.copyToClipboard(); c.pasteFromClipboard(); }",
        rid,
    )
    ids = ui.node_ids("OMGRegions")
    assert len(ids) == 2
    (copy,) = [i for i in ids if i != rid]
    assert ui.widget_value(copy, "boxes") == value
    assert ui.log.pack_errors() == []


BOX_SAMPLES = [
    "",
    "[]",
    '{"boxes": []}',
    '{"version": 2, "boxes": []}',
    '{"version": 1, "boxes": [{"x0": 0, "y0": 0, "x1": 1, "y1": 1}]}',
    '{"version": 1, "boxes": [{"x0": 0.6, "y0": 0, "x1": 0.4, "y1": 1}]}',
    '{"version": 1, "boxes": [{"x0": -0.5, "y0": 0, "x1": 0.4, "y1": 1}]}',
    '{"version": 1, "boxes": [{"x0": 0, "y0": 0, "x1": 1.0000001, "y1": 1}]}',
    '{"version": 1, "boxes": [{"x0": 0, "y0": 0, "x1": 1}]}',
    '{"version": 1, "boxes": [{"x0": "0", "y0": 0, "x1": 1, "y1": 1}]}',
    '{"version": 1, "boxes": [{"x0": 0, "y0": 0, "x1": 1, "y1": 1, "colour": "red"}]}',
    '{"version": 1, "boxes": [{"x0": 0, "y0": 0, "x1": 1, "y1": 1, "weight": -1}]}',
    '{"version": 1, "boxes": [{"x0": 0, "y0": 0, "x1": 1, "y1": 1, "weight": 1e39}]}',
    '{"version": 1, "boxes": [{"x0": 0, "y0": 0, "x1": 1, "y1": 1, "weight": 10, "feather": 1024}]}',
    '{"version": 1, "boxes": [{"x0": 0, "y0": 0, "x1": 1, "y1": 1, "feather": 5000}]}',
    '{"version": 1, "boxes": [{"x0": 0, "y0": 0, "x1": 1, "y1": 1, "ratio": 1.5}]}',
    '{"version": 1, "boxes": [{"x0": 0, "y0": 0, "x1": 1, "y1": 1, "feather": 4, "label": "cat", "concept": "cat"}]}',
    '{"version": 1, "boxes": [{"x0": 0, "y0": 0, "x1": 1, "y1": 1, "label": 3}]}',
    json.dumps({"version": 1, "boxes": [{"x0": 0, "y0": 0, "x1": 0.5, "y1": 0.5}] * 16}),
    json.dumps({"version": 1, "boxes": [{"x0": 0, "y0": 0, "x1": 0.5, "y1": 0.5}] * 17}),
    '{"version": 1, "boxes": {"x0": 0}}',
    "not json",
]


def test_editor_accepts_exactly_the_box_values_the_backend_accepts(litegraph_ui):
    from omg_core.ops.regions import parse_boxes

    verdicts = litegraph_ui.js(
        "async (samples) => { const m = await import('/extensions/omg/omg_regions/boxes.js');"
        " return samples.map((s) => m.parseBoxes(s).ok); }",
        BOX_SAMPLES,
    )
    for text, editor_ok in zip(BOX_SAMPLES, verdicts):
        try:
            parse_boxes(text, 512, 512)
            backend_ok = True
        except ValueError:
            backend_ok = False
        assert editor_ok == backend_ok, text


def test_example_workflows_load_in_the_frontend_as_saved(litegraph_ui):
    """Every template loads with all its node types known, and the frontend's own
    serialisation gives back the widget values in the order the file has them."""
    ui = litegraph_ui
    names = ui.templates().get(comfy_host.PACK_NAME, [])
    assert set(names) == {p.stem for p in WORKFLOWS}
    for name in names:
        ui.load_template(comfy_host.PACK_NAME, name)
        _assert_loaded_as_saved(ui, name, json.loads((REPO / "workflows" / f"{name}.json").read_text()))
    assert ui.log.pack_errors() == []


def test_core_box_workflows_load_where_the_host_has_the_core_box_nodes(litegraph_ui, comfy_server):
    generator = _generator()
    if not generator.has_core_boxes(comfy_server.get("/object_info")):
        pytest.skip("this ComfyUI has no core box nodes (0.33 and later have them)")
    ui = litegraph_ui
    for path in CORE_BOX_WORKFLOWS:
        ui.load_workflow(json.loads(path.read_text()))
        _assert_loaded_as_saved(ui, path.stem, json.loads(path.read_text()))
    assert ui.log.pack_errors() == []


def _assert_loaded_as_saved(ui, name: str, workflow: dict) -> None:
    """Every node's type is known and the frontend's own serialisation gives back the saved widget values."""
    # Node ids are numbers in frontend 1.32 and strings in 1.5x: compare them as text.
    saved = {str(n["id"]): n for n in workflow["nodes"]}
    now = ui.js(
        "() => app.graph.nodes.map((n) => ({id: n.id, type: n.type, known: n.constructor !== LiteGraph.LGraphNode,"
        " values: n.serialize().widgets_values}))"
    )
    assert {str(n["id"]) for n in now} == set(saved), name
    for node in now:
        assert node["known"] and not node["type"].startswith("Missing"), (name, node["type"])
        # A node without widgets serialises no widgets_values in 1.4x and later, [] before.
        assert (node["values"] or []) == saved[str(node["id"])]["widgets_values"], (name, node["type"])


def _generator():
    spec = importlib.util.spec_from_file_location("omg_workflow_generator", REPO / "workflows" / "generate.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    return generator


def test_example_workflows_are_up_to_date_with_the_node_schemas(comfy_server, tmp_path):
    generator = _generator()
    info = comfy_server.get("/object_info")
    version = comfy_server.get("/system_stats")["system"]["comfyui_version"]
    if generator.has_core_boxes(info):
        # A host with the core box types writes the core-box examples; the templates come from the pinned host.
        written, folder, command = (
            generator.write_all(info, tmp_path, generator.CORE_BOX_WORKFLOWS),
            generator.CORE_BOX_DIR,
            "OMG_COMFYUI_DIR=.comfyui-0.33 .venv-0.33/bin/python workflows/generate.py",
        )
        assert {p.name for p in written} == {p.name for p in CORE_BOX_WORKFLOWS}
    elif version != generator.PINNED_COMFYUI:
        pytest.skip(f"the templates are written from ComfyUI {generator.PINNED_COMFYUI}'s schemas; this is {version}")
    else:
        written, folder, command = (
            generator.write_all(info, tmp_path),
            REPO / "workflows",
            ".venv/bin/python workflows/generate.py",
        )
        assert {p.name for p in written} == {p.name for p in WORKFLOWS}
    for path in written:
        assert json.loads(path.read_text()) == json.loads((folder / path.name).read_text()), (
            f"{path.name} is stale: run {command}"
        )
