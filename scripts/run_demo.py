"""Run an example workflow headlessly through ComfyUI's execution engine, or
start the ComfyUI server with the pack loaded.

Called by ``scripts/demo.sh`` after setup; see README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO / "scripts"))

import demo_assets  # noqa: E402

import comfy_host  # noqa: E402

DEFAULT_WORKFLOW = "omg_two_concepts_regions.json"
DEMO_HOME = REPO / ".cache" / "demo"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--serve", action="store_true", help="start the ComfyUI server with the pack instead")
    p.add_argument("--port", type=int, default=8188, help="port for --serve (127.0.0.1 only)")
    p.add_argument("--workflow", default=DEFAULT_WORKFLOW, help="file name in workflows/")
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="a real SD1.5 checkpoint to use instead of the toy-world model (needs --concept)",
    )
    p.add_argument(
        "--concept",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="with --checkpoint: a concept file made for it, once per concept of the workflow, in order; "
        "its trigger word replaces the toy concept's in the region prompts",
    )
    p.add_argument("--output", type=Path, default=REPO / "output", help="where images are written")
    return p.parse_args(argv)


def retarget(workflow: dict, checkpoint: str, concepts: list[tuple[str, str]], size: int = 512) -> dict:
    """The example workflow on another checkpoint: its concept files (name, trigger) in
    place of the toy-world ones, in node order, and square images of ``size`` px.
    The toy concepts fit only the toy model, so every one must be replaced."""
    loaders = sorted((n for n in workflow["nodes"] if n["type"] == "OMGLoadConcept"), key=lambda n: n["id"])
    if len(concepts) != len(loaders):
        raise SystemExit(
            f"this workflow loads {len(loaders)} concept(s); give as many --concept files made for "
            f"{checkpoint} (the toy-world concepts only fit the toy model)"
        )
    swaps = []
    for node, (file_name, trigger) in zip(loaders, concepts):
        old = node["widgets_values"][0]
        swaps.append((old.removeprefix("toyworld-").split("-")[0].removesuffix(".safetensors"), trigger))
        node["widgets_values"][0] = file_name
    for node in workflow["nodes"]:
        values = node.get("widgets_values")
        if node["type"] == "CheckpointLoaderSimple":
            values[0] = checkpoint
        elif node["type"] in ("OMGRegions", "EmptyLatentImage"):
            values[0] = values[1] = size
            if node["type"] == "OMGRegions":
                lines = values[3].split("\n")
                for old, new in swaps:
                    lines = [" ".join(new if w == old else w for w in line.split(" ")) for line in lines]
                values[3] = "\n".join(lines)
        elif node["type"] == "ImageScaleBy":
            values[1] = 1.0
    return workflow


def concept_trigger(path: Path) -> str:
    """The first trigger word a concept file declares (its file name where it declares none)."""
    from omg_core.formats.detect import read_adapter

    triggers = read_adapter(path).triggers
    return triggers[0] if triggers else path.stem


def retarget_from_args(workflow: dict, args) -> dict:
    if args.checkpoint is None:
        if args.concept:
            raise SystemExit("--concept replaces the toy-world concepts on a real checkpoint: give --checkpoint too")
        return workflow
    concepts = [(p.name, concept_trigger(p)) for p in args.concept]
    return retarget(workflow, args.checkpoint.name, concepts)


def run_headless(args) -> list[Path]:
    models = DEMO_HOME / "models"
    workflow = json.loads((REPO / "workflows" / args.workflow).read_text())
    workflow = retarget_from_args(workflow, args)
    demo_assets.ensure_demo_models(models, args.checkpoint, args.concept)
    args.output.mkdir(parents=True, exist_ok=True)
    comfy_host.boot(models_dir=models, output_dir=args.output)
    prompt = comfy_host.workflow_to_api(workflow, comfy_host.object_info_in_process())
    started = time.time()
    outputs = comfy_host.InProcessHost().run(prompt)
    written = []
    for node_out in outputs.values():
        for image in node_out.get("images", []):
            base = Path(args.output) if image.get("type") == "output" else Path(comfy_host.temp_directory())
            src = base / image.get("subfolder", "") / image["filename"]
            if image.get("type") != "output":
                dst = Path(args.output) / f"preview_{image['filename']}"
                shutil.copyfile(src, dst)
                src = dst
            written.append(src)
    print(f"ran {args.workflow} through ComfyUI's executor in {time.time() - started:.1f} s")
    return written


def serve(args) -> None:
    base = comfy_host.prepare_base_directory(DEMO_HOME)
    demo_assets.ensure_demo_models(base / "models", args.checkpoint, args.concept)
    print(f"ComfyUI with the OMG pack: http://127.0.0.1:{args.port}  (Ctrl+C to stop)")
    print("example workflows: Workflow menu > Browse Templates > omg")
    host = comfy_host.ServerHost(base, port=args.port)
    host.start()
    try:
        while host.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        host.stop()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve(args)
        return 0
    written = run_headless(args)
    if not written:
        print("the workflow produced no image", file=sys.stderr)
        return 1
    for path in written:
        print(f"image: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
