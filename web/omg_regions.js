// Region-box editor for the "OMG Regions" node.
//
// The node's `boxes` STRING widget stays the single source of truth: it is what
// the workflow saves, what copy/paste and undo restore, and what the API prompt
// sends. This extension hides that widget's text field and adds a DOM widget
// (serialised nowhere) that draws the boxes on its own <canvas> and writes every
// finished edit back into `boxes`. A DOM widget renders in both the LiteGraph
// canvas and the Vue "Nodes 2.0" mode, and only the public extension API is used.

import { app } from "../../scripts/app.js";
import { RegionCanvas } from "./omg_regions/editor.js";

const NODE_ID = "OMGRegions";
const EDITOR_WIDGET = "boxes_editor";

function attachEditor(node) {
  const widgets = node.widgets ?? [];
  const boxesWidget = widgets.find((w) => w.name === "boxes");
  if (!boxesWidget || widgets.some((w) => w.name === EDITOR_WIDGET)) return;

  // Hide the raw JSON field in both renderers; its value still serialises.
  boxesWidget.hidden = true;
  boxesWidget.options = { ...(boxesWidget.options ?? {}), hidden: true };
  // Frontend 1.5x lays hidden widgets out in no row; 1.32's LiteGraph still leaves an empty row for
  // them unless they measure -4 (its row gap). The override is deprecated in 1.5x but has no
  // replacement in 1.32 (1.5x skips hidden widgets before measuring them).
  boxesWidget.computeSize = () => [0, -4];

  const editor = new RegionCanvas(node, {
    commit: () => {
      // One undo step per finished gesture.
      app.canvas?.emitBeforeChange?.();
      app.canvas?.emitAfterChange?.();
      node.setDirtyCanvas?.(true, true);
    },
  });

  const widget = node.addDOMWidget(EDITOR_WIDGET, "omg_region_boxes", editor.element, {
    serialize: false,
    hideOnZoom: false,
    // The editor's canvas lives on the node; the properties side panel (1.5x)
    // would otherwise move that element into itself.
    hideInPanel: true,
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => editor.minHeight(),
    onDraw: () => editor.sync(),
  });
  // Keep it out of widgets_values (workflow JSON) as well as the API prompt.
  widget.serialize = false;
  editor.widget = widget;

  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    editor.dispose();
    return onRemoved?.apply(this, arguments);
  };

  // Make room for the editor on a freshly created node; a loaded workflow
  // restores its own size afterwards.
  const size = node.computeSize?.();
  if (size) node.setSize?.([Math.max(size[0], 400), Math.max(size[1], 560)]);
}

app.registerExtension({
  name: "omg.RegionBoxes",
  nodeCreated(node) {
    if (node?.comfyClass !== NODE_ID) return;
    attachEditor(node);
  },
});
