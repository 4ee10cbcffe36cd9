"""Attention maps of chosen prompt tokens, collected while sampling.

Plain torch: the regional attention patch (``omg_core.bridge.attention_patch``)
feeds it the probabilities it computes anyway, and ``omg_core.pipelines.attention_maps``
draws what it holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from omg_core.ops.regions import RegionCells, RegionSpec

RECORDER_OPTION = "omg_attention_recorder"  # transformer_options key of a model's AttentionRecorder


class AttentionRecorder:
    """Collects cross-attention maps of chosen prompt tokens while sampling.

    ``tokens`` maps a label to ``(region, positions)``: region index in the
    spec (None for the global prompt) and token positions in that prompt's
    features. Maps are averaged over heads, batch rows, layers and steps, and
    a region's tokens are recorded where they are attended — inside its box.
    ``spec`` is the layout the maps are drawn on (``omg_core.pipelines.attention_maps``).

    Each model has its own: a clone sampled on its own must not add its maps
    to (or read them from) another clone's run. ModelPatcher clones copy their
    model options deeply up to ComfyUI 0.3.x (a deep copy of a recorder is a
    fresh, empty one) and only their dicts and lists since, sharing the
    recorder; so a recorder also knows the ``transformer_options`` dict it
    belongs to, and ``own_recorder`` gives a clone a fresh one of its own.
    """

    def __init__(self, tokens: dict[str, tuple[int | None, Sequence[int]]], spec: RegionSpec | None = None):
        self.tokens = {label: (region, list(pos)) for label, (region, pos) in tokens.items()}
        self.spec = spec
        self._sums: dict[tuple[str, int, int], torch.Tensor] = {}
        self._counts: dict[tuple[str, int, int], int] = {}

    owner: dict | None = None  # the transformer_options it was made for (see own_recorder)

    def __deepcopy__(self, memo):
        return AttentionRecorder(self.tokens, self.spec)

    def reset(self) -> None:
        """Forget what was recorded (a new sampling run starts)."""
        self._sums.clear()
        self._counts.clear()

    @property
    def empty(self) -> bool:
        return not self._sums

    def wants(self, region: int | None) -> list[tuple[str, list[int]]]:
        return [(label, pos) for label, (r, pos) in self.tokens.items() if r == region]

    def add(self, label: str, h: int, w: int, values: torch.Tensor, cells: RegionCells | None = None) -> None:
        """``values`` [B, n, P]: probabilities of n queries (the whole grid, or
        ``cells``' box) on P token positions."""
        full = torch.zeros(h, w)
        part = values.float().mean(dim=(0, 2)).cpu()
        if cells is None:
            full = part.reshape(h, w)
        else:
            (r0, r1), (c0, c1) = cells.rows, cells.cols
            full[r0:r1, c0:c1] = part.reshape(r1 - r0, c1 - c0)
        key = (label, h, w)
        self._sums[key] = self._sums.get(key, 0) + full
        self._counts[key] = self._counts.get(key, 0) + 1

    def maps(self, height: int, width: int) -> dict[str, torch.Tensor]:
        """Each label's map [height, width]: the mean over attention resolutions
        of the mean map at that resolution, resized bilinearly."""
        out: dict[str, list[torch.Tensor]] = {}
        for (label, h, w), total in self._sums.items():
            mean = total / self._counts[(label, h, w)]
            resized = torch.nn.functional.interpolate(mean[None, None], (height, width), mode="bilinear")
            out.setdefault(label, []).append(resized[0, 0])
        return {label: torch.stack(ms).mean(0) for label, ms in out.items()}


def own_recorder(transformer_options: dict) -> AttentionRecorder | None:
    """The recorder of the model whose ``transformer_options`` these are
    (installed there by OMG Apply Regional Attention, or inherited from the
    model it was cloned from, then replaced by a fresh one for the same
    tokens); None when the model records nothing."""
    recorder = transformer_options.get(RECORDER_OPTION)
    if not isinstance(recorder, AttentionRecorder):
        return None
    if recorder.owner is not transformer_options:
        recorder = AttentionRecorder(recorder.tokens, recorder.spec)
        recorder.owner = transformer_options
        transformer_options[RECORDER_OPTION] = recorder
    return recorder
