// The canvas editor inside the "OMG Regions" node (see ../omg_regions.js).
//
// It keeps no copy of the boxes between gestures: every redraw reads the node's
// `boxes` widget, so whatever sets that value (loading a workflow, paste, undo,
// another extension) is what the user sees. During a drag the edited rectangle
// lives here, and the widget is written once when the gesture ends.

import {
  BOX_PARAMS,
  EMPTY_DOCUMENT,
  LATENT_GRID,
  MAX_BOXES,
  clamp,
  fromPixels,
  moveRect,
  paramValue,
  parseBoxes,
  promptCount,
  promptLines,
  rectFromFields,
  regionColour,
  resizeRect,
  serialiseBoxes,
  spanRect,
  toPixels,
  withBoxes,
  withParam,
} from "./boxes.js";
import { closeButton, drawScene, fitImage, toLayout } from "./render.js";

const STYLE_ID = "omg-regions-style";
const CSS = `
.omg-regions { display: flex; flex-direction: column; gap: 4px; box-sizing: border-box; min-height: 250px; height: 100%;
  font: 12px sans-serif; color: #ddd; }
.omg-regions-stage { position: relative; flex: 1 1 auto; min-height: 190px; user-select: none; }
.omg-regions-stage canvas { position: absolute; inset: 0; width: 100%; height: 100%; outline: none;
  touch-action: none; border-radius: 4px; }
.omg-regions-bar { display: flex; flex-wrap: wrap; align-items: center; gap: 4px 6px; flex: 0 0 auto; }
.omg-regions-bar label { display: inline-flex; align-items: center; gap: 2px; }
.omg-regions-bar input[type=number] { width: 4.4em; background: #222; color: #ddd; border: 1px solid #555;
  border-radius: 3px; padding: 1px 2px; font: inherit; }
.omg-regions-bar input:disabled { opacity: 0.45; }
.omg-regions-sel { min-width: 2.2em; font-weight: bold; }
.omg-regions-status { opacity: 0.75; margin-left: auto; }
.omg-regions-status.warn { opacity: 1; color: #f5a623; }
.omg-regions-error { display: none; flex-direction: column; gap: 4px; flex: 1 1 auto; padding: 6px;
  border: 1px solid #e6194b; border-radius: 4px; background: #3a1218; color: #ffd7dc; }
.omg-regions.invalid .omg-regions-error { display: flex; }
.omg-regions.invalid .omg-regions-stage, .omg-regions.invalid .omg-regions-bar { display: none; }
.omg-regions-error textarea { flex: 1 1 auto; min-height: 60px; background: #1c1c1c; color: #eee;
  font: 11px monospace; border: 1px solid #744; resize: none; }
.omg-regions-error button { background: #333; color: #eee; border: 1px solid #777; border-radius: 3px;
  padding: 2px 8px; cursor: pointer; }
`;

const GRAB = 7; // grab tolerance around handles and edges, layout px

const CURSORS = { n: "ns-resize", s: "ns-resize", e: "ew-resize", w: "ew-resize", ne: "nesw-resize",
  sw: "nesw-resize", nw: "nwse-resize", se: "nwse-resize", move: "move", draw: "crosshair", close: "pointer" };

function injectStyle() {
  if (document.getElementById(STYLE_ID)) return;
  const style = document.createElement("style");
  style.id = STYLE_ID;
  style.textContent = CSS;
  document.head.appendChild(style);
}

function el(tag, props = {}, children = []) {
  const node = Object.assign(document.createElement(tag), props);
  for (const c of children) node.append(c);
  return node;
}

// One timer for all editors: picks up values set without a callback
// (workflow load, paste, undo) in the Vue renderer, where onDraw is not called.
const liveEditors = new Set();
// Editors of removed nodes, by node id. Undo reloads the graph with new node
// objects under the same ids, and the Vue renderer may keep the old widget
// element mounted; the new editor then takes the old element's place.
const retired = new Map();
let pollTimer = null;
function track(editor, on) {
  if (on) liveEditors.add(editor);
  else liveEditors.delete(editor);
  if (liveEditors.size && !pollTimer) pollTimer = setInterval(() => liveEditors.forEach((e) => e.sync()), 250);
  if (!liveEditors.size && pollTimer) {
    clearInterval(pollTimer);
    pollTimer = null;
  }
}

