"""Each concept alone in boxes of other sizes, places and shapes, on the toy world.

    python -m benchmarks.box_shapes                          # the shipped concepts
    python -m benchmarks.box_shapes --concepts-dir DIR --concepts berry,house --seeds 8

The composition benchmark reads a concept alone in one box only (half the side, centred) and in
company in boxes of a third of the side, in corners, tall or wide. When a concept holds its box
alone but not in company, this tells whether the box's size, place or shape is the cause or the
company is: each concept is drawn by itself in each box below by the composition benchmark's
placement method (``--method``, default routed latent composition at the default placement) from
``--seeds`` seeds, and the detector reads the largest object of each image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.toy_host import boot, concept_names
from omg_core.toyworld import scenes as S

BOXES = {  # name -> (x0, y0, x1, y1) in 0..1
    "0.5 centred": (0.25, 0.25, 0.75, 0.75),
    "0.42 centred": (0.29, 0.29, 0.71, 0.71),
    "0.42 corner": (0.0, 0.0, 0.42, 0.42),
    "0.3 centred": (0.35, 0.35, 0.65, 0.65),
    "0.42x0.6 edge": (0.0, 0.2, 0.42, 0.8),
    "0.5x0.3 wide": (0.25, 0.35, 0.75, 0.65),
}


def format_table(rows: dict, names: list[str], seeds: int) -> str:
    head = ["box"] + [f"{n} (of {seeds})" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for box, per in rows.items():
        cells = []
        for n in names:
            labels = per[n]
            wrong = sorted({lab for lab in labels if lab != n})
            cells.append(f"{labels.count(n)}" + (f" ({', '.join(wrong)})" if wrong else ""))
        lines.append(f"| {box} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--concepts-dir",
        type=Path,
        default=None,
        help="basis concepts toyworld-NAME.safetensors (default: the shipped kind the method uses)",
    )
    ap.add_argument("--concepts", default=",".join(S.PERSONAL_OBJECTS), help="comma-separated personal concepts")
    ap.add_argument("--seeds", type=int, default=8, help="images per concept and box")
    ap.add_argument("--method", default="regional_routed_lc", help="a regional method of benchmarks.composition")
    ap.add_argument("--out", type=Path, default=None, help="also write the table and JSON here")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    names = concept_names(args.concepts)
    boot(args.threads)
    from benchmarks.composition import METHODS, Bench, BenchSettings
    from omg_core.toyworld import concepts as C
    from omg_core.toyworld.detector import CLASSES, load_detector
    from omg_core.toyworld.generate import load_toyworld, locate

    methods = {m.name: m for m in METHODS if m.conditioning in ("fused", "routed") and m.objects == "concepts"}
    if args.method not in methods:
        raise SystemExit(f"--method {args.method!r}: use one of {', '.join(methods)}")
    started = time.time()
    model, clip, vae = load_toyworld(bf16=True)
    detector = load_detector()
    concepts = C.load_bench_concepts(model, clip, basis_directory=args.concepts_dir, names=tuple(names))
    bench = Bench(model, clip, vae, detector, concepts, BenchSettings())
    rows: dict[str, dict[str, list[str]]] = {}
    for box_name, box in BOXES.items():
        for i, name in enumerate(names):
            images = bench.render(methods[args.method], [name], (box,), 50 + i, args.seeds)
            probs = detector.probabilities(images, locate(images))
            rows.setdefault(box_name, {})[name] = [CLASSES[j] for j in probs.argmax(-1).tolist()]
            print(f"{box_name}: {name} {rows[box_name][name].count(name)}/{args.seeds}", flush=True)
    table = format_table(rows, names, args.seeds)
    print(table)
    source = args.concepts_dir or f"shipped {methods[args.method].concepts} concepts"
    print(f"{args.method}, {source}; the detector's reading of the largest object; {time.time() - started:.0f} s")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "box_shapes.md").write_text(table + "\n")
        (args.out / "box_shapes.json").write_text(json.dumps({"method": args.method, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
