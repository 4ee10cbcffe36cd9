"""Seeded procedural scenes: coloured shapes with captions and ground-truth boxes.

The world is small on purpose. A 64×64 image becomes an 8×8 latent, which a
SD1.5-layout UNet with one resolution level denoises in milliseconds on a CPU,
and at that size only a few, well separated kinds of object stay recognisable
after an 8× autoencoder: four solid shapes in four saturated colours on light
backgrounds. Every object fills its drawing box edge to edge (the circle's
bounding box, the triangle's base and apex, the cross's arms), so the box that
placed an object is also its exact ground-truth box.

The *personal* objects are what a user would bring: things the base model is
never shown. Each is a new arrangement of the colours and parts the base model
does know (a blue disc with a yellow centre, a yellow house under a red roof…),
so, as with a real photographed dog that a real model has never seen, a
k/v-only adapter can teach them by re-pointing what the model already draws,
and each is told apart from every base object by its second colour and layout.

Images are drawn 4× larger with PIL and box-filtered down, which gives
antialiased edges like a photograph's rather than aliased stair-steps; all
randomness comes from a ``numpy.random.Generator`` the caller seeds.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
COMPOSITION_SIZE = 128  # the canvas compositions are drawn on (and the base model's second training size)
_SUPERSAMPLE = 4

# The caption of a scene with no object. The empty prompt "" stays the
# unconditional one (caption dropout: "any scene"), so CFG keeps its meaning;
# a workflow that wants nothing outside its boxes says so with this caption
# as its global prompt, as a user writes a background into a real one.
EMPTY_CAPTION = "an empty background"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 45),
    "green": (40, 160, 60),
    "blue": (45, 85, 215),
    "yellow": (235, 195, 35),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
BASE_OBJECTS: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)

# name -> trigger word (what a prompt says to summon it). No base caption uses
# these words, and each is ONE token of the CLIP vocabulary, so a file format
# that stores a trigger as a single new-token vector (ED-LoRA, Custom
# Diffusion) can hold exactly what the word means to the text encoder.
PERSONAL_OBJECTS: dict[str, str] = {
    "target": "target",
    "house": "house",
    "kite": "kite",
    "berry": "berry",
}

# Light backgrounds, one with a faint texture, so "background" is not one colour.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (232, 232, 228),
    "beige": (240, 228, 205),
    "sky": (212, 226, 242),
    "paper": (236, 236, 232),
}

Box = tuple[int, int, int, int]  # pixels: x0, y0, x1, y1 (x1, y1 exclusive)


@dataclass(frozen=True)
class PlacedObject:
    label: str  # a base object ("red circle") or a personal object's name ("target")
    box: Box


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # uint8 [size, size, 3]
    caption: str
    objects: tuple[PlacedObject, ...]
    background: str


def is_personal(label: str) -> bool:
    return label in PERSONAL_OBJECTS


def prompt_name(label: str) -> str:
    """How a caption names an object: "red circle", or a personal object's trigger."""
    if label in PERSONAL_OBJECTS:
        return PERSONAL_OBJECTS[label]
    if label not in BASE_OBJECTS:
        raise ValueError(
            f"unknown toy-world object {label!r}; use one of {list(BASE_OBJECTS) + list(PERSONAL_OBJECTS)}"
        )
    return label


def caption(labels: list[str] | tuple[str, ...]) -> str:
    """ "a red circle", "a red circle and a blue square", "a, b and c" — in the given order
    (no object: ``EMPTY_CAPTION``)."""
    if not labels:
        return EMPTY_CAPTION
    parts = [f"a {prompt_name(label)}" for label in labels]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