export class RegionCanvas {
  constructor(node, { commit }) {
    injectStyle();
    this.node = node;
    this.commit = commit;
    this.selected = -1;
    this.drag = null;
    this.signature = null;
    this.parsed = { ok: true, doc: { version: 1, boxes: [] } };
    this.build();
    track(this, true);
    this.resizeObserver = new ResizeObserver(() => this.draw());
    this.resizeObserver.observe(this.stage);
  }

  // ------------------------------------------------------------------ DOM
  build() {
    this.canvas = el("canvas", { tabIndex: 0, className: "omg-regions-canvas" });
    this.canvas.dataset.omgRegions = "canvas";
    this.stage = el("div", { className: "omg-regions-stage" }, [this.canvas]);

    this.fields = {};
    const fieldNodes = ["x", "y", "w", "h"].map((k) => {
      const input = el("input", { type: "number", step: 1, min: 0, disabled: true, title: `${k} in pixels` });
      input.dataset.field = k;
      input.addEventListener("change", () => this.applyFields());
      input.addEventListener("keydown", (e) => e.stopPropagation());
      this.fields[k] = input;
      return el("label", {}, [k, input]);
    });
    this.params = {};
    const paramNodes = BOX_PARAMS.map((param) => {
      const input = el("input", { type: "number", step: param.step, min: param.min, disabled: true, title: param.title });
      if (param.max != null) input.max = param.max;
      input.dataset.param = param.key;
      input.addEventListener("change", () => this.applyParam(param));
      input.addEventListener("keydown", (e) => e.stopPropagation());
      this.params[param.key] = input;
      return el("label", { title: param.title }, [param.key, input]);
    });
    this.selLabel = el("span", { className: "omg-regions-sel", title: "selected region" });
    this.snapBox = el("input", { type: "checkbox", title: "snap to the 8 px latent grid" });
    this.snapBox.checked = this.snap;
    this.snapBox.addEventListener("change", () => {
      this.node.properties = this.node.properties ?? {};
      this.node.properties.omg_snap_to_grid = this.snapBox.checked;
      this.updateFieldSteps();
      this.draw();
    });
    this.status = el("span", { className: "omg-regions-status" });
    this.bar = el("div", { className: "omg-regions-bar" }, [
      this.selLabel,
      ...fieldNodes,
      ...paramNodes,
      el("label", { title: "snap to the 8 px latent grid" }, [this.snapBox, "snap 8px"]),
      this.status,
    ]);

    this.errorText = el("div", { className: "omg-regions-error-text" });
    this.rawText = el("textarea", { spellcheck: false });
    this.rawText.addEventListener("keydown", (e) => e.stopPropagation());
    const apply = el("button", { textContent: "Apply", title: "store this text as the boxes value" });
    apply.addEventListener("click", () => this.writeRaw(this.rawText.value));
    const reset = el("button", { textContent: "Clear all boxes", title: "replace the value with an empty box list" });
    reset.addEventListener("click", () => this.writeRaw(EMPTY_DOCUMENT));
    this.errorPanel = el("div", { className: "omg-regions-error" }, [
      this.errorText,
      this.rawText,
      el("div", {}, [apply, " ", reset]),
    ]);

    // "widget-expands": the Vue renderer lets such widgets share the node's spare height.
    this.element = el("div", { className: "omg-regions widget-expands" }, [this.stage, this.errorPanel, this.bar]);
    this.element.dataset.omgRegions = "editor";

    for (const type of ["pointerdown", "pointermove", "pointerup", "pointercancel"]) {
      this.canvas.addEventListener(type, (e) => this.onPointer(e));
    }
    this.canvas.addEventListener("pointerleave", () => {
      if (!this.drag) this.canvas.style.cursor = "";
    });
    this.canvas.addEventListener("keydown", (e) => this.onKey(e));
    // In the Vue renderer a pointerdown that bubbles to the node starts a node
    // drag; inside the editor it belongs to the editor.
    for (const type of ["pointerdown", "pointermove", "pointerup", "dblclick"]) {
      this.element.addEventListener(type, (e) => e.stopPropagation());
    }
  }

  minHeight() {
    return 260;
  }

