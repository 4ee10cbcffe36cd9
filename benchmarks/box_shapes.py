"""Each concept alone in boxes of other sizes, places and shapes, on the toy world.

    python -m benchmarks.box_shapes                          # the shipped concepts
    python -m benchmarks.box_shapes --concepts-dir DIR --concepts berry,house --seeds 8

The composition benchmark reads a concept alone in one box only (half the side, centred) and in
company in boxes of a third of the side, in corners, tall or wide. When a concept holds its box
alone but not in company, this tells whether the box's size, place or shape is the cause or the
company is: each concept is drawn by itself in each box below by the composition benchmark's
placement method (``--method``, default routed latent composition at the default placement) from
``--seeds`` seeds, and the detector reads the largest object of each image.

The toy recipe chooses an every-projection concept's step count by this reading
(``choose_steps``), from seeds that no reported table uses.
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


CHOICE_SEED = 1000  # the step choice's seeds: concept i reads from CHOICE_SEED + 100 i on


def read_boxes(bench, method, name: str, seed: int, seeds: int) -> dict[str, list[str]]:
    """What the detector reads in each of ``BOXES`` when ``name`` alone is drawn there ``seeds`` times."""
    from omg_core.toyworld.detector import CLASSES
    from omg_core.toyworld.generate import locate

    out = {}
    for box_name, box in BOXES.items():
        images = bench.render(method, [name], (box,), seed, seeds)
        probs = bench.detector.probabilities(images, locate(images))
        out[box_name] = [CLASSES[j] for j in probs.argmax(-1).tolist()]
    return out


def choose_steps(
    model, clip, vae, detector, name: str, files: dict[int, Path], seeds: int = 8, method: str = "regional_routed_lc"
) -> tuple[int, dict]:
    """The step count whose concept holds the most box shapes alone, ties to the fewer steps.

    Longer training teaches a shape's parts (the berry's leaf) and narrows the sizes the
    concept is drawn at (the house and the kite leave small boxes empty); this reading sees
    both, so it is what the candidates are ranked by. ``files``: steps -> concept file."""
    from benchmarks.composition import METHODS, Bench, BenchSettings
    from omg_core.bridge.binding import load_concept

    chosen = {m.name: m for m in METHODS}[method]
    seed = CHOICE_SEED + 100 * list(S.PERSONAL_OBJECTS).index(name)
    hits, misses = {}, {}
    for steps, path in sorted(files.items()):
        concept = load_concept(str(path), model, clip, name=name, triggers=S.PERSONAL_OBJECTS[name])
        bench = Bench(model, clip, vae, detector, {chosen.concepts: [concept]}, BenchSettings(methods=(method,)))
        labels = [lab for per_box in read_boxes(bench, chosen, name, seed, seeds).values() for lab in per_box]
        hits[steps] = labels.count(name)
        misses[steps] = {lab: labels.count(lab) for lab in sorted(set(labels) - {name})}
    best = max(hits.values())
    steps = min(k for k, v in hits.items() if v == best)
    return steps, {"hits": hits, "misses": misses, "of": seeds * len(BOXES), "seed": seed, "method": method}


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
    from omg_core.toyworld.detector import load_detector
    from omg_core.toyworld.generate import load_toyworld

    methods = {m.name: m for m in METHODS if m.conditioning in ("fused", "routed") and m.objects == "concepts"}
    if args.method not in methods:
        raise SystemExit(f"--method {args.method!r}: use one of {', '.join(methods)}")
    started = time.time()
    model, clip, vae = load_toyworld(bf16=True)
    detector = load_detector()
    concepts = C.load_bench_concepts(model, clip, basis_directory=args.concepts_dir, names=tuple(names))
    bench = Bench(model, clip, vae, detector, concepts, BenchSettings())
    rows: dict[str, dict[str, list[str]]] = {}
    for i, name in enumerate(names):
        for box_name, labels in read_boxes(bench, methods[args.method], name, 50 + i, args.seeds).items():
            rows.setdefault(box_name, {})[name] = labels
            print(f"{box_name}: {name} {labels.count(name)}/{args.seeds}", flush=True)
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
