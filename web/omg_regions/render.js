// Where things are on the editor canvas, and how they are drawn.
//
// "Layout px" are CSS pixels of the canvas element before the graph's zoom;
// "image px" are pixels of the node's width x height. The image area is
// letterboxed into the canvas with PAD free on every side for the handles.

import { LATENT_GRID, regionColour, shortLabel, toPixels } from "./boxes.js";

export const PAD = 10; // free space around the image area, layout px
export const HANDLE = 4; // half size of a resize handle, layout px

/** The image area of a W x H image in a cw x ch canvas; k = layout px per image px. */
export function fitImage(cw, ch, W, H) {
  const aw = Math.max(1, cw - 2 * PAD);
  const ah = Math.max(1, ch - 2 * PAD);
  let iw = aw;
  let ih = (aw * H) / W;
  if (ih > ah) {
    ih = ah;
    iw = (ah * W) / H;
  }
  return { cw, ch, W, H, ix: (cw - iw) / 2, iy: (ch - ih) / 2, iw, ih, k: iw / W };
}

/** Layout-px rectangle of an image-px rectangle. */
export function toLayout(L, r) {
  return { x0: L.ix + r.x0 * L.k, y0: L.iy + r.y0 * L.k, x1: L.ix + r.x1 * L.k, y1: L.iy + r.y1 * L.k };
}

/** The × button of a box: inside its top-right corner, or just outside when the box is small. */
export function closeButton(L, r) {
  const b = toLayout(L, r);
  const inside = b.x1 - b.x0 >= 44 && b.y1 - b.y0 >= 30;
  const cx = inside ? b.x1 - 10 : Math.min(L.cw - 8, b.x1 + 9);
  const cy = inside ? b.y0 + 10 : Math.max(8, b.y0 - 9);
  return { cx, cy, r: 7 };
}

/**
 * Draw the whole editor picture.
 * scene: {valid, boxes, lines, selected, drag: {mode, index, rect} | null, snap}
 */
export function drawScene(ctx, L, scene) {
  ctx.clearRect(0, 0, L.cw, L.ch);
  ctx.fillStyle = "#161616";
  ctx.fillRect(0, 0, L.cw, L.ch);
  if (!scene.valid) return;

  ctx.fillStyle = "#2a2a2a";
  ctx.fillRect(L.ix, L.iy, L.iw, L.ih);
  if (scene.snap) drawGrid(ctx, L);
  ctx.strokeStyle = "#666";
  ctx.lineWidth = 1;
  ctx.strokeRect(L.ix + 0.5, L.iy + 0.5, L.iw - 1, L.ih - 1);

  const { boxes, lines, selected, drag } = scene;
  const order = boxes.map((_, i) => i).filter((i) => i !== selected);
  if (selected >= 0 && selected < boxes.length) order.push(selected);
  for (const i of order) {
    const r = drag && drag.index === i && drag.rect ? drag.rect : toPixels(boxes[i], L.W, L.H);
    drawBox(ctx, L, r, i, shortLabel(boxes[i].label ?? lines[i] ?? ""), i === selected);
  }
  if (drag?.mode === "draw" && drag.rect) {
    drawBox(ctx, L, drag.rect, boxes.length, shortLabel(lines[boxes.length] ?? ""), false, true);
  }
  if (!boxes.length && !drag?.rect) {
    ctx.fillStyle = "#9a9a9a";
    ctx.font = "14px sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText("drag to draw a region", L.ix + L.iw / 2, L.iy + L.ih / 2);
  }
}

function drawGrid(ctx, L) {
  // The 8 px latent grid when it is large enough to see, else every 64 px.
  const cell = L.k * LATENT_GRID >= 6 ? LATENT_GRID : 64;
  if (L.k * cell < 6) return;
  ctx.strokeStyle = "rgba(255,255,255,0.06)";
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let x = cell; x < L.W; x += cell) {
    const X = Math.round(L.ix + x * L.k) + 0.5;
    ctx.moveTo(X, L.iy);
    ctx.lineTo(X, L.iy + L.ih);
  }
  for (let y = cell; y < L.H; y += cell) {
    const Y = Math.round(L.iy + y * L.k) + 0.5;
    ctx.moveTo(L.ix, Y);
    ctx.lineTo(L.ix + L.iw, Y);
  }
  ctx.stroke();
}

