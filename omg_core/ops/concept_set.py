"""Checks that a list of concepts can be compared or fused at all.

Orthogonality metrics, orthogonalisation and fusion all look at several
concepts layer by layer; each would otherwise fail deep inside a matrix
product (or, worse, silently produce NaN images) when the list is empty,
mixes model families, names one concept twice or carries non-finite
weights. The checks live here once so every entry point says the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from omg_core.families import FAMILIES
from omg_core.model.concept import Concept
from omg_core.model.updates import as_update, check_update_finite


def validate_concepts(concepts: Sequence[Concept], what: str = "this") -> list[Concept]:
    """The concepts as a list, or a ValueError that says how to fix the input."""
    concepts = list(concepts or [])
    if not concepts:
        raise ValueError(f"no concepts were given to {what}; connect at least one OMG Load Concept")
    families = {c.family for c in concepts if c.family != "unknown"}
    if len(families) > 1:
        listing = ", ".join(f"{c.name!r} ({c.family})" for c in concepts)
        raise ValueError(
            f"the concepts belong to different model families: {listing}; use concepts made for one base model "
            f"({', '.join(f'{f.label} adapters with an {f.label} checkpoint' for f in FAMILIES)})"
        )
    seen: set[str] = set()
    for c in concepts:
        if c.name in seen:
            raise ValueError(
                f"two concepts are both named {c.name!r}; give each OMG Load Concept a different name so their "
                "results can be told apart"
            )
        seen.add(c.name)
    for c in concepts:
        for key, update in c.layers().items():
            as_update(update, f"layer {key} of concept {c.name!r}")
    _check_all_finite(concepts)
    shapes: dict[str, tuple[int, int, str]] = {}
    for c in concepts:
        for key, update in c.layers().items():
            shape = (update.out_features, update.in_features, c.name)
            known = shapes.setdefault(key, shape)
            if known[:2] != shape[:2]:
                raise ValueError(
                    f"concepts {known[2]!r} and {c.name!r} disagree on the shape of layer {key} "
                    f"({known[0]}x{known[1]} vs {shape[0]}x{shape[1]}); they were made for different base models"
                )
    return concepts


def _check_all_finite(concepts: Sequence[Concept]) -> None:
    """One reduction per tensor, one check for all: a tensor holding NaN/Inf has a
    non-finite sum. Only when some sum is non-finite are the layers checked one
    by one, to name the culprit (a finite tensor whose float32 sum overflows is
    let through)."""
    entries = [(c, key, u) for c in concepts for key, u in c.layers().items()]
    tensors = [t for _, _, u in entries for t in u.factors()]
    if not tensors:
        return
    sums = torch.stack([t.sum().float() for t in tensors])
    scales_ok = all(math.isfinite(u.scale) for _, _, u in entries)
    if scales_ok and bool(torch.isfinite(sums).all()):
        return
    for c, key, update in entries:
        check_update_finite(key, update, owner=f"concept {c.name!r}")
