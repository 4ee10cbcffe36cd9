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
        "--checkpoint", type=Path, help="a real SD1.5 checkpoint to use instead of the generated small model"
    )
    p.add_argument("--output", type=Path, default=REPO / "output", help="where images are written")
    return p.parse_args(argv)


def use_checkpoint(workflow: dict, name: str) -> dict:
    for node in workflow["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"][0] = name
    return workflow


def run_headless(args) -> list[Path]:
    models = DEMO_HOME / "models"
    demo_assets.ensure_demo_models(models, args.checkpoint)
    args.output.mkdir(parents=True, exist_ok=True)
    comfy_host.boot(models_dir=models, output_dir=args.output)
    workflow = json.loads((REPO / "workflows" / args.workflow).read_text())
    if args.checkpoint is not None:
        use_checkpoint(workflow, args.checkpoint.name)
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
    demo_assets.ensure_demo_models(base / "models", args.checkpoint)
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
