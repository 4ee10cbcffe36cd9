"""The fusion methods, one list. A method is a closed-form map G from the
feature rows (ΔW = T G) or, for ``additive``, none at all: the exact sum.
A new method is a module with a ``solve_map`` and one entry here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from omg_core.ops.fusion import constrained, least_squares

SolveMap = Callable[[torch.Tensor, float, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class FusionMethod:
    name: str
    solve_map: SolveMap | None  # None: the exact sum, no fit
    exact_on_features: bool = False  # keeps each concept exactly on its features: its residual is reported


FUSION_METHODS: dict[str, FusionMethod] = {
    m.name: m
    for m in (
        FusionMethod("additive", None),
        FusionMethod("least_squares", least_squares.solve_map),
        FusionMethod("constrained", constrained.solve_map, exact_on_features=True),
    )
}
