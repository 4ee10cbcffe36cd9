"""What the composition benchmark saw in each box, and outside every box.

A rate of "every concept in its box" says that placement fails, not how.
Each box gets one outcome — ``right`` (its concept), ``spill`` (its concept
found, but mostly outside the box), ``bleed`` (another concept of the same
image), ``base`` (a base object), ``empty``, or ``other`` (a concept not in
this image) — and each image a count of **stray objects**: foreground blobs
lying mostly outside every box that the detector names as an object.

Blobs are the connected components of foreground pixels (pixels that differ
from the border's median colour, as ``generate.locate`` finds them), each
named by the detector on its padded square bounding box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from omg_core.toyworld import scenes as S
from omg_core.toyworld.detector import Detector

BoxN = tuple[float, float, float, float]
OUTCOMES = ("right", "spill", "bleed", "base", "empty", "other")
MIN_BLOB = 0.004  # of the image area: smaller specks are noise, not objects (an object is ~5 % of the canvas)
MOSTLY = 0.5  # a blob is in a box when at least this share of it lies inside


@dataclass(frozen=True)
class Blob:
    box: BoxN  # padded square box the detector reads, normalised
    mask: np.ndarray  # [H, W] bool
    label: str

    def share_inside(self, box: BoxN) -> float:
        h, w = self.mask.shape
        x0, y0, x1, y1 = box
        r0, r1 = int(round(y0 * h)), int(round(y1 * h))
        c0, c1 = int(round(x0 * w)), int(round(x1 * w))
        return float(self.mask[r0:r1, c0:c1].sum()) / max(1, int(self.mask.sum()))


def foreground_blobs(
    image: torch.Tensor, threshold: float = 0.18, pad: float = 0.15, min_area: float = MIN_BLOB
) -> list[tuple[BoxN, np.ndarray]]:
    """(padded box, mask) of each foreground component of one image [3, H, W]
    of at least ``min_area`` of the image."""
    from scipy import ndimage

    border = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], dim=1)
    bg = border.median(dim=1).values
    mask = ((image - bg[:, None, None]).abs().amax(0) > threshold).numpy()
    labels, n = ndimage.label(mask)
    h, w = mask.shape
    out = []
    for k in range(1, n + 1):
        component = labels == k
        if component.sum() < min_area * h * w:
            continue
        ys, xs = component.nonzero()
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        side = max(x1 - x0, y1 - y0) * (1 + 2 * pad)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        box = (
            max(0.0, (cx - side / 2) / w),
            max(0.0, (cy - side / 2) / h),
            min(1.0, (cx + side / 2) / w),
            min(1.0, (cy + side / 2) / h),
        )
        out.append((box, component))
    return out


def named_blobs(detector: Detector, image: torch.Tensor) -> list[Blob]:
    found = foreground_blobs(image)
    if not found:
        return []
    labels = detector.classify(image, [b for b, _ in found])
    return [Blob(b, m, lab) for (b, m), lab in zip(found, labels)]


def box_outcome(found: str, want: str, others: Sequence[str], blobs: Sequence[Blob], box: BoxN) -> str:
    """The outcome of one box that should hold ``want`` and shows ``found``;
    ``others`` are the other concepts of the image."""
    if found == want:
        return "right"
    if any(b.label == want and 0 < b.share_inside(box) < MOSTLY for b in blobs):
        return "spill"
    if found in others:
        return "bleed"
    if found in S.BASE_OBJECTS:
        return "base"
    if found == "empty":
        return "empty"
    return "other"


def strays(blobs: Sequence[Blob], boxes: Sequence[BoxN]) -> int:
    """Objects lying mostly outside every box."""
    return sum(1 for b in blobs if b.label != "empty" and max(b.share_inside(x) for x in boxes) < MOSTLY)


@dataclass(frozen=True)
class ImageReading:
    found: tuple[str, ...]  # the detector's label in each box
    outcomes: tuple[str, ...]  # box_outcome of each box
    strays: int


def read_image(detector: Detector, image: torch.Tensor, boxes: Sequence[BoxN], wanted: Sequence[str]) -> ImageReading:
    """What one composition image shows in and around its boxes."""
    found = detector.classify(image, list(boxes))
    blobs = named_blobs(detector, image)
    outcomes = tuple(
        box_outcome(f, want, [w for w in wanted if w != want], blobs, box) for f, want, box in zip(found, wanted, boxes)
    )
    return ImageReading(tuple(found), outcomes, strays(blobs, boxes))
