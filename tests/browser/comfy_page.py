"""The ComfyUI frontend in a Playwright page, as the widget tests use it.

Everything goes through what a user or an extension has: the page's mouse and
keyboard, ``window.app`` (the frontend's public ``app`` object), and the
server's HTTP API. Coordinates on the region editor are given in the image's
own pixels and mapped to the screen with the same letterboxing the widget uses
(the image area centred in the canvas, 10 px free on every side).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

PACK_URL = "/extensions/omg/"
EDITOR_PAD = 10  # keep equal to PAD in web/omg_regions/render.js
VIEWPORT = {"width": 1600, "height": 1000}


@dataclass
class ConsoleLog:
    entries: list[str] = field(default_factory=list)

    def pack_errors(self) -> list[str]:
        return [e for e in self.entries if e.startswith(("error", "pageerror", "http")) and PACK_URL in e]


class ComfyPage:
    def __init__(self, browser, server, vue_nodes: bool, viewport: dict):
        self.server = server
        server.post("/settings/Comfy.VueNodes.Enabled", vue_nodes)
        self.context = browser.new_context(viewport=viewport)
        self.page = self.context.new_page()
        self.log = ConsoleLog()
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda e: self.log.entries.append(f"pageerror: {e} {getattr(e, 'stack', '')}"))
        self.page.on(
            "response", lambda r: self.log.entries.append(f"http {r.status} {r.url}") if r.status >= 400 else None
        )
        self.page.on("requestfailed", lambda r: self.log.entries.append(f"http failed {r.url}"))

    def _on_console(self, msg) -> None:
        loc = msg.location or {}
        self.log.entries.append(f"{msg.type}: {msg.text} @ {loc.get('url', '')}")

    def open(self) -> ComfyPage:
        self.page.goto(self.server.url)
        self.page.wait_for_function("() => window.app?.graph && window.app?.canvas?.ds", timeout=60_000)
        # Extensions register during setup; give late script errors a moment to surface.
        self.page.wait_for_function("() => app.extensions.some((e) => e.name === 'omg.RegionBoxes')", timeout=30_000)
        self.page.wait_for_timeout(500)
        return self

    def close(self) -> None:
        self.context.close()

    def js(self, expr: str, arg=None):
        return self.page.evaluate(expr, arg)

    # ------------------------------------------------------------ workflows
    def templates(self) -> dict:
        return self.js("async () => (await fetch('/api/workflow_templates')).json()")

    def load_template(self, pack: str, name: str) -> None:
        self.js(
            """async ([pack, name]) => {
                const r = await fetch(`/api/workflow_templates/${pack}/${name}.json`);
                if (!r.ok) throw new Error(`template ${name}: HTTP ${r.status}`);
                await app.loadGraphData(await r.json());
            }""",
            [pack, name],
        )
        self.page.wait_for_timeout(300)

    def load_workflow(self, workflow: dict) -> None:
        """Load a workflow as opening its file does (for ones that are not templates)."""
        self.js("async (w) => { await app.loadGraphData(w); }", workflow)
        self.page.wait_for_timeout(300)

    def node_ids(self, comfy_class: str) -> list[int]:
        return self.js(
            "(cls) => app.graph.nodes.filter((n) => n.comfyClass === cls).map((n) => n.id)",
            comfy_class,
        )

    def widget_value(self, node_id: int, name: str):
        return self.js(
            "([id, name]) => app.graph.getNodeById(id).widgets.find((w) => w.name === name)?.value",
            [node_id, name],
        )

    def set_widget_value(self, node_id: int, name: str, value) -> None:
        """As a user edit does: value, then the widget's callback."""
        self.js(
            """([id, name, value]) => {
                const w = app.graph.getNodeById(id).widgets.find((w) => w.name === name);
                w.value = value;
                w.callback?.(value);
                app.canvas.setDirty(true, true);
            }""",
            [node_id, name, value],
        )

    def serialised_node(self, node_id: int) -> dict:
        return self.js("(id) => app.graph.getNodeById(id).serialize()", node_id)

    def api_prompt(self) -> dict:
        return self.js("async () => (await app.graphToPrompt()).output")

    def queue(self) -> str:
        """Queue the graph as the Run button does; returns the prompt id."""
        before = {p for p in self.server.get("/history")}
        self.js("async () => { await app.queuePrompt(0, 1); }")
        deadline = time.time() + 30
        while time.time() < deadline:
            queue = self.server.get("/queue")
            ids = [item[1] for item in queue.get("queue_running", []) + queue.get("queue_pending", [])]
            ids += [p for p in self.server.get("/history") if p not in before]
            if ids:
                return ids[0]
            time.sleep(0.2)
        raise AssertionError(f"nothing was queued; console: {self.log.entries[-10:]}")

    def wait_for_history(self, prompt_id: str, timeout: float = 120) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.server.get(f"/history/{prompt_id}")
            if prompt_id in hist:
                entry = hist[prompt_id]
                status = entry.get("status", {})
                assert status.get("status_str") != "error", json.dumps(status.get("messages"), default=str)[:3000]
                return entry
            time.sleep(0.3)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout}s")

    def wait_for_node_image(self, node_id: int, timeout_ms: int = 60_000) -> None:
        """Until the node shows a loaded output image: drawn from ``node.imgs`` on the
        LiteGraph canvas, an ``<img>`` inside the node's element in the Vue renderer."""
        self.page.wait_for_function(
            """(id) => {
                if (app.graph.getNodeById(id)?.imgs?.[0]?.naturalWidth > 0) return true;
                return [...document.querySelectorAll(`[data-node-id="${id}"] img`)]
                    .some((img) => img.naturalWidth > 0 && img.src.includes("/view"));
            }""",
            arg=node_id,
            timeout=timeout_ms,
        )

    # ----------------------------------------------------------- the canvas
    def show_node(self, node_id: int, left: float = 120, top: float = 90, scale: float = 1.0) -> None:
        """Pan and zoom the graph so the node's top-left is at (left, top) of the graph canvas."""
        self.js(
            """([id, left, top, scale]) => {
                const n = app.graph.getNodeById(id);
                const ds = app.canvas.ds;
                ds.scale = scale;
                ds.offset[0] = left / scale - n.pos[0];
                ds.offset[1] = top / scale - n.pos[1];
                app.canvas.setDirty(true, true);
            }""",
            [node_id, left, top, scale],
        )
        self.page.wait_for_timeout(400)

    def fit_view(self, node_ids: list[int] | None = None, max_scale: float = 0.8, margin: float = 30) -> None:
        """Show the nodes (default: all), no larger than ``max_scale``, clear of the side
        bar on the left and the menus on top. Below ~0.6 both renderers drop widget detail."""
        self.js(
            """([ids, maxScale, margin]) => {
                const left = 70 + margin, top = 110 + margin;
                const nodes = ids ? ids.map((id) => app.graph.getNodeById(id)) : app.graph.nodes;
                const x0 = Math.min(...nodes.map((n) => n.pos[0]));
                const y0 = Math.min(...nodes.map((n) => n.pos[1] - 30));
                const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0]));
                const y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1]));
                const el = app.canvas.canvas;
                const w = el.clientWidth - left - margin, h = el.clientHeight - top - margin;
                const scale = Math.min(maxScale, w / (x1 - x0), h / (y1 - y0));
                const ds = app.canvas.ds;
                ds.scale = scale;
                ds.offset[0] = (left + (w - (x1 - x0) * scale) / 2) / scale - x0;
                ds.offset[1] = top / scale - y0;
                app.canvas.setDirty(true, true);
            }""",
            [node_ids, max_scale, margin],
        )
        self.page.wait_for_timeout(600)

    def screenshot(self, path) -> None:
        self.page.screenshot(path=str(path))