  dispose() {
    track(this, false);
    this.resizeObserver.disconnect();
    for (const [id, e] of retired) if (!e.element.isConnected) retired.delete(id);
    if (this.node.id != null && this.node.id !== -1) retired.set(this.node.id, this);
  }

  /** Take the place of a removed node's editor still mounted for this node id. */
  adoptMountPoint() {
    if (this.element.isConnected) return;
    const old = retired.get(this.node.id);
    if (!old || old === this || !old.element.isConnected) return;
    retired.delete(this.node.id);
    old.element.replaceWith(this.element);
  }

  get snap() {
    return this.node.properties?.omg_snap_to_grid !== false;
  }

  // ---------------------------------------------------------------- values
  widgetNamed(name) {
    return this.node.widgets?.find((w) => w.name === name);
  }

  /** The index of the input socket of widget ``name``, when something is connected to it. */
  linkedSlot(name) {
    const index = this.node.inputs?.findIndex((i) => i.name === name || i.widget?.name === name) ?? -1;
    return index >= 0 && this.node.isInputConnected?.(index) ? index : -1;
  }

  inputLinked(name) {
    return this.linkedSlot(name) >= 0;
  }

  /** A number fed into a widget's input socket by a widget-holding node (Int, Primitive). */
  linkedNumber(name) {
    const index = this.linkedSlot(name);
    const graph = this.node.graph;
    if (index < 0 || !graph) return undefined;
    const link = this.node.getInputLink(index);
    const origin = link && graph.getNodeById?.(link.origin_id);
    const w = origin?.widgets?.find((x) => x.name === "value" || x.name === name);
    const v = Number(w?.value);
    return Number.isFinite(v) && v > 0 ? v : undefined;
  }

  imageSize() {
    const read = (name) => {
      const v = this.linkedNumber(name) ?? Number(this.widgetNamed(name)?.value);
      return Number.isFinite(v) && v > 0 ? v : 512;
    };
    return { W: read("width"), H: read("height") };
  }

  boxesText() {
    return this.widgetNamed("boxes")?.value;
  }

  promptText() {
    return this.inputLinked("region_prompts") ? "" : (this.widgetNamed("region_prompts")?.value ?? "");
  }

  /** Redraw if anything the picture depends on changed since the last look. */
  sync() {
    if (this.drag) return;
    this.adoptMountPoint();
    const { W, H } = this.imageSize();
    const sig = JSON.stringify([W, H, this.boxesText(), this.promptText(), this.inputLinked("boxes"), this.snap]);
    if (sig === this.signature) {
      // The graph was zoomed: re-render at the new resolution.
      const { width } = this.backingSize();
      if (width && width !== this.canvas.width) this.draw();
      return;
    }
    this.signature = sig;
    this.refresh();
  }

  refresh() {
    this.parsed = this.inputLinked("boxes")
      ? { ok: false, linked: true, error: "the boxes come from a connected input; disconnect it to draw here" }
      : parseBoxes(this.boxesText());
    const invalid = !this.parsed.ok;
    this.element.classList.toggle("invalid", invalid);
    if (invalid) {
      this.errorText.textContent = `Region boxes: ${this.parsed.error}.` +
        (this.parsed.linked ? "" : " Fix the JSON below and press Apply, or clear the boxes.");
      this.rawText.style.display = this.parsed.linked ? "none" : "";
      if (document.activeElement !== this.rawText) this.rawText.value = String(this.boxesText() ?? "");
    }
    const n = this.boxes().length;
    if (this.selected >= n) this.selected = n - 1;
    // What the editor shows, readable from outside (tests, other extensions).
    this.element.dataset.boxCount = String(n);
    this.element.dataset.state = invalid ? "error" : "ok";
    this.snapBox.checked = this.snap;
    this.updateFields();
    this.draw();
  }

  boxes() {
    return this.parsed.ok ? this.parsed.doc.boxes : [];
  }

  /** Store a new box list in the `boxes` widget and record one undo step. */
  writeBoxes(boxes) {
    this.writeRaw(serialiseBoxes(withBoxes(this.parsed.doc, boxes)));
  }

  writeRaw(text) {
    const w = this.widgetNamed("boxes");
    if (!w) return;
    setWidgetValue(this.node, w, text);
    this.signature = null;
    this.sync();
    this.commit();
  }

