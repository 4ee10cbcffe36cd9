"""Writes the example workflows in this folder (UI format, as the frontend saves them).

Usage: ``.venv/bin/python workflows/generate.py`` (boots ComfyUI in-process to
read the node schemas; a few seconds). The JSON files are committed; this script
is how they are kept consistent with the nodes' schemas: widget values are
written in schema order with the schema defaults filled in, each input slot is
where the frontend puts it (sockets first, then one socket per widget), and
every link names slots that exist.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FRONTEND_VERSION = "1.32.9"
CHECKPOINT = "omg-tiny-sd15.safetensors"
CONCEPTS = {"cat": "omgcat", "dog": "omgdog", "mug": "omgmug"}
SEED = 42
STEPS = 4
SIZE = 128

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def _spec(info: dict, name: str) -> tuple[object, dict]:
    for section in ("required", "optional"):
        spec = info["input"].get(section, {}).get(name)
        if spec is not None:
            return spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    raise KeyError(name)


def _ordered_inputs(info: dict) -> list[tuple[str, bool]]:
    """(name, optional) in the order the frontend creates them (input_order)."""
    order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
    return [(n, False) for n in order.get("required", [])] + [(n, True) for n in order.get("optional", [])]


def _is_widget(kind, opts: dict) -> bool:
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not opts.get("forceInput")


def _default(kind, opts: dict):
    if "default" in opts:
        return opts["default"]
    if isinstance(kind, list):
        return kind[0] if kind else ""
    if kind == "COMBO":
        options = opts.get("options") or [""]
        return options[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[kind]


class Out:
    def __init__(self, node: Node, slot: int):
        self.node, self.slot = node, slot

    @property
    def type(self) -> str:
        return self.node.outputs[self.slot]["type"]


class Node:
    def __init__(self, graph: Graph, node_id: int, ctype: str, pos, size, title: str | None):
        self.graph, self.id, self.type = graph, node_id, ctype
        self.pos, self.size, self.title = list(pos), list(size), title
        self.info = graph.object_info.get(ctype)
        self.inputs: list[dict] = []
        self.outputs: list[dict] = []
        self.widgets: list[tuple[str, object]] = []  # (name, value) in serialisation order
        if self.info is not None:
            self._build_slots()

    def _build_slots(self) -> None:
        info = self.info
        ordered = _ordered_inputs(info)
        specs = {name: _spec(info, name) for name, _ in ordered}
        for name, optional in ordered:
            kind, opts = specs[name]
            if not _is_widget(kind, opts):
                self.inputs.append(self._slot(name, kind, optional, widget=False))
        for name, optional in ordered:
            kind, opts = specs[name]
            if _is_widget(kind, opts):
                self.inputs.append(self._slot(name, kind, optional, widget=True))
                self.widgets.append((name, _default(kind, opts)))
                if opts.get("control_after_generate"):
                    self.widgets.append((f"{name}::control", "fixed"))
        for i, (otype, oname) in enumerate(zip(info["output"], info["output_name"])):
            self.outputs.append({"localized_name": oname, "name": oname, "type": otype, "links": None, "slot_index": i})

    @staticmethod
    def _slot(name: str, kind, optional: bool, widget: bool) -> dict:
        slot_type = "COMBO" if isinstance(kind, list) else kind
        slot = {"localized_name": name, "name": name, "type": slot_type}
        if optional and not widget:
            slot["shape"] = 7
        if widget:
            slot["widget"] = {"name": name}
        slot["link"] = None
        return slot

    def __getitem__(self, name: str) -> Out:
        for i, o in enumerate(self.outputs):
            if o["name"] == name:
                return Out(self, i)
        raise KeyError(f"{self.type} has no output {name!r}; it has {[o['name'] for o in self.outputs]}")

    def set(self, **values) -> Node:
        for name, value in values.items():
            if isinstance(value, Out):
                self.graph.link(value, self, name)
                continue
            names = [n for n, _ in self.widgets]
            if name not in names:
                raise KeyError(f"{self.type} has no widget {name!r}; it has {names}")
            self.widgets[names.index(name)] = (name, value)
        return self

    def serialise(self, order: int) -> dict:
        out = {
            "id": self.id,
            "type": self.type,
            "pos": self.pos,
            "size": self.size,
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "properties": {"Node name for S&R": self.type},
            "widgets_values": [v for _, v in self.widgets],
        }
        if self.title:
            out["title"] = self.title
        return out


class Note(Node):
    """The frontend's Note node: no schema, one text widget, never executed."""

    def __init__(self, graph: Graph, node_id: int, text: str, pos, size):
        super().__init__(graph, node_id, "Note", pos, size, None)
        self.widgets = [("text", text)]

    def serialise(self, order: int) -> dict:
        out = super().serialise(order)
        out["properties"] = {"text": ""}
        out["color"], out["bgcolor"] = "#432", "#653"
        return out


