"""Trainer fidelity on the toy world: which training settings make a concept recognisable alone.

    python -m benchmarks.trainer_fidelity                       # the default sweep
    python -m benchmarks.trainer_fidelity --variant long:steps=800 --variant hot:learning_rate=0.015

A concept that is not recognised by itself cannot be recognised in company,
so "alone" caps every composition rate. Each variant is the toy world's
concept recipe (``concepts.ConceptTrainSettings`` made into a ``TrainConfig``
by ``concepts.train_config``) with some ``TrainConfig`` fields replaced; every
personal concept is trained with it in its own basis slot, exactly as the
shipped concepts are, and then generated alone from ``--seeds`` seeds:

* ``boxed`` — in the single-concept box of the fixed layouts, by the
  composition benchmark's placement method (``--method``, default the
  routed latent composition), as the composition benchmark's "alone" does;
* ``prompt`` — by its trigger prompt on the whole canvas with the concept
  fused in (no regions): the concept itself, without placement.

The detector reads the largest object of each image. Variant ``shipped``
evaluates the concept files that ship (no training). Each variant's files
stay under ``--out`` and a finished variant is not trained again, so an
interrupted sweep resumes; the table and JSON are rewritten after each one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.toy_host import boot, concept_names
from omg_core.toyworld import scenes as S

DEFAULT_VARIANTS = (
    "shipped",
    "hot:learning_rate=0.015",
    "embedding:embedding_lr=0.05",
    "boxes:crop=0.4,learning_rate=0.01",  # the probe's best boxed reading (bench/trainer/recipe)
    "long:steps=800",
)
_FLAG = {"true": True, "false": False}
_FIELD_TYPES = {
    **dict.fromkeys(
        ("steps", "rank", "batch_size", "augment_variants", "slot", "seed", "basis_seed", "embedding_vectors"), int
    ),
    **dict.fromkeys(("form", "target", "down", "prompt", "class_prompt"), str),
    **dict.fromkeys(("flip", "learn_embedding"), _FLAG.__getitem__),
}
IMAGE_FIELDS = {"size": int}  # of the training photos (concepts.ConceptTrainSettings), not of TrainConfig


@dataclasses.dataclass
class Variant:
    name: str
    changes: dict

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``name`` or ``name:field=value,field=value`` (fields of ``omg_core.pipelines.train.TrainConfig``,
        and ``size``: the training photos' side in pixels)."""
        from omg_core.pipelines.train import TrainConfig

        name, _, rest = text.partition(":")
        known = {f.name for f in dataclasses.fields(TrainConfig)} | set(IMAGE_FIELDS)
        changes = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            if not eq or key not in known:
                raise SystemExit(
                    f"variant {text!r}: {part!r} is not field=value of a TrainConfig field ({sorted(known)})"
                )
            changes[key] = {**_FIELD_TYPES, **IMAGE_FIELDS}.get(key, float)(value)
        return cls(name.strip(), changes)


def train_variant(model, clip, vae, variant: Variant, directory: Path, log, names: Sequence[str]) -> dict:
    """Train the personal concepts ``names`` with the variant's settings (skipping finished files);
    each keeps its own basis slot, as the shipped concepts do."""
    from omg_core.formats.native import save_native
    from omg_core.pipelines.train import train_concept
    from omg_core.toyworld import concepts as C

    seconds = {}
    image_changes = {k: v for k, v in variant.changes.items() if k in IMAGE_FIELDS}
    settings = dataclasses.replace(C.ConceptTrainSettings(), **image_changes)
    config_changes = {k: v for k, v in variant.changes.items() if k not in IMAGE_FIELDS}
    Path(directory).mkdir(parents=True, exist_ok=True)
    for slot, name in enumerate(S.PERSONAL_OBJECTS):
        if name not in names:
            continue
        path = C.concept_file(name, "orthogonal", directory)
        stats = C.trained_stats(path)
        if stats is None:
            config = dataclasses.replace(C.train_config(name, slot, "orthogonal", settings), **config_changes)
            result = train_concept(
                model, clip, vae, C.training_images(name, settings.images, settings.seed, settings.size), config
            )
            stats = {
                "seconds": round(result.seconds, 1),
                "probe_loss_start": result.probe_loss_start,
                "probe_loss_end": result.probe_loss_end,
            }
            save_native(path, result.concept, {"toyworld": "1", "down": "basis", "toyworld_train": stats})
            log(f"  {variant.name}/{name}: {stats['seconds']:.0f} s, probe loss {result.probe_loss_end:.4f}")
        seconds[name] = stats["seconds"]
    return seconds