function drawBox(ctx, L, r, i, text, selected, provisional = false) {
  const colour = regionColour(i);
  const b = toLayout(L, r);
  const w = b.x1 - b.x0;
  const h = b.y1 - b.y0;
  ctx.save();
  ctx.globalAlpha = selected ? 0.3 : 0.2;
  ctx.fillStyle = colour;
  ctx.fillRect(b.x0, b.y0, w, h);
  ctx.globalAlpha = 1;
  ctx.strokeStyle = colour;
  ctx.lineWidth = selected ? 3 : 2;
  if (provisional) ctx.setLineDash([5, 4]);
  ctx.strokeRect(b.x0, b.y0, w, h);
  ctx.setLineDash([]);

  // Tag: the region number, then the first words of its prompt line.
  ctx.beginPath();
  ctx.rect(b.x0, b.y0, w, h);
  ctx.clip();
  ctx.font = "bold 12px sans-serif";
  ctx.textBaseline = "middle";
  ctx.textAlign = "left";
  const num = String(i + 1);
  const numW = ctx.measureText(num).width + 8;
  ctx.fillStyle = colour;
  ctx.fillRect(b.x0, b.y0, numW, 17);
  ctx.fillStyle = "#fff";
  ctx.fillText(num, b.x0 + 4, b.y0 + 9);
  ctx.font = "11px sans-serif";
  const shown = fitText(ctx, text, w - numW - 8);
  if (shown) {
    const tw = ctx.measureText(shown).width + 8;
    ctx.fillStyle = "rgba(0,0,0,0.55)";
    ctx.fillRect(b.x0 + numW, b.y0, tw, 17);
    ctx.fillStyle = "#fff";
    ctx.fillText(shown, b.x0 + numW + 4, b.y0 + 9);
  }
  ctx.restore();
  if (selected) drawSelection(ctx, L, r, b, colour);
}

function drawSelection(ctx, L, r, b, colour) {
  ctx.fillStyle = "#fff";
  ctx.strokeStyle = colour;
  ctx.lineWidth = 1.5;
  const xs = [b.x0, (b.x0 + b.x1) / 2, b.x1];
  const ys = [b.y0, (b.y0 + b.y1) / 2, b.y1];
  for (const x of xs) {
    for (const y of ys) {
      if (x === xs[1] && y === ys[1]) continue;
      ctx.fillRect(x - HANDLE, y - HANDLE, 2 * HANDLE, 2 * HANDLE);
      ctx.strokeRect(x - HANDLE, y - HANDLE, 2 * HANDLE, 2 * HANDLE);
    }
  }
  const c = closeButton(L, r);
  ctx.beginPath();
  ctx.arc(c.cx, c.cy, c.r, 0, 2 * Math.PI);
  ctx.fillStyle = "#222";
  ctx.fill();
  ctx.strokeStyle = colour;
  ctx.stroke();
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = 1.6;
  ctx.beginPath();
  ctx.moveTo(c.cx - 3, c.cy - 3);
  ctx.lineTo(c.cx + 3, c.cy + 3);
  ctx.moveTo(c.cx + 3, c.cy - 3);
  ctx.lineTo(c.cx - 3, c.cy + 3);
  ctx.stroke();
}

/** The longest prefix of `text` (cut at a word when possible, with "…") that fits `width`. */
export function fitText(ctx, text, width) {
  if (!text || width < 12) return "";
  if (ctx.measureText(text).width <= width) return text;
  let words = text.replace(/…$/, "").split(" ");
  while (words.length > 1) {
    words = words.slice(0, -1);
    const candidate = words.join(" ") + "…";
    if (ctx.measureText(candidate).width <= width) return candidate;
  }
  let chars = words[0];
  while (chars.length > 1) {
    chars = chars.slice(0, -1);
    if (ctx.measureText(chars + "…").width <= width) return chars + "…";
  }
  return "";
}