class RegionEditor:
    """The region editor of one OMG Regions node, driven with the mouse."""

    def __init__(self, comfy: ComfyPage, node_id: int):
        self.comfy = comfy
        self.page = comfy.page
        self.node_id = node_id

    @property
    def canvas(self):
        # The editor element lives under the node's DOM widget; with one regions
        # node on screen the first visible editor canvas is this node's.
        return self.page.locator("canvas[data-omg-regions=canvas]:visible").first

    def boxes(self) -> list[dict]:
        return json.loads(self.comfy.widget_value(self.node_id, "boxes"))["boxes"]

    def image_size(self) -> tuple[int, int]:
        return (
            int(self.comfy.widget_value(self.node_id, "width")),
            int(self.comfy.widget_value(self.node_id, "height")),
        )

    def screen_point(self, x: float, y: float) -> tuple[float, float]:
        """Screen position of image pixel (x, y)."""
        box = self.canvas.bounding_box()
        assert box, "the region editor canvas is not on screen"
        cw, ch = self.canvas.evaluate("(c) => [c.clientWidth, c.clientHeight]")
        zoom = box["width"] / cw
        W, H = self.image_size()
        aw, ah = cw - 2 * EDITOR_PAD, ch - 2 * EDITOR_PAD
        iw, ih = aw, aw * H / W
        if ih > ah:
            ih, iw = ah, ah * W / H
        ix, iy = (cw - iw) / 2, (ch - ih) / 2
        return box["x"] + (ix + x * iw / W) * zoom, box["y"] + (iy + y * ih / H) * zoom

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 8) -> None:
        """Press at image pixel ``start``, move to ``end``, release."""
        sx, sy = self.screen_point(*start)
        ex, ey = self.screen_point(*end)
        mouse = self.page.mouse
        mouse.move(sx, sy)
        mouse.down()
        mouse.move(ex, ey, steps=steps)
        mouse.up()
        self.page.wait_for_timeout(100)

    def click(self, x: float, y: float) -> None:
        self.page.mouse.click(*self.screen_point(x, y))
        self.page.wait_for_timeout(100)

    def error_text(self) -> str:
        loc = self.page.locator(".omg-regions-error:visible .omg-regions-error-text")
        return loc.first.inner_text() if loc.count() else ""
