"""Writes the example workflows in this folder (UI format, as the frontend saves them).

Usage: ``.venv/bin/python workflows/generate.py [--url http://127.0.0.1:8188]``
(reads the node schemas from that ComfyUI, or starts one; ~15 s). The JSON files are committed; this script
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
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # omg_core: the benchmark's box layouts, the toy world's captions

from omg_core.toyworld.scenes import EMPTY_CAPTION  # noqa: E402

FRONTEND_VERSION = "1.32.9"
PINNED_COMFYUI = "0.3.75"  # the host whose node schemas the templates are written from
CHECKPOINT = "omg-toyworld-sd15.safetensors"  # the toy world's model (README: "The toy world")
CONCEPTS = {"target": "target", "house": "house", "kite": "kite", "berry": "berry"}  # name -> trigger word
BASIS_SEED = 11  # the toy-world concepts sit in slots 0-3 of this basis
SEED = 0
STEPS = 16
SIZE = 128  # twice the toy model's 64-px training size: each box holds about one training image
UPSCALE = 2  # saved images are enlarged (nearest) so they can be looked at
# The global prompt covers everything outside the boxes: in the toy world, plain background, which
# its model knows by this caption (naming the objects there would draw them outside their boxes too,
# and the empty prompt is guidance's unconditional one, which draws any scene).
GLOBAL_PROMPT = EMPTY_CAPTION  # "an empty background"
DEMO_PAIR = ("house", "berry")  # the two concepts of the two-box examples, left and right

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


def _has_control_widget(name: str, kind, opts: dict) -> bool:
    """Whether the frontend adds a "control after generate" widget (its value follows in
    widgets_values): asked for in the schema, or by the legacy convention for INT inputs
    named seed / noise_seed (frontend useIntWidget)."""
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return kind == "INT" and name in ("seed", "noise_seed")


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
                if _has_control_widget(name, kind, opts):
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
# The toy world's model knows no words for image flaws; its negative prompt is the empty one, the
# unconditional prompt it was trained with (and what the composition benchmark measures with).
NEGATIVE = ""


def lora(name: str, kind: str = "orthogonal") -> str:
    """The toy-world concept file of that kind (``omg_core.toyworld.concepts.KINDS``)."""
    from omg_core.toyworld.concepts import concept_file

    return concept_file(name, kind).name


def concept_chain(g: Graph, ckpt: Node, names: list[str], x: int, y: int, kind: str = "orthogonal") -> Node:
    """One OMG Load Concept per name, each appending to the previous list."""
    prev = None
    for i, name in enumerate(names):
        node = g.node(
            "OMGLoadConcept",
            (x, y + i * 180),
            (320, 150),
            title=f"OMG Load Concept ({name}{'' if kind == 'orthogonal' else ', ' + kind})",
            model=ckpt["MODEL"],
            clip=ckpt["CLIP"],
            lora_name=lora(name, kind),
            strength=1.0,
        )
        if prev is not None:
            node.set(concepts=prev["concepts"])
        prev = node
    return prev


def layout_boxes(n: int) -> str:
    """The composition benchmark's layout for n concepts, as the OMG Regions widget stores boxes."""
    from benchmarks.composition import LAYOUTS

    boxes = [dict(zip(("x0", "y0", "x1", "y1"), box)) for box in LAYOUTS[n]]
    return json.dumps({"version": 1, "boxes": boxes})


def region_prompts(names: list[str]) -> str:
    return "\n".join(f"a {CONCEPTS[n]}" for n in names)


def sample_and_save(
    g: Graph, model: Out, positive: Out, clip: Out, vae: Out, latent: Out, pos, prefix: str, title=""
) -> Node:
    """Negative prompt, KSampler, VAE Decode and Save Image, laid out in a 2x2 block at ``pos``; returns the KSampler."""
    x, y = pos
    neg = g.node("CLIPTextEncode", (x, y + 280), (320, 120), title=f"Negative{title}", clip=clip, text=NEGATIVE)
    ks = g.node(
        "KSampler",
        (x + 360, y),
        (300, 262),
        title=f"KSampler{title}",
        model=model,
        positive=positive,
        negative=neg["CONDITIONING"],
        latent_image=latent,
        seed=SEED,
        steps=STEPS,
        cfg=5.0,
        sampler_name="euler",
        scheduler="normal",
        denoise=1.0,
    )
    dec = g.node("VAEDecode", (x + 360, y + 300), (220, 46), samples=ks["LATENT"], vae=vae)
    big = g.node(
        "ImageScaleBy",
        (x + 360, y + 380),
        (260, 82),
        image=dec["IMAGE"],
        upscale_method="nearest-exact",
        scale_by=float(UPSCALE),
    )
    g.node(
        "SaveImage", (x + 700, y), (300, 340), title=f"Save Image{title}", images=big["IMAGE"], filename_prefix=prefix
    )
    return ks