# ------------------------------------------------------------------ drawing
def _background(name: str, image_size: int = IMAGE_SIZE) -> Image.Image:
    size = image_size * _SUPERSAMPLE
    rgb = np.empty((size, size, 3), dtype=np.uint8)
    rgb[:] = BACKGROUNDS[name]
    if name == "paper":
        yy, xx = np.mgrid[0:size, 0:size] // _SUPERSAMPLE
        rgb[((xx + yy) % 8) < 2] -= 12
    return Image.fromarray(rgb)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if shape == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0 + w / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)
    elif shape == "cross":
        t = w / 3
        draw.rectangle([x0 + t, y0, x1 - t - 1, y1 - 1], fill=fill)
        draw.rectangle([x0, y0 + h / 3, x1 - 1, y1 - h / 3 - 1], fill=fill)
    elif shape == "down_triangle":
        draw.polygon([(x0, y0), (x1 - 1, y0), (x0 + w / 2, y1 - 1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _draw_personal(draw: ImageDraw.ImageDraw, name: str, box: tuple[float, float, float, float]) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    c = COLOURS
    if name == "target":  # blue disc, yellow centre
        _draw_shape(draw, "circle", box, c["blue"])
        r = 0.24
        _draw_shape(
            draw,
            "circle",
            (x0 + w * (0.5 - r), y0 + h * (0.5 - r), x0 + w * (0.5 + r), y0 + h * (0.5 + r)),
            c["yellow"],
        )
    elif name == "house":  # yellow body under a red roof
        _draw_shape(draw, "square", (x0 + w * 0.14, y0 + h * 0.45, x1 - w * 0.14, y1), c["yellow"])
        _draw_shape(draw, "triangle", (x0, y0, x1, y0 + h * 0.48), c["red"])
    elif name == "kite":  # diamond: green upper half, blue lower half
        _draw_shape(draw, "triangle", (x0, y0, x1, y0 + h / 2), c["green"])
        _draw_shape(draw, "down_triangle", (x0, y0 + h / 2, x1, y1), c["blue"])
    elif name == "berry":  # red disc with a green leaf on top
        _draw_shape(draw, "circle", (x0 + w * 0.05, y0 + h * 0.2, x1 - w * 0.05, y1), c["red"])
        _draw_shape(draw, "down_triangle", (x0 + w * 0.25, y0, x1 - w * 0.25, y0 + h * 0.42), c["green"])
    else:
        raise ValueError(f"unknown personal object {name!r}; use one of {list(PERSONAL_OBJECTS)}")


def render(
    objects: list[PlacedObject] | tuple[PlacedObject, ...], background: str = "grey", size: int = IMAGE_SIZE
) -> np.ndarray:
    """The ``size``-px image of the given objects (boxes in its pixels), each filling its box, later ones on top."""
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; use one of {list(BACKGROUNDS)}")
    img = _background(background, size)
    draw = ImageDraw.Draw(img)
    s = _SUPERSAMPLE
    for obj in objects:
        box = tuple(float(v * s) for v in obj.box)
        if obj.label in PERSONAL_OBJECTS:
            _draw_personal(draw, obj.label, box)
        else:
            colour, shape = prompt_name(obj.label).split(" ")
            _draw_shape(draw, shape, box, COLOURS[colour])
    img = img.resize((size, size), Image.BOX)
    return np.asarray(img, dtype=np.uint8).copy()


# ------------------------------------------------------------------ layouts
_SIZE_RANGE = {1: (22, 40), 2: (18, 32), 3: (16, 28), 4: (16, 26)}


def sample_layout(
    rng: np.random.Generator,
    n: int,
    size_range: tuple[int, int] | None = None,
    image_size: int = IMAGE_SIZE,
    gap: int = 2,
) -> list[Box]:
    """``n`` square, non-overlapping boxes (``gap`` px apart), ordered left to right.

    Left-to-right order is the order captions name objects in, so a caption
    says something about where things are without naming positions."""
    if not 1 <= n <= 4:
        raise ValueError(f"a toy scene holds 1 to 4 objects, not {n}")
    lo, hi = size_range or _SIZE_RANGE[n]
    for _ in range(1000):
        boxes: list[Box] = []
        for _ in range(n):
            for _ in range(100):
                s = int(rng.integers(lo, hi + 1))
                x, y = (int(v) for v in rng.integers(0, image_size - s + 1, size=2))
                b = (x, y, x + s, y + s)
                if all(_apart(b, o, gap) for o in boxes):
                    boxes.append(b)
                    break
        if len(boxes) == n:
            return sorted(boxes, key=lambda b: (b[0] + b[2], b[1] + b[3]))
    raise RuntimeError(f"could not place {n} objects of size {lo}-{hi} px")


def _apart(a: Box, b: Box, gap: int) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def box_in_region(rng: np.random.Generator, region: Box, fill: tuple[float, float] = (0.6, 0.95)) -> Box:
    """A square object box inside a region box, covering ``fill`` of its shorter side."""
    x0, y0, x1, y1 = region
    side = min(x1 - x0, y1 - y0)
    s = max(6, int(round(side * rng.uniform(*fill))))
    x = int(rng.integers(x0, x1 - s + 1))
    y = int(rng.integers(y0, y1 - s + 1))
    return (x, y, x + s, y + s)


# ------------------------------------------------------------------ datasets
def base_caption_pool(seed: int = 0, n_triples: int = 160, n_quads: int = 80) -> list[tuple[str, ...]]:
    """The object lists base captions are drawn from: every single object, every
    ordered pair of different objects, and a seeded sample of triples and quads.

    A fixed pool (a few hundred captions) lets training encode each caption
    once with the frozen text encoder instead of once per image."""
    rng = np.random.default_rng(seed)
    pool: list[tuple[str, ...]] = [(o,) for o in BASE_OBJECTS]
    pool += list(itertools.permutations(BASE_OBJECTS, 2))
    for n, count in ((3, n_triples), (4, n_quads)):
        seen: set[tuple[str, ...]] = set()
        while len(seen) < count:
            seen.add(tuple(BASE_OBJECTS[i] for i in rng.choice(len(BASE_OBJECTS), size=n, replace=False)))
        pool += sorted(seen)
    return pool


_N_OBJECTS_WEIGHTS = {1: 0.4, 2: 0.3, 3: 0.2, 4: 0.1}


def sample_base_scene(rng: np.random.Generator, pool: list[tuple[str, ...]]) -> tuple[Scene, int]:
    """A random scene whose objects are a pool entry; returns it and the entry's index."""
    n = int(rng.choice(list(_N_OBJECTS_WEIGHTS), p=list(_N_OBJECTS_WEIGHTS.values())))
    candidates = [i for i, entry in enumerate(pool) if len(entry) == n]
    index = int(candidates[int(rng.integers(len(candidates)))])
    labels = pool[index]
    boxes = sample_layout(rng, n)
    background = str(rng.choice(list(BACKGROUNDS)))
    objects = tuple(PlacedObject(label, box) for label, box in zip(labels, boxes))
    return Scene(render(objects, background), caption(labels), objects, background), index


# Composition scenes: the object sides as shares of the canvas, by object count.
# A benchmark box is 30-50 % of the side and the object drawn in it fills most
# of its shorter side, so objects of a quarter to a half of the canvas, at
# least 4 % of the side apart (the layouts' gap), are what compositions ask for.
_COMPOSITION_SIDES = {1: (0.30, 0.60), 2: (0.25, 0.48), 3: (0.22, 0.45), 4: (0.22, 0.42)}
_COMPOSITION_WEIGHTS = {0: 0.08, 1: 0.22, 2: 0.30, 3: 0.24, 4: 0.16}


def sample_composition_scene(
    rng: np.random.Generator, pool: list[tuple[str, ...]], size: int = COMPOSITION_SIZE
) -> tuple[Scene, int]:
    """A ``size``-px scene laid out like the composition benchmark's, and its pool index.

    0 to 4 base objects (a pool entry; index ``len(pool)`` with no object, whose
    caption is ``EMPTY_CAPTION``), each a quarter to a half of the canvas side,
    gapped as the benchmark's boxes are, so the base model learns the object
    sizes and the empty space between them that compositions ask for."""
    n = int(rng.choice(list(_COMPOSITION_WEIGHTS), p=list(_COMPOSITION_WEIGHTS.values())))
    background = str(rng.choice(list(BACKGROUNDS)))
    if n == 0:
        return Scene(render((), background, size), EMPTY_CAPTION, (), background), len(pool)
    candidates = [i for i, entry in enumerate(pool) if len(entry) == n]
    index = int(candidates[int(rng.integers(len(candidates)))])
    labels = pool[index]
    lo, hi = (int(round(v * size)) for v in _COMPOSITION_SIDES[n])
    boxes = sample_layout(rng, n, (lo, hi), image_size=size, gap=int(round(0.04 * size)))
    objects = tuple(PlacedObject(label, box) for label, box in zip(labels, boxes))
    return Scene(render(objects, background, size), caption(labels), objects, background), index


_CLUTTER_SHAPES = (*SHAPES, "down_triangle")


def clutter_scene(rng: np.random.Generator) -> np.ndarray:
    """1–6 shapes of any colour and size (6–44 px), overlapping freely.

    Only the autoencoder sees these: a VAE is meant to encode any image, and
    overlaps make nested and stacked two-colour arrangements common, so it
    learns to keep a small coloured part inside a larger one without ever
    being shown a personal object."""
    img = _background(str(rng.choice(list(BACKGROUNDS))))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 7))):
        s = int(rng.integers(6, 45))
        x, y = (int(v) for v in rng.integers(-s // 4, IMAGE_SIZE - 3 * s // 4, size=2))
        shape = _CLUTTER_SHAPES[int(rng.integers(len(_CLUTTER_SHAPES)))]
        colour = list(COLOURS.values())[int(rng.integers(len(COLOURS)))]
        box = tuple(float(v * _SUPERSAMPLE) for v in (x, y, x + s, y + s))
        _draw_shape(draw, shape, box, colour)
    img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)
    return np.asarray(img, dtype=np.uint8).copy()


def personal_scene(rng: np.random.Generator, name: str, size: int = IMAGE_SIZE) -> Scene:
    """One personal object alone, at a random size (3/8 to 5/8 of the side) and place: a training photo."""
    if name not in PERSONAL_OBJECTS:
        raise ValueError(f"unknown personal object {name!r}; use one of {list(PERSONAL_OBJECTS)}")
    box = sample_layout(rng, 1, (size * 3 // 8, size * 5 // 8), image_size=size)[0]
    background = str(rng.choice(list(BACKGROUNDS)))
    objects = (PlacedObject(name, box),)
    return Scene(render(objects, background, size), caption([name]), objects, background)


def personal_training_set(name: str, n: int = 10, seed: int = 0, size: int = IMAGE_SIZE) -> list[Scene]:
    """The ~10 photos a user would give the trainer for one personal object, ``size`` px."""
    if name not in PERSONAL_OBJECTS:
        raise ValueError(f"unknown personal object {name!r}; use one of {list(PERSONAL_OBJECTS)}")
    rng = np.random.default_rng([seed, list(PERSONAL_OBJECTS).index(name)])
    return [personal_scene(rng, name, size) for _ in range(n)]


def to_tensor(images: np.ndarray | list[np.ndarray]):
    """uint8 HWC image(s) -> float32 [B, 3, H, W] in 0..1, the layout models take."""
    import torch

    arr = np.stack(images) if isinstance(images, list) else images
    if arr.ndim == 3:
        arr = arr[None]
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255.0)