  // ------------------------------------------------------------- geometry
  layout() {
    const { W, H } = this.imageSize();
    return fitImage(this.canvas.clientWidth, this.canvas.clientHeight, W, H);
  }

  eventPoint(e) {
    const rect = this.canvas.getBoundingClientRect();
    const sx = rect.width ? this.canvas.clientWidth / rect.width : 1;
    const sy = rect.height ? this.canvas.clientHeight / rect.height : 1;
    return { x: (e.clientX - rect.left) * sx, y: (e.clientY - rect.top) * sy };
  }

  /** What a pointer at layout point `p` would grab. */
  hitTest(L, p) {
    const boxes = this.boxes();
    const sel = this.selected;
    if (sel >= 0 && sel < boxes.length) {
      const r = toPixels(boxes[sel], L.W, L.H);
      const c = closeButton(L, r);
      if (Math.hypot(p.x - c.cx, p.y - c.cy) <= c.r + 2) return { mode: "close", index: sel };
      const b = toLayout(L, r);
      const nearX0 = Math.abs(p.x - b.x0) <= GRAB;
      const nearX1 = Math.abs(p.x - b.x1) <= GRAB;
      const nearY0 = Math.abs(p.y - b.y0) <= GRAB;
      const nearY1 = Math.abs(p.y - b.y1) <= GRAB;
      const inX = p.x >= b.x0 - GRAB && p.x <= b.x1 + GRAB;
      const inY = p.y >= b.y0 - GRAB && p.y <= b.y1 + GRAB;
      let h = "";
      if (inX && inY) h = (nearY0 ? "n" : nearY1 ? "s" : "") + (nearX0 ? "w" : nearX1 ? "e" : "");
      if (h) return { mode: "resize", handle: h, index: sel };
      if (p.x >= b.x0 && p.x <= b.x1 && p.y >= b.y0 && p.y <= b.y1) return { mode: "move", index: sel };
    }
    for (let i = boxes.length - 1; i >= 0; i--) {
      const b = toLayout(L, toPixels(boxes[i], L.W, L.H));
      if (p.x >= b.x0 && p.x <= b.x1 && p.y >= b.y0 && p.y <= b.y1) return { mode: "move", index: i };
    }
    return { mode: "draw", index: -1 };
  }

  // ----------------------------------------------------------- interaction
  onPointer(e) {
    if (!this.parsed.ok) return;
    const L = this.layout();
    const p = this.eventPoint(e);
    const px = { x: (p.x - L.ix) / L.k, y: (p.y - L.iy) / L.k };
    if (e.type === "pointerdown") {
      if (e.button !== 0) return;
      e.stopPropagation();
      this.canvas.focus({ preventScroll: true });
      const hit = this.hitTest(L, p);
      if (hit.mode === "close") {
        this.deleteBox(hit.index);
        return;
      }
      this.canvas.setPointerCapture?.(e.pointerId);
      if (hit.mode === "draw") {
        this.selected = -1;
        if (this.boxes().length >= MAX_BOXES) {
          this.updateFields();
          this.draw();
          return;
        }
        const start = { x: clamp(px.x, 0, L.W), y: clamp(px.y, 0, L.H) };
        this.drag = { mode: "draw", start, startLayout: p, rect: null };
      } else {
        this.selected = hit.index;
        const orig = toPixels(this.boxes()[hit.index], L.W, L.H);
        this.drag = { mode: hit.mode, handle: hit.handle, index: hit.index, start: px, orig, rect: orig };
      }
      this.updateFields();
      this.draw();
      return;
    }
    if (e.type === "pointermove") {
      if (!this.drag) {
        this.canvas.style.cursor = CURSORS[this.hoverCursor(L, p)] ?? "";
        return;
      }
      e.stopPropagation();
      this.dragTo(L, px, p);
      this.draw();
      return;
    }
    // pointerup / pointercancel
    if (!this.drag) return;
    e.stopPropagation();
    const drag = this.drag;
    this.drag = null;
    if (e.type === "pointerup") this.dragTo(L, px, p);
    if (e.type === "pointercancel" || !drag.rect) {
      this.draw();
      return;
    }
    this.finishDrag(L, drag);
  }

