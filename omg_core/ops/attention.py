"""Regional cross-attention math, in plain torch.

One attention pass of every query against the global prompt, then, for each
region, attention of only the queries inside the region's bounding box
against that region's keys/values; the region results are mixed into the
global output with the shares ``omg_core.ops.regions`` computes. Cost therefore
grows with the regions' areas, not with the number of regions times the
image: eight regions that tile the image cost about one extra cross-attention.

Queries of a ``[B, N, C]`` tensor are laid out row-major over the ``h × w``
attention grid (N = h·w), as ComfyUI's SpatialTransformer flattens them.
The attention function is passed in (ComfyUI's optimized attention inside the
patch, ``sdpa_attention`` here and in tests), with ComfyUI's calling
convention ``attention(q, k, v, heads) -> [B, N, C]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from omg_core.ops.regions import RegionCells

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention on ``[B, N, heads·d]`` tensors (ComfyUI's layout)."""
    b, n, c = q.shape
    d = c // heads
    qh = q.reshape(b, n, heads, d).transpose(1, 2)
    kh = k.reshape(k.shape[0], k.shape[1], heads, d).transpose(1, 2)
    vh = v.reshape(v.shape[0], v.shape[1], heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(qh, kh, vh)
    return out.transpose(1, 2).reshape(b, n, c)


def crop_queries(q: torch.Tensor, h: int, w: int, cells: RegionCells) -> torch.Tensor:
    """The queries inside ``cells``' bounding box, ``[B, rows·cols, C]``."""
    b, n, c = q.shape
    if n != h * w:
        raise ValueError(f"{n} queries do not fill a {h}×{w} attention grid")
    (r0, r1), (c0, c1) = cells.rows, cells.cols
    return q.view(b, h, w, c)[:, r0:r1, c0:c1].reshape(b, -1, c)


def region_attention(
    q: torch.Tensor,
    h: int,
    w: int,
    cells: RegionCells,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    attention: AttentionFn = sdpa_attention,
) -> torch.Tensor:
    """Attention of the queries in ``cells``' box against one region's k/v,
    ``[B, rows, cols, C]``.

    Region keys shared by every batch row (``k`` of batch 1) are attended with
    the rows folded into the query axis: one attention call, no copies of k/v.
    """
    qc = crop_queries(q, h, w, cells)
    b, n, c = qc.shape
    if k.shape[0] == 1 and b > 1:
        out = attention(qc.reshape(1, b * n, c), k, v, heads)
    else:
        out = attention(qc, k, v, heads)
    return out.reshape(b, cells.rows[1] - cells.rows[0], cells.cols[1] - cells.cols[0], c)


def mix_region(
    out: torch.Tensor, global_out: torch.Tensor, h: int, w: int, cells: RegionCells, region_out: torch.Tensor
) -> None:
    """``out += share · (region − global)`` on the region's box, in place."""
    b, _, c = out.shape
    (r0, r1), (c0, c1) = cells.rows, cells.cols
    share = cells.coef.to(device=out.device, dtype=out.dtype)[None, :, :, None]
    g = global_out.view(b, h, w, c)[:, r0:r1, c0:c1]
    out.view(b, h, w, c)[:, r0:r1, c0:c1] += share * (region_out - g)


RegionKV = tuple[torch.Tensor, torch.Tensor]


def regional_attention(
    q: torch.Tensor,
    global_out: torch.Tensor,
    h: int,
    w: int,
    cells: Sequence[RegionCells],
    region_kv: Sequence[RegionKV | None] | Callable[[RegionCells], RegionKV | None],
    heads: int,
    attention: AttentionFn = sdpa_attention,
    on_region: Callable[[RegionCells, RegionKV], None] | None = None,
) -> torch.Tensor:
    """``global + Σ_i share_i (attention(q, k_i, v_i) − global)``, each region
    computed on its box only — the mix the sampling-time patch runs.

    ``region_kv`` gives each cell's k/v: a list (``region_kv[j]`` belongs to
    ``cells[j]``) or a function of the cell, so that the patch projects a
    region's prompt only when the region is present at this resolution. None
    means "same as global" (a region without its own prompt on this branch).
    ``on_region(cell, kv)`` sees every region that was mixed (the attention-map
    recorder reads its token attention there)."""
    pairs = ((c, region_kv(c)) for c in cells) if callable(region_kv) else zip(cells, region_kv)
    out = global_out.clone()
    for cell, kv in pairs:
        if kv is None:
            continue
        r = region_attention(q, h, w, cell, kv[0], kv[1], heads, attention)
        mix_region(out, global_out, h, w, cell, r)
        if on_region is not None:
            on_region(cell, kv)
    return out


def regional_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    shares: torch.Tensor,
    region_kv: Sequence[tuple[torch.Tensor, torch.Tensor] | None],
    heads: int,
) -> torch.Tensor:
    """The same mix computed the expensive way — every region over the whole
    image, then masked by its share map ``shares`` [R, h, w]. For tests."""
    b, n, c = q.shape
    g = sdpa_attention(q, k, v, heads)
    out = g.clone()
    for share, kv in zip(shares, region_kv):
        if kv is None:
            continue
        rk, rv = (t.expand(b, -1, -1) for t in kv)
        r = sdpa_attention(q, rk, rv, heads)
        out += share.reshape(1, n, 1).to(q.dtype) * (r - g)
    return out


def token_attention(q: torch.Tensor, k: torch.Tensor, heads: int, tokens: Sequence[int]) -> torch.Tensor:
    """Softmax attention probability of each query on the key positions
    ``tokens`` (softmax over all keys), averaged over heads: ``[B, N, len(tokens)]``.
    What an attention-map picture shows for a prompt token."""
    b, n, c = q.shape
    d = c // heads
    if k.shape[0] == 1 and b > 1:
        k = k.expand(b, -1, -1)
    qh = q.reshape(b, n, heads, d).transpose(1, 2).float()
    kh = k.reshape(b, k.shape[1], heads, d).transpose(1, 2).float()
    probs = torch.softmax(qh @ kh.transpose(-1, -2) * d**-0.5, dim=-1)
    return probs[..., list(tokens)].mean(1)
