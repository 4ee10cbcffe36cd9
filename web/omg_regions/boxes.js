// The region-box document of the "OMG Regions" node, without any UI.
//
// The node's STRING widget `boxes` holds
//   {"version": 1, "boxes": [{"x0": .., "y0": .., "x1": .., "y1": .., ...}, ...]}
// in normalised image coordinates (0..1, x to the right, y down). Box i pairs
// with line i of the node's `region_prompts`. The editor works in image pixels
// (the node's width/height) because that is where the 8 px latent grid lives,
// and converts back only when it writes the value; keys it does not edit
// (label, concept, and anything newer) are carried through.

export const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"];
export const LATENT_GRID = 8;
export const EMPTY_DOCUMENT = '{"version": 1, "boxes": []}';
// The backend's limit on regions per node (omg_core.ops.regions.MAX_REGIONS).
export const MAX_BOXES = 16;
// Coordinates this close outside 0..1 are on the border (as the backend reads them).
const EDGE_TOLERANCE = 1e-6;

export function regionColour(index) {
  return PALETTE[((index % PALETTE.length) + PALETTE.length) % PALETTE.length];
}

/**
 * Parse a stored `boxes` value.
 * Returns {ok: true, doc} or {ok: false, error} with a message a user can act on.
 * An empty string is the empty document (a freshly created node may hold one).
 */
export function parseBoxes(text) {
  if (text === undefined || text === null || String(text).trim() === "") {
    return { ok: true, doc: { version: 1, boxes: [] } };
  }
  let doc;
  try {
    doc = JSON.parse(String(text));
  } catch (e) {
    return { ok: false, error: `not valid JSON (${e.message})` };
  }
  // The backend also reads a bare list of boxes and a missing version as version 1.
  if (Array.isArray(doc)) doc = { version: 1, boxes: doc };
  if (typeof doc !== "object" || doc === null) {
    return { ok: false, error: 'expected an object like {"version": 1, "boxes": [...]}' };
  }
  if (doc.version !== undefined && doc.version !== 1) {
    return { ok: false, error: `unsupported version ${JSON.stringify(doc.version)} (this editor reads version 1)` };
  }
  if (!Array.isArray(doc.boxes)) {
    return { ok: false, error: '"boxes" must be a list of {"x0", "y0", "x1", "y1"} objects' };
  }
  for (let i = 0; i < doc.boxes.length; i++) {
    const b = doc.boxes[i];
    const where = `box ${i + 1}`;
    if (typeof b !== "object" || b === null || Array.isArray(b)) {
      return { ok: false, error: `${where} is not an object` };
    }
    for (const k of ["x0", "y0", "x1", "y1"]) {
      if (typeof b[k] !== "number" || !Number.isFinite(b[k])) {
        return { ok: false, error: `${where}: "${k}" must be a number, got ${JSON.stringify(b[k])}` };
      }
      if (b[k] < -EDGE_TOLERANCE || b[k] > 1 + EDGE_TOLERANCE) {
        return { ok: false, error: `${where}: "${k}" = ${b[k]} is outside 0..1 (coordinates are fractions of the image)` };
      }
    }
    if (!(b.x0 < b.x1) || !(b.y0 < b.y1)) {
      return { ok: false, error: `${where}: needs x0 < x1 and y0 < y1` };
    }
    const problem = optionalKeyProblem(b);
    if (problem) return { ok: false, error: `${where}: ${problem}` };
  }
  if (doc.boxes.length > MAX_BOXES) {
    return { ok: false, error: `${doc.boxes.length} boxes: at most ${MAX_BOXES} regions are supported` };
  }
  return { ok: true, doc };
}

// The backend's bounds (omg_core.ops.regions.MAX_WEIGHT, MAX_FEATHER): shares stay finite in float32.
export const MAX_WEIGHT = 10;
export const MAX_FEATHER = 1024;