def regional_workflow(g: Graph, names: list[str], width: int, height: int, prompt: str, method: str, note: str):
    """Checkpoint -> concepts -> fuse -> OMG Regions -> regional attention -> sampler -> image."""
    ckpt = g.node("CheckpointLoaderSimple", (0, 0), (320, 98), ckpt_name=CHECKPOINT)
    concepts = concept_chain(g, ckpt, names, 0, 140)
    g.note(note, (0, 140 + 180 * len(names)), (320, 250))
    fuse = g.node(
        "OMGFuseConcepts",
        (360, 0),
        (340, 280),
        model=ckpt["MODEL"],
        clip=ckpt["CLIP"],
        concepts=concepts["concepts"],
        method=method,
    )
    latent = g.node("EmptyLatentImage", (360, 320), (340, 106), width=width, height=height, batch_size=1)
    regions = g.node(
        "OMGRegions",
        (740, 0),
        (400, 720),
        width=width,
        height=height,
        boxes=layout_boxes(len(names)),
        region_prompts=region_prompts(names),
    )
    g.node("PreviewImage", (360, 470), (340, 300), title="Region masks", images=regions["mask_preview"])
    apply = g.node(
        "OMGApplyRegionalAttention",
        (1180, 0),
        (320, 240),
        model=fuse["MODEL"],
        clip=fuse["CLIP"],
        regions=regions["regions"],
        base_prompt=prompt,
        mode="fused",
    )
    return ckpt, fuse, apply, latent


HOW_TO_DRAW = (
    "Draw boxes on the OMG Regions node: drag on empty space to add one, drag inside a box to move it, "
    "drag a handle to resize, Delete or the x button to remove it. Line i of region_prompts belongs to box i."
)


def two_concepts_regions(g: Graph) -> None:
    note = (
        f"Two concepts, each in its own box.\n\nThe toy world's {DEMO_PAIR[0]} and {DEMO_PAIR[1]} concepts (trained in orthogonal "
        "slots of one basis) are fused into one model (additive); "
        "OMG Regions says where each region prompt applies; OMG Apply Regional Attention keeps each prompt "
        "inside its box. OMG Attention Maps shows where each concept's trigger word was attended while "
        "sampling, with the boxes outlined: each concept stays in its box.\n\n" + HOW_TO_DRAW
    )
    ckpt, fuse, apply, latent = regional_workflow(g, list(DEMO_PAIR), SIZE, SIZE, GLOBAL_PROMPT, "additive", note)
    concepts = [n for n in g.nodes if n.type == "OMGLoadConcept"][-1]
    apply.set(concepts=concepts["concepts"], record_attention_maps=True)
    ks = sample_and_save(
        g,
        apply["MODEL"],
        apply["positive"],
        fuse["CLIP"],
        ckpt["VAE"],
        latent["LATENT"],
        (1180, 280),
        "omg_two_concepts",
    )
    maps = g.node("OMGAttentionMaps", (1540, 720), (300, 80), model=apply["MODEL"], samples=ks["LATENT"])
    g.node(
        "SaveImage",
        (1880, 720),
        (420, 300),
        title="Save Attention Maps",
        images=maps["IMAGE"],
        filename_prefix="omg_attention_maps",
    )


def three_concepts(g: Graph) -> None:
    note = (
        "Three concepts in three boxes, fused by least squares on the text features of the trigger prompts "
        "(the fit keeps what each concept does to its own prompts and, through the regularization, what the "
        "base model does elsewhere).\n\n" + HOW_TO_DRAW
    )
    ckpt, fuse, apply, latent = regional_workflow(
        g,
        ["target", "house", "kite"],
        SIZE,
        SIZE,
        GLOBAL_PROMPT,
        "least_squares",
        note,
    )
    sample_and_save(
        g,
        apply["MODEL"],
        apply["positive"],
        fuse["CLIP"],
        ckpt["VAE"],
        latent["LATENT"],
        (1180, 280),
        "omg_three_concepts",
    )