  hoverCursor(L, p) {
    const hit = this.hitTest(L, p);
    return hit.mode === "resize" ? hit.handle : hit.mode;
  }

  dragTo(L, px, p) {
    const d = this.drag;
    if (!d) return;
    if (d.mode === "draw") {
      // A click (or a tiny jitter) is not a box.
      if (Math.hypot(p.x - d.startLayout.x, p.y - d.startLayout.y) < 4) return;
      d.rect = spanRect(d.start, px, L.W, L.H, this.snap);
    } else if (d.mode === "move") {
      d.rect = moveRect(d.orig, px.x - d.start.x, px.y - d.start.y, L.W, L.H, this.snap);
    } else if (d.mode === "resize") {
      d.rect = resizeRect(d.orig, d.handle, px, L.W, L.H, this.snap);
    }
    if (d.index >= 0) this.updateFields(d.rect);
  }

  finishDrag(L, d) {
    const boxes = this.boxes().slice();
    if (d.mode === "draw") {
      const m = Math.min(LATENT_GRID, L.W, L.H);
      if (d.rect.x1 - d.rect.x0 < m || d.rect.y1 - d.rect.y0 < m) {
        this.draw();
        return;
      }
      boxes.push(fromPixels({}, d.rect, L.W, L.H));
      this.selected = boxes.length - 1;
    } else {
      const r = d.rect;
      if (r.x0 === d.orig.x0 && r.y0 === d.orig.y0 && r.x1 === d.orig.x1 && r.y1 === d.orig.y1) {
        this.draw();
        return;
      }
      boxes[d.index] = fromPixels(boxes[d.index], r, L.W, L.H);
    }
    this.writeBoxes(boxes);
  }

  onKey(e) {
    if (!this.parsed.ok) return;
    const n = this.boxes().length;
    const sel = this.selected >= 0 && this.selected < n ? this.selected : -1;
    if ((e.key === "Delete" || e.key === "Backspace") && sel >= 0) {
      e.preventDefault();
      e.stopPropagation();
      this.deleteBox(sel);
    } else if (e.key === "Escape" && sel >= 0) {
      e.stopPropagation();
      this.selected = -1;
      this.updateFields();
      this.draw();
    } else if (e.key.startsWith("Arrow") && sel >= 0) {
      e.preventDefault();
      e.stopPropagation();
      const { W, H } = this.imageSize();
      const step = this.snap || e.shiftKey ? LATENT_GRID : 1;
      const dx = e.key === "ArrowLeft" ? -step : e.key === "ArrowRight" ? step : 0;
      const dy = e.key === "ArrowUp" ? -step : e.key === "ArrowDown" ? step : 0;
      const boxes = this.boxes().slice();
      const r = moveRect(toPixels(boxes[sel], W, H), dx, dy, W, H, false);
      boxes[sel] = fromPixels(boxes[sel], r, W, H);
      this.writeBoxes(boxes);
    }
  }

  /** Remove box i and, so later boxes keep their prompts, line i of the prompt texts. */
  deleteBox(i) {
    const boxes = this.boxes().slice();
    if (i < 0 || i >= boxes.length) return;
    boxes.splice(i, 1);
    for (const name of ["region_prompts", "region_negative_prompts"]) {
      const w = this.widgetNamed(name);
      if (!w || this.inputLinked(name)) continue;
      const lines = promptLines(w.value);
      if (i >= lines.length || (lines.length === 1 && !lines[0])) continue;
      lines.splice(i, 1);
      setWidgetValue(this.node, w, lines.join("\n"));
    }
    this.selected = boxes.length ? Math.min(i, boxes.length - 1) : -1;
    this.writeBoxes(boxes);
  }

  // ------------------------------------------------------- numeric fields
  updateFieldSteps() {
    for (const input of Object.values(this.fields)) input.step = this.snap ? LATENT_GRID : 1;
  }