// Keys a box may carry besides its corners (omg_core.ops.regions.OPTIONAL_BOX_KEYS).
export const OPTIONAL_KEYS = ["weight", "ratio", "feather", "label", "concept"];

function optionalKeyProblem(b) {
  const unknown = Object.keys(b).filter((k) => !["x0", "y0", "x1", "y1", ...OPTIONAL_KEYS].includes(k));
  if (unknown.length) return `unknown key(s) ${unknown.sort().join(", ")}; allowed: x0, y0, x1, y1, ${OPTIONAL_KEYS.join(", ")}`;
  for (const k of ["weight", "ratio", "feather"]) {
    if (k in b && (typeof b[k] !== "number" || !Number.isFinite(b[k]))) return `"${k}" must be a number`;
  }
  if (b.weight < 0) return `weight ${b.weight} is negative (0 switches the region off)`;
  if (b.weight > MAX_WEIGHT) return `weight ${b.weight} is above ${MAX_WEIGHT}`;
  if (b.ratio < 0 || b.ratio > 1) return `ratio ${b.ratio} must be in 0..1`;
  if (b.feather < 0) return `feather ${b.feather} must be 0 or more pixels`;
  if (b.feather > MAX_FEATHER) return `feather ${b.feather} is above ${MAX_FEATHER} pixels`;
  for (const k of ["label", "concept"]) {
    if (k in b && typeof b[k] !== "string" && !(k === "concept" && b[k] === null)) return `"${k}" must be a string`;
  }
  return null;
}

// The per-box mixing numbers the editor shows for the selected box, with the
// backend's defaults (omg_core.ops.regions.Region) and ranges. A value equal to the
// default is not stored, so untouched boxes stay {x0, y0, x1, y1}.
export const BOX_PARAMS = [
  { key: "ratio", def: 1, min: 0, max: 1, step: 0.05,
    title: "share of the region prompt inside the box (1: only the region prompt, 0: only the global prompt)" },
  { key: "weight", def: 1, min: 0, max: MAX_WEIGHT, step: 0.1,
    title: "how much this region counts where regions overlap (0 switches it off)" },
  { key: "feather", def: 0, min: 0, max: MAX_FEATHER, step: 1,
    title: "soft edge, in pixels, ramping the region in from its border (0: hard edge)" },
];

/** The number typed into a parameter field, its default for an empty field, or null when out of range. */
export function paramValue(param, text) {
  if (String(text).trim() === "") return param.def;
  const v = Number(text);
  if (!Number.isFinite(v) || v < param.min || (param.max != null && v > param.max)) return null;
  return v;
}

/** A copy of `box` with `param` set to `value` (the key dropped at its default). */
export function withParam(box, param, value) {
  const out = { ...box };
  if (value === param.def) delete out[param.key];
  else out[param.key] = value;
  return out;
}

export function serialiseBoxes(doc) {
  return JSON.stringify(doc);
}

/** A copy of `doc` whose box list is `boxes` (other top-level keys kept). */
export function withBoxes(doc, boxes) {
  return { ...doc, version: 1, boxes };
}

// Twelve significant digits: drops float noise (0.5875000000000001) yet keeps
// every pixel/size fraction up to 8192 px exact (10 / 256 = 0.0390625).
const tidy = (v) => Number(v.toPrecision(12));

/** Pixel rectangle {x0, y0, x1, y1} of a normalised box in a W x H image. */
export function toPixels(box, W, H) {
  const c = (v) => clamp(v, 0, 1);
  return { x0: c(box.x0) * W, y0: c(box.y0) * H, x1: c(box.x1) * W, y1: c(box.y1) * H };
}

/** The stored box with its corners replaced by the pixel rectangle `px`. */
export function fromPixels(box, px, W, H) {
  return {
    ...box,
    x0: tidy(clamp(px.x0 / W, 0, 1)),
    y0: tidy(clamp(px.y0 / H, 0, 1)),
    x1: tidy(clamp(px.x1 / W, 0, 1)),
    y1: tidy(clamp(px.y1 / H, 0, 1)),
  };
}