def evaluate(model, clip, vae, detector, directory: Path, method: str, seeds: int, names: Sequence[str]) -> dict:
    """Per concept: (boxed hits, prompt hits, images) — see the module docstring."""
    from benchmarks.composition import LAYOUTS, METHODS, Bench, BenchSettings, MethodResult
    from omg_core.toyworld import concepts as C
    from omg_core.toyworld.detector import CLASSES
    from omg_core.toyworld.generate import locate

    shipped = Path(directory) == C.CONCEPT_DIR  # the kind each method uses; a variant's files stand for both
    concepts = C.load_bench_concepts(model, clip, basis_directory=None if shipped else directory, names=tuple(names))
    bench = Bench(model, clip, vae, detector, concepts, BenchSettings(alone_seeds=seeds))
    boxed = MethodResult()
    bench.alone(next(m for m in METHODS if m.name == method), boxed)
    whole = next(m for m in METHODS if m.name == "no_regions")
    out = {}
    for i, name in enumerate(bench.names):
        images = bench.render(whole, [name], LAYOUTS[1], 7000 + i, seeds)
        hits = int((detector.probabilities(images, locate(images)).argmax(-1) == CLASSES.index(name)).sum())
        out[name] = {"boxed": boxed.alone_per_concept[name].k, "prompt": hits, "n": seeds}
    return out


def format_table(rows: dict) -> str:
    from benchmarks.composition import Rate

    names = list(S.PERSONAL_OBJECTS)
    head = ["variant", "changes", "train s/concept"] + [f"{n} boxed/prompt" for n in names] + ["boxed", "prompt"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for name, row in rows.items():
        per = row["concepts"]
        boxed = Rate(sum(p["boxed"] for p in per.values()), sum(p["n"] for p in per.values()))
        prompt = Rate(sum(p["prompt"] for p in per.values()), sum(p["n"] for p in per.values()))
        secs = row["seconds"]
        cells = [name, ", ".join(f"{k}={v}" for k, v in row["changes"].items()) or "-"]
        cells.append(f"{sum(secs.values()) / len(secs):.0f}" if secs else "-")
        cells += [f"{per[n]['boxed']}/{per[n]['prompt']} of {per[n]['n']}" if n in per else "-" for n in names]
        cells += [str(boxed), str(prompt)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", help="name[:field=value,...] (repeatable; default: a sweep)")
    ap.add_argument("--seeds", type=int, default=16, help="images per concept and reading")
    ap.add_argument("--method", default="regional_routed_lc", help="composition-benchmark method of the boxed reading")
    ap.add_argument("--out", type=Path, default=None, help="folder for variants' concepts, table and JSON")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--concepts", default=",".join(S.PERSONAL_OBJECTS), help="comma-separated personal concepts")
    args = ap.parse_args(argv)
    variants = [Variant.parse(v) for v in (args.variant or DEFAULT_VARIANTS)]
    names = concept_names(args.concepts)
    boot(args.threads, flush_denormal=True)
    from omg_core.toyworld import concepts as C
    from omg_core.toyworld.detector import load_detector
    from omg_core.toyworld.generate import load_toyworld

    out = args.out or Path(__file__).resolve().parent.parent / ".cache" / "toyworld" / "bench-trainer"
    out.mkdir(parents=True, exist_ok=True)
    model, clip, vae = load_toyworld(bf16=True)
    detector = load_detector()
    rows = json.loads((out / "trainer.json").read_text()) if (out / "trainer.json").exists() else {}
    for v in variants:
        started = time.time()
        if v.name == "shipped":
            directory, seconds = C.CONCEPT_DIR, {}
        else:
            directory = out / v.name
            seconds = train_variant(model, clip, vae, v, directory, lambda m: print(m, flush=True), names)
        per = evaluate(model, clip, vae, detector, directory, args.method, args.seeds, names)
        rows[v.name] = {"changes": v.changes, "seconds": seconds, "concepts": per}
        print(f"{v.name}: {per} ({time.time() - started:.0f} s)", flush=True)
        (out / "trainer.json").write_text(json.dumps(rows, indent=1) + "\n")
        (out / "trainer.md").write_text(format_table(rows) + "\n")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