def fused_vs_routed(g: Graph) -> None:
    note = (
        "The same regions and seed, two ways.\n\nTop (fused): both concepts are fused into one model and every "
        "prompt sees both. Bottom (routed): the base model, and each region's prompt uses only the concept whose "
        "trigger word it contains - no cross-talk by construction. The routed half loads the concepts trained on "
        "every attention projection (toyworld-NAME-attention): routed regions give each box all of its concept, "
        "where fused their self-attention changes would act on the whole image.\n\n" + HOW_TO_DRAW
    )
    names = list(DEMO_PAIR)
    prompt = GLOBAL_PROMPT
    ckpt, fuse, apply, latent = regional_workflow(g, names, SIZE, SIZE, prompt, "additive", note)
    apply.title = "OMG Apply Regional Attention (fused)"
    sample_and_save(
        g,
        apply["MODEL"],
        apply["positive"],
        fuse["CLIP"],
        ckpt["VAE"],
        latent["LATENT"],
        (1180, 280),
        "omg_fused",
        " (fused)",
    )
    regions = next(n for n in g.nodes if n.type == "OMGRegions")
    concepts = concept_chain(g, ckpt, names, 0, 720 + 180, kind="attention")
    routed = g.node(
        "OMGApplyRegionalAttention",
        (1180, 720),
        (320, 240),
        title="OMG Apply Regional Attention (routed)",
        model=ckpt["MODEL"],
        clip=ckpt["CLIP"],
        regions=regions["regions"],
        base_prompt=prompt,
        mode="routed",
        concepts=concepts["concepts"],
    )
    sample_and_save(
        g,
        routed["MODEL"],
        routed["positive"],
        ckpt["CLIP"],
        ckpt["VAE"],
        latent["LATENT"],
        (1180, 1000),
        "omg_routed",
        " (routed)",
    )


def orthogonality_report(g: Graph) -> None:
    names = ["target", "house", "kite"]
    ckpt = g.node("CheckpointLoaderSimple", (0, 0), (320, 98), ckpt_name=CHECKPOINT)
    concepts = concept_chain(g, ckpt, names, 0, 140, kind="plain")
    g.note(
        "How much the concepts interfere: the overlap of their input subspaces and the cross-talk of each "
        "concept on the others' prompts (heatmap and table).\n\nThese are the plain versions of three toy-world "
        "concepts, trained independently (free down-projections), so they overlap. The second report is after "
        "OMG Orthogonalize: their overlap is gone at a small, reported fidelity cost. Concepts trained on the "
        "shared orthogonal basis (toyworld-<name>.safetensors) are orthogonal already and stay as they are.",
        (0, 140 + 180 * len(names)),
        (320, 250),
    )
    for row, title in enumerate(("before", "after orthogonalization")):
        y = row * 600
        source = concepts["concepts"]
        if row == 1:
            orth = g.node("OMGOrthogonalize", (360, y - 130), (340, 100), concepts=source)
            g.node("PreviewAny", (0, 980), (320, 250), title="Orthogonalize report", source=orth["report"])
            source = orth["concepts"]
        report = g.node(
            "OMGOrthogonalityReport",
            (360, y),
            (340, 280),
            title=f"OMG Orthogonality Report ({title})",
            concepts=source,
            clip=ckpt["CLIP"],
        )
        g.node("PreviewImage", (740, y), (420, 420), title=f"Heatmap ({title})", images=report["heatmap"])
        g.node("PreviewAny", (1200, y), (520, 420), title=f"Table ({title})", source=report["table"])


def train_concept(g: Graph) -> None:
    ckpt = g.node("CheckpointLoaderSimple", (0, 0), (320, 98), ckpt_name=CHECKPOINT)
    images = g.node(
        "EmptyImage", (0, 140), (320, 130), title="Training images (stand-in)", width=64, height=64, batch_size=4
    )
    images.set(color=0xE08020)
    g.note(
        "Trains a concept as a LoRA on the cross-attention k/v layers, in one slot of the shared orthogonal "
        "basis, and saves it to models/loras (then pick it in OMG Load Concept, or in LoraLoader).\n\n"
        "The orange squares only stand in for your photos: replace them with Load Image nodes (batched) of "
        "your concept. Give every concept you want to combine the same basis_seed and its own slot; the "
        "toy-world concepts use basis seed 11, slots 0-3. Raise steps to a few hundred for a real concept.",
        (0, 320),
        (320, 280),
    )
    train = g.node(
        "OMGTrainConcept",
        (360, 0),
        (360, 560),
        model=ckpt["MODEL"],
        clip=ckpt["CLIP"],
        vae=ckpt["VAE"],
        images=images["IMAGE"],
        trigger="omgbox",
        class_word="box",
        steps=10,
        rank=4,
        basis_seed=BASIS_SEED,
        slot=len(CONCEPTS),
        seed=SEED,
        filename="omg-trained-box.safetensors",
    )
    g.node("PreviewImage", (760, 0), (420, 360), title="Loss curve", images=train["loss_curve"])
    g.node("PreviewAny", (760, 400), (420, 120), title="Saved as", source=train["filename"])


