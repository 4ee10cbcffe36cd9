"""A routed concept's attention projections besides cross-attention k/v, acting where its region is.

Why: a concept adapted on cross-attention k/v alone can recombine the parts the base
model already draws, but cannot teach it a new one — on the toy world the two concepts
with a part no base object has (the kite's and the berry's downward triangle) are drawn
with that part missing or in the wrong colours, and the same concepts trained on every
attention projection are recognised alone 31/32 times instead of 19/32
(``assets/toyworld/bench/trainer/attention``). Routed mode used to refuse such concepts.

Here each of those projections, in each region's concept, changes the layer's output
at each token position by the region's coverage there:

    y(p) = W x(p) + Σ_i m_i(p) · ΔW_i x(p)

A self-attention query is adapted at its own position, a key and a value at theirs
(each is a linear map of the token at that position); outside every region the base
model's projection stands, so "no regions" and the background are untouched. In a
box's own latent-composition pass the region covers the whole window, so there the
concept acts exactly as when it is loaded alone.

Pure torch; the ComfyUI patches that call this are in ``omg_core.bridge.attention_patch``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

# The projections of a transformer block a routed concept may change besides attn2 k/v
# (ComfyUI's module names under the block).
ROUTED_PROJECTIONS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_out.0")

Delta = Callable[[torch.Tensor], torch.Tensor]  # x [..., in] -> ΔW x [..., out]


def projection_key(block_path: str, projection: str) -> str:
    """The concept layer key of ``projection`` in the transformer block at ``block_path``."""
    return f"diffusion_model.{block_path}.{projection}.weight"


def support(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(r0, r1, c0, c1): the rows and columns of a [h, w] mask that hold anything, or None."""
    rows = torch.nonzero(mask.amax(1) > 0).flatten()
    cols = torch.nonzero(mask.amax(0) > 0).flatten()
    if rows.numel() == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def add_region_deltas(
    y: torch.Tensor,
    x: torch.Tensor,
    h: int,
    w: int,
    parts: Sequence[tuple[torch.Tensor, tuple[int, int, int, int] | None, Delta]],
) -> torch.Tensor:
    """``y`` [B, h·w, out] plus each part's ``mask ⊙ ΔW x`` (mask [h, w] in 0..1), with ΔW
    applied only on the mask's ``support`` cells, given with it (read once per grid from the
    mask on the CPU, so that sampling on a GPU does not wait on it in every block). Returns
    ``y`` itself when no part has any support (then nothing was computed)."""
    out = None
    for mask, cells, delta in parts:
        if cells is None:
            continue
        r0, r1, c0, c1 = cells
        if out is None:
            out = y.clone(memory_format=torch.contiguous_format)
        xs = x.reshape(x.shape[0], h, w, x.shape[-1])[:, r0:r1, c0:c1]
        change = delta(xs.float()) * mask[r0:r1, c0:c1, None].float()
        view = out.view(out.shape[0], h, w, out.shape[-1])
        view[:, r0:r1, c0:c1] += change.to(out.dtype)
    return y if out is None else out