class Graph:
    def __init__(self, object_info: dict):
        self.object_info = object_info
        self.nodes: list[Node] = []
        self.links: list[list] = []

    def node(self, ctype: str, pos, size=(320, 130), title: str | None = None, **values) -> Node:
        if ctype not in self.object_info:
            raise KeyError(f"node type {ctype!r} is not registered in this ComfyUI")
        n = Node(self, len(self.nodes) + 1, ctype, pos, size, title)
        self.nodes.append(n)
        return n.set(**values)

    def note(self, text: str, pos, size=(320, 160)) -> Node:
        n = Note(self, len(self.nodes) + 1, text, pos, size)
        self.nodes.append(n)
        return n

    def link(self, src: Out, dst: Node, input_name: str) -> None:
        slots = [i for i, s in enumerate(dst.inputs) if s["name"] == input_name]
        if not slots:
            raise KeyError(f"{dst.type} has no input {input_name!r}")
        slot = dst.inputs[slots[0]]
        expected = slot["type"]
        if expected != "*" and src.type != expected and "*" not in (src.type,):
            raise TypeError(
                f"{src.node.type}.{src.node.outputs[src.slot]['name']} ({src.type}) -> "
                f"{dst.type}.{input_name} ({expected})"
            )
        if slot["link"] is not None:
            raise ValueError(f"{dst.type}.{input_name} is already linked")
        link_id = len(self.links) + 1
        self.links.append([link_id, src.node.id, src.slot, dst.id, slots[0], src.type])
        slot["link"] = link_id
        out = src.node.outputs[src.slot]
        out["links"] = (out["links"] or []) + [link_id]

    def serialise(self, name: str) -> dict:
        order = {n.id: i for i, n in enumerate(self._execution_order())}
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"omg/workflows/{name}")),
            "revision": 0,
            "last_node_id": len(self.nodes),
            "last_link_id": len(self.links),
            "nodes": [n.serialise(order[n.id]) for n in self.nodes],
            "links": self.links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [40, 40]}, "frontendVersion": FRONTEND_VERSION},
            "version": 0.4,
        }

    def _execution_order(self) -> list[Node]:
        deps = {n.id: {link[1] for link in self.links if link[3] == n.id} for n in self.nodes}
        done: list[Node] = []
        seen: set[int] = set()
        by_id = {n.id: n for n in self.nodes}

        def visit(i: int) -> None:
            if i in seen:
                return
            seen.add(i)
            for d in sorted(deps[i]):
                visit(d)
            done.append(by_id[i])

        for n in self.nodes:
            visit(n.id)
        return done


# ------------------------------------------------------------------ workflows
WORKFLOWS: dict = {}


def write_all(object_info: dict, out_dir: Path = HERE) -> list[Path]:
    written = []
    for name, build in WORKFLOWS.items():
        g = Graph(object_info)
        build(g)
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(g.serialise(name), indent=2, ensure_ascii=False) + "\n")
        written.append(path)
    return written


def main() -> int:
    sys.path.append(str(REPO / "scripts"))
    import comfy_host

    comfy_host.boot()
    for path in write_all(comfy_host.object_info_in_process()):
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