export function clamp(v, lo, hi) {
  return Math.min(hi, Math.max(lo, v));
}

export function snapValue(v, on) {
  return on ? Math.round(v / LATENT_GRID) * LATENT_GRID : v;
}

/** Smallest box side in pixels: one latent cell. */
export function minSide(W, H) {
  return Math.max(1, Math.min(LATENT_GRID, W, H));
}

/** The rectangle spanned by two pixel points, snapped and clipped to the image. */
export function spanRect(a, b, W, H, snap) {
  const xa = clamp(snapValue(a.x, snap), 0, W);
  const xb = clamp(snapValue(b.x, snap), 0, W);
  const ya = clamp(snapValue(a.y, snap), 0, H);
  const yb = clamp(snapValue(b.y, snap), 0, H);
  return { x0: Math.min(xa, xb), y0: Math.min(ya, yb), x1: Math.max(xa, xb), y1: Math.max(ya, yb) };
}

/** `rect` translated by (dx, dy) pixels, kept inside the image, top-left snapped. */
export function moveRect(rect, dx, dy, W, H, snap) {
  const w = rect.x1 - rect.x0;
  const h = rect.y1 - rect.y0;
  const x0 = clamp(snapValue(rect.x0 + dx, snap), 0, Math.max(0, W - w));
  const y0 = clamp(snapValue(rect.y0 + dy, snap), 0, Math.max(0, H - h));
  return { x0, y0, x1: x0 + w, y1: y0 + h };
}

/**
 * `rect` with the edges named in `handle` ("n", "se", "w", ...) moved to the
 * pixel point `p`; an edge never crosses its opposite edge.
 */
export function resizeRect(rect, handle, p, W, H, snap) {
  const m = minSide(W, H);
  const r = { ...rect };
  if (handle.includes("w")) r.x0 = clamp(snapValue(p.x, snap), 0, r.x1 - m);
  if (handle.includes("e")) r.x1 = clamp(snapValue(p.x, snap), r.x0 + m, W);
  if (handle.includes("n")) r.y0 = clamp(snapValue(p.y, snap), 0, r.y1 - m);
  if (handle.includes("s")) r.y1 = clamp(snapValue(p.y, snap), r.y0 + m, H);
  return r;
}

/**
 * Pixel rectangle from numeric fields {x, y, w, h}, clipped to the image and
 * at least one latent cell; null when a field is not a number.
 */
export function rectFromFields(f, W, H) {
  const vals = [f.x, f.y, f.w, f.h].map(Number);
  if (vals.some((v) => !Number.isFinite(v))) return null;
  const m = minSide(W, H);
  const x0 = clamp(vals[0], 0, W - m);
  const y0 = clamp(vals[1], 0, H - m);
  const x1 = clamp(x0 + Math.max(vals[2], m), x0 + m, W);
  const y1 = clamp(y0 + Math.max(vals[3], m), y0 + m, H);
  return { x0, y0, x1, y1 };
}

/** The first words of a prompt line, at most `maxChars` long. */
export function shortLabel(line, maxChars = 28) {
  const text = String(line ?? "")
    .replace(/\s+/g, " ")
    .trim();
  if (text.length <= maxChars) return text;
  const cut = text.slice(0, maxChars);
  const space = cut.lastIndexOf(" ");
  return (space > maxChars / 2 ? cut.slice(0, space) : cut) + "…";
}

/** Lines of a region prompt text; line i belongs to box i. */
export function promptLines(text) {
  return String(text ?? "").split(/\r\n|\r|\n/);
}

/** How many prompts the backend counts: trailing empty lines do not count. */
export function promptCount(text) {
  const lines = promptLines(text).map((l) => l.trim());
  while (lines.length && !lines[lines.length - 1]) lines.pop();
  return lines.length;
}