def detected_boxes_regions(g: Graph) -> None:
    """A core box becomes a region; the regions' boxes go back to a core node that draws them."""
    note = (
        f"Regions from core boxes (ComfyUI 0.33 and later).\n\nThe {DEMO_PAIR[0]}'s box is drawn on OMG Regions; the "
        f"{DEMO_PAIR[1]}'s comes from a core Bounding Box node in pixels (connect a detector such as RT-DETR, SAM 3 or "
        "MediaPipe face there instead). Detected boxes follow the drawn ones and take the next prompt lines; "
        "the last line serves every further detected box, so one line puts a concept on every detected face. "
        "OMG Regions' bboxes output goes to Draw BBoxes, which draws every region over the image."
    )
    ckpt, fuse, apply, latent = regional_workflow(g, list(DEMO_PAIR), SIZE, SIZE, GLOBAL_PROMPT, "additive", note)
    regions = next(n for n in g.nodes if n.type == "OMGRegions")
    from benchmarks.composition import LAYOUTS

    drawn, (x0, y0, x1, y1) = LAYOUTS[2]
    box = dict(x=round(x0 * SIZE), y=round(y0 * SIZE), width=round((x1 - x0) * SIZE), height=round((y1 - y0) * SIZE))
    core = g.node("PrimitiveBoundingBox", (740, 760), (320, 150), title=f"Bounding Box (the {DEMO_PAIR[1]})", **box)
    regions.set(
        boxes=json.dumps({"version": 1, "boxes": [dict(zip(("x0", "y0", "x1", "y1"), drawn))]}),
        detected_boxes=core["BOUNDING_BOX"],
    )
    sample_and_save(
        g, apply["MODEL"], apply["positive"], fuse["CLIP"], ckpt["VAE"], latent["LATENT"], (1180, 280), "omg_core_boxes"
    )
    decoded = next(n for n in g.nodes if n.type == "VAEDecode")
    shown = g.node("DrawBBoxes", (1540, 720), (300, 80), image=decoded["IMAGE"], bboxes=regions["bboxes"])
    g.node("PreviewImage", (1880, 720), (300, 300), title="Regions over the image", images=shown["out_image"])


WORKFLOWS: dict = {
    "omg_two_concepts_regions": two_concepts_regions,
    "omg_three_concepts": three_concepts,
    "omg_fused_vs_routed": fused_vs_routed,
    "omg_orthogonality_report": orthogonality_report,
    "omg_train_concept": train_concept,
}


# Written from a ComfyUI that has the core box types (0.33 and later) into core_boxes/, which is not a
# template folder: hosts without those nodes would list these workflows with missing nodes.
CORE_BOX_WORKFLOWS: dict = {"omg_detected_boxes_regions": detected_boxes_regions}
CORE_BOX_DIR = HERE / "core_boxes"


def has_core_boxes(object_info: dict) -> bool:
    return "PrimitiveBoundingBox" in object_info and "detected_boxes" in object_info["OMGRegions"]["input"].get(
        "optional", {}
    )


def write_all(object_info: dict, out_dir: Path = HERE, workflows: dict | None = None) -> list[Path]:
    """The workflows of ``workflows`` (default: the templates) written from the node schemas of ``object_info``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in (WORKFLOWS if workflows is None else workflows).items():
        g = Graph(object_info)
        build(g)
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(g.serialise(name), indent=2, ensure_ascii=False) + "\n")
        written.append(path)
    return written


def fetch_object_info(url: str | None) -> dict:
    """Node schemas from a running ComfyUI at ``url``, or from one started for the purpose."""
    import tempfile
    import urllib.request

    if url:
        with urllib.request.urlopen(url.rstrip("/") + "/object_info", timeout=60) as r:
            return json.loads(r.read())
    sys.path.append(str(REPO / "scripts"))
    import comfy_host

    with tempfile.TemporaryDirectory() as tmp:
        with comfy_host.ServerHost(comfy_host.prepare_base_directory(Path(tmp))) as host:
            return host.get("/object_info", timeout=120)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="a running ComfyUI with this pack (default: start one)")
    args = p.parse_args(argv)
    info = fetch_object_info(args.url)
    # The templates are written from the pinned host's schemas; the core-box examples from a host that has them.
    paths = write_all(info, CORE_BOX_DIR, CORE_BOX_WORKFLOWS) if has_core_boxes(info) else write_all(info)
    for path in paths:
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