  updateFields(rectOverride) {
    const boxes = this.boxes();
    const sel = this.selected >= 0 && this.selected < boxes.length ? this.selected : -1;
    const { W, H } = this.imageSize();
    this.updateFieldSteps();
    this.selLabel.textContent = sel >= 0 ? `#${sel + 1}` : "—";
    this.selLabel.style.color = sel >= 0 ? regionColour(sel) : "";
    const r = rectOverride ?? (sel >= 0 ? toPixels(boxes[sel], W, H) : null);
    const vals = r ? { x: r.x0, y: r.y0, w: r.x1 - r.x0, h: r.y1 - r.y0 } : null;
    for (const [k, input] of Object.entries(this.fields)) {
      input.disabled = !vals;
      if (document.activeElement !== input) input.value = vals ? String(Math.round(vals[k] * 100) / 100) : "";
    }
    for (const param of BOX_PARAMS) {
      const input = this.params[param.key];
      input.disabled = sel < 0;
      if (document.activeElement !== input) input.value = sel >= 0 ? String(boxes[sel][param.key] ?? param.def) : "";
    }
    const n = boxes.length;
    const lines = promptCount(this.promptText());
    // Detected boxes (a core BOUNDING_BOX input) follow the drawn ones; their number is known only when it runs.
    const detected = this.inputLinked("detected_boxes");
    const mismatch = !this.inputLinked("region_prompts") && (detected ? lines <= n : lines !== n);
    let text = `${W}×${H} · ${n} box${n === 1 ? "" : "es"}${detected ? " + detected boxes" : ""}`;
    if (mismatch && detected) text += ` · ${lines} prompt line${lines === 1 ? "" : "s"}: one per drawn box, then the detected boxes' line(s)`;
    else if (mismatch) text += ` · ${lines} prompt line${lines === 1 ? "" : "s"}: write one line per box`;
    if (n >= MAX_BOXES) text += ` · at most ${MAX_BOXES} boxes`;
    this.status.textContent = text;
    this.status.classList.toggle("warn", mismatch);
  }

  applyFields() {
    const boxes = this.boxes().slice();
    const sel = this.selected;
    if (sel < 0 || sel >= boxes.length) return;
    const { W, H } = this.imageSize();
    const f = Object.fromEntries(Object.entries(this.fields).map(([k, input]) => [k, input.value]));
    const r = rectFromFields(f, W, H);
    if (!r) {
      this.updateFields();
      return;
    }
    boxes[sel] = fromPixels(boxes[sel], r, W, H);
    this.writeBoxes(boxes);
  }

  applyParam(param) {
    const boxes = this.boxes().slice();
    const sel = this.selected;
    if (sel < 0 || sel >= boxes.length) return;
    const value = paramValue(param, this.params[param.key].value);
    if (value === null) {
      // Out of range: show the stored value again (the field keeps focus, so say it here).
      this.params[param.key].value = String(boxes[sel][param.key] ?? param.def);
      return;
    }
    boxes[sel] = withParam(boxes[sel], param, value);
    this.writeBoxes(boxes);
  }

  // -------------------------------------------------------------- drawing
  /** Canvas pixels for crisp drawing at the current graph zoom and device pixel ratio. */
  backingSize() {
    const c = this.canvas;
    const cw = c.clientWidth;
    const ch = c.clientHeight;
    if (!cw || !ch) return { width: 0, height: 0, scale: 1 };
    const rect = c.getBoundingClientRect();
    const zoom = rect.width ? rect.width / cw : 1;
    const scale = Math.max(1, (window.devicePixelRatio || 1) * zoom);
    return { width: Math.round(cw * scale), height: Math.round(ch * scale), scale };
  }

  draw() {
    const c = this.canvas;
    const cw = c.clientWidth;
    const ch = c.clientHeight;
    if (!cw || !ch) return;
    const { width, height, scale } = this.backingSize();
    if (c.width !== width || c.height !== height) {
      c.width = width;
      c.height = height;
    }
    const ctx = c.getContext("2d");
    ctx.setTransform(scale, 0, 0, scale, 0, 0);
    drawScene(ctx, this.layout(), {
      valid: this.parsed.ok,
      boxes: this.boxes(),
      lines: promptLines(this.promptText()),
      selected: this.selected,
      drag: this.drag,
      snap: this.snap,
    });
  }
}

/** Set a widget's value the way a user edit does, so both renderers follow. */
function setWidgetValue(node, widget, value) {
  const old = widget.value;
  widget.value = value;
  // In the Vue renderer the callback also refreshes the node's Vue state.
  widget.callback?.(value);
  node.onWidgetChanged?.(widget.name, value, old, widget);
}
