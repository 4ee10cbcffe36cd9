"""A layer's fused patch (one update or several summed): applying it, its dense
matrix, and the exact sum the additive method is."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from omg_core.model.updates import LayerPatch, LayerUpdate, as_update_list, combine_updates


def patch_apply(patch: LayerPatch, x: torch.Tensor) -> torch.Tensor:
    """ΔW x for a layer patch (one update or several summed), without forming ΔW."""
    return sum(u.apply(x) for u in as_update_list(patch))


def update_dense(update: LayerUpdate, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """ΔW as an [out, in] matrix, by default in float64 (the updates' own ``dense()`` defaults to float32)."""
    return update.dense(dtype)


def patch_dense(patch: LayerPatch, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The summed [out, in] matrix of a layer patch; for small layers, tests and SVD."""
    return sum(update_dense(u, dtype) for u in as_update_list(patch))


def add_updates(updates: Sequence[LayerUpdate]) -> LayerPatch:
    """The exact sum of one layer's updates, kept factored (a kind it does not know raises)."""
    return combine_updates(updates)
