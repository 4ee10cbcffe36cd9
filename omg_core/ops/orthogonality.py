"""How much concepts interfere, and how to make them stop.

Two concepts added to one layer interfere exactly as much as one's update
changes what the layer does with the other's inputs. Two measures, per layer
and overall, for every pair:

* **overlap** of the *input subspaces* (the row space of ΔW: what the update
  reads; for a LoRA the row space of ``up @ down``, equal to the row space of
  ``down`` when ``up`` has full column rank): the mean squared cosine of the
  principal angles, ‖Q_i Q_jᵀ‖²_F / min(p_i, p_j) for orthonormal bases. 0 is
  orthogonal, 1 means one subspace contains the other. A LoKr update's row
  space is the Kronecker product of its factors' row spaces, so its basis is
  kept as two small factors and never expanded for this measure.
* **cross-talk** of j on i: ‖ΔW_j X_i‖ / ‖ΔW_i X_i‖ with X_i concept i's input
  features — how far j moves the keys/values of i's own prompts, in units of
  how far i itself moves them. On UNet cross-attention k/v layers X_i are the
  text features of prompts with i's trigger when the caller supplies them (the
  node encodes them with the CLIP). Everywhere else, and when none are given,
  X_i is an orthonormal basis of i's own input subspace: the directions i
  responds to. Raw trigger-token embeddings are deliberately not used as a
  stand-in: they live at the text encoder's *input*, not in the space the k/v
  projections read. Overall cross-talk is the RMS of the per-layer values.

``orthogonalize`` rotates the input subspaces apart (a weighted symmetric
orthogonalisation, or a sequential one that favours earlier concepts) and
keeps from each update the part that reads from its new subspace, which is
the closest update (in Frobenius norm) with that input subspace.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from omg_core.model.concept import Concept, is_cross_attention_kv
from omg_core.model.updates import LayerUpdate, LowRankUpdate
from omg_core.ops.concept_set import validate_concepts

Progress = Callable[[int, int], None] | None
_REL_TOL = 1e-6


# --------------------------------------------------------------- subspaces
@dataclass(frozen=True)
class InputSubspace:
    """Orthonormal rows spanning an update's input subspace.

    ``rows`` [p, n] for a dense basis, or ``kron`` = (QA [pa, a_in], QB [pb, b_in])
    whose Kronecker product is the basis (rows of kron(QA, QB)).
    """

    rows: torch.Tensor | None = None
    kron: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def dim(self) -> int:
        if self.kron is not None:
            return self.kron[0].shape[0] * self.kron[1].shape[0]
        return self.rows.shape[0]

    def dense_rows(self) -> torch.Tensor:
        if self.kron is not None:
            return torch.kron(*self.kron)
        return self.rows


def _rowspace(m: torch.Tensor, abs_tol: float | None = None) -> torch.Tensor:
    """Orthonormal rows spanning the row space of m (numerical rank, relative to
    the largest singular value unless an absolute tolerance is given)."""
    _, s, vh = torch.linalg.svd(m.double(), full_matrices=False)
    if s.numel() == 0 or s[0] == 0:
        return vh[:0]
    return vh[s > (abs_tol if abs_tol is not None else _REL_TOL * s[0])]


def _energy_rank(s: torch.Tensor, energy: float) -> int:
    if s.numel() == 0 or s[0] == 0:
        return 0
    cum = torch.cumsum(s.square(), 0) / s.square().sum()
    exact = int((s > _REL_TOL * s[0]).sum())
    return min(exact, int((cum < energy - 1e-12).sum()) + 1)


def factored_svd(update: LowRankUpdate) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U [out, r], S [r], Vt [r, in]) of a low-rank ΔW in float64, through its
    factors (QR of the down-projection, SVD of the [out, r] core): exact, and
    no [out, in] matrix is formed."""
    q, r = torch.linalg.qr(update.down_matrix().double().T)  # down = rᵀ qᵀ
    u, s, vh = torch.linalg.svd(update.scale * (update.up_matrix().double() @ r.T), full_matrices=False)
    return u, s, vh @ q.T


def thin_svd(update: LayerUpdate, energy: float = 0.999) -> tuple[torch.Tensor, torch.Tensor]:
    """(singular values S [k], right singular vectors Vt [k, n]) of ΔW, in float64.

    Low-rank updates are decomposed exactly through their factors (QR of the
    down-projection, SVD of an [out, rank] matrix). Kronecker and dense
    updates are decomposed densely and truncated to the smallest rank that
    keeps ``energy`` of ‖ΔW‖²_F: their exact rank is usually the full width,
    which no set of mutually orthogonal subspaces could hold.
    """
    low = update.as_low_rank()
    if low is not None:
        _, s, vt = factored_svd(low)
        keep = s > _REL_TOL * s[0] if s.numel() and s[0] > 0 else torch.zeros_like(s, dtype=torch.bool)
        return s[keep], vt[keep]
    _, s, vh = torch.linalg.svd(update.dense().double(), full_matrices=False)
    k = _energy_rank(s, energy)
    return s[:k], vh[:k]


def input_subspace(update: LayerUpdate, energy: float = 0.999) -> InputSubspace:
    """The input subspace of ΔW (Kronecker-structured for LoKr updates)."""
    kron = update.as_kronecker()
    if kron is not None:
        w2 = kron.w2.reshape(kron.w2.shape[0], -1)
        return InputSubspace(kron=(_rowspace(kron.w1), _rowspace(w2)))
    return InputSubspace(rows=thin_svd(update, energy)[1])


def _kron_coords(basis: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """x [m, n] in the coordinates of the rows of kron(QA, QB): [m, pa*pb], without expanding."""
    qa, qb = basis
    xm = x.double().reshape(x.shape[0], qa.shape[1], qb.shape[1])
    return torch.einsum("ia,mab,jb->mij", qa, xm, qb).reshape(x.shape[0], -1)


def subspace_overlap(a: InputSubspace, b: InputSubspace) -> float:
    """Mean squared cosine of the principal angles between two input subspaces."""
    p = min(a.dim, b.dim)
    if p == 0:
        return 0.0
    if a.kron is not None and b.kron is not None:
        if a.kron[0].shape[1] == b.kron[0].shape[1]:
            num = (a.kron[0] @ b.kron[0].T).square().sum() * (a.kron[1] @ b.kron[1].T).square().sum()
        else:
            num = _kron_coords(a.kron, b.dense_rows()).square().sum()
    elif a.kron is not None:
        num = _kron_coords(a.kron, b.rows).square().sum()
    elif b.kron is not None:
        num = _kron_coords(b.kron, a.rows).square().sum()
    else:
        num = (a.rows @ b.rows.T).square().sum()
    return float(num) / p


# --------------------------------------------------------------- report
@dataclass(frozen=True)
class LayerPairMetrics:
    """One layer, one pair: overlap, and cross-talk in both directions."""

    layer: str
    a: str
    b: str
    overlap: float
    b_on_a: float  # ‖ΔW_b X_a‖ / ‖ΔW_a X_a‖
    a_on_b: float
    features: str  # "text" or "subspace"


@dataclass
class CrossTalkReport:
    """Pairwise interference of a set of concepts.

    ``overlap[i, j]`` is symmetric; ``crosstalk[i, j]`` is j's effect on i's
    features (row = concept disturbed, column = concept disturbing). Diagonals
    are NaN: a concept does not interfere with itself.
    """

    names: list[str]
    overlap: torch.Tensor
    crosstalk: torch.Tensor
    per_layer: list[LayerPairMetrics] = field(default_factory=list)
    feature_sources: dict[str, str] = field(default_factory=dict)

    def max_overlap(self) -> float:
        off = self.overlap[~torch.eye(len(self.names), dtype=torch.bool)]
        return float(off.max()) if off.numel() else 0.0

    def max_crosstalk(self) -> float:
        off = self.crosstalk[~torch.eye(len(self.names), dtype=torch.bool)]
        return float(off.max()) if off.numel() else 0.0

    def table(self, worst_layers: int = 8) -> str:
        lines = [
            "Input-subspace overlap (mean squared cosine of principal angles; 0 = orthogonal, 1 = same subspace)",
            *_matrix_lines(self.names, self.overlap),
            "",
            "Cross-talk ||dW_col X_row|| / ||dW_row X_row|| (row: concept whose prompts are disturbed; "
            "column: concept disturbing them; RMS over layers)",
            *_matrix_lines(self.names, self.crosstalk),
            "",
            "Features: " + "; ".join(f"{n}: {s}" for n, s in self.feature_sources.items()),
        ]
        if self.per_layer and worst_layers > 0:
            worst = sorted(self.per_layer, key=lambda m: -max(m.b_on_a, m.a_on_b))[:worst_layers]
            lines += ["", f"Worst layers (of {len(self.per_layer)} layer pairs):"]
            for m in worst:
                lines.append(
                    f"  {_short(m.layer)}  {m.a}/{m.b}: overlap {m.overlap:.3f}, cross-talk "
                    f"{m.b}->{m.a} {m.b_on_a:.3f}, {m.a}->{m.b} {m.a_on_b:.3f} ({m.features} features)"
                )
        return "\n".join(lines)


def _short(layer: str) -> str:
    return layer.removeprefix("diffusion_model.").removesuffix(".weight")


def _matrix_lines(names: list[str], m: torch.Tensor) -> list[str]:
    row_w = min(24, max(8, *(len(n) for n in names))) + 1
    col_w = min(12, max(7, *(len(n) for n in names))) + 1
    out = [" " * row_w + "".join(n[: col_w - 1].rjust(col_w) for n in names)]
    for i, n in enumerate(names):
        cells = ["-".rjust(col_w) if math.isnan(v) else f"{v:.3f}".rjust(col_w) for v in m[i].tolist()]
        out.append(n[: row_w - 1].ljust(row_w) + "".join(cells))
    return out


def _feature_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim < 2 or x.shape[-1] == 0:
        raise ValueError(f"text features of concept {name!r} must be a [rows, dim] tensor (got {list(x.shape)})")
    x = x.reshape(-1, x.shape[-1])
    x = x.double() if x.dtype == torch.float64 else x.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"text features of concept {name!r} contain NaN or Inf; check the CLIP that encoded them")
    return x


def cross_talk_report(
    concepts: Sequence[Concept],
    features: Mapping[str, torch.Tensor] | None = None,
    energy: float = 0.999,
    progress: Progress = None,
) -> CrossTalkReport:
    """Overlap and cross-talk for every pair of concepts, per layer and overall.

    ``features`` maps a concept name to its text features [rows, context_dim]
    (used on cross-attention k/v layers of that width).
    """
    concepts = validate_concepts(concepts, "the orthogonality report")
    names = [c.name for c in concepts]
    feats = {n: _feature_rows(x, n) for n, x in (features or {}).items() if n in names}
    layers = [c.scaled_layers() for c in concepts]
    keys = sorted({k for lay in layers for k in lay})
    _check_feature_widths(concepts, layers, feats)
    n = len(concepts)
    overlap_sum = torch.zeros(n, n, dtype=torch.float64)
    overlap_count = torch.zeros(n, n, dtype=torch.float64)
    ct_sq = torch.zeros(n, n, dtype=torch.float64)
    ct_count = torch.zeros(n, dtype=torch.float64)
    per_layer: list[LayerPairMetrics] = []
    uses_text = {nm: False for nm in names}
    for step, key in enumerate(keys):
        members = [i for i in range(n) if key in layers[i]]
        spaces = {i: input_subspace(layers[i][key], energy) for i in members}
        ratio: dict[tuple[int, int], float] = {}
        sources: dict[int, str] = {}
        for i in members:
            x, sources[i] = _features_for(key, layers[i][key], names[i], feats, spaces[i])
            uses_text[names[i]] |= sources[i] == "text"
            x = x.to(_work_dtype(layers[i][key]))
            own = float(layers[i][key].apply(x).square().sum())
            ct_count[i] += 1
            for j in members:
                if j == i:
                    continue
                other = float(layers[j][key].apply(x).square().sum())
                ratio[(i, j)] = math.sqrt(other / own) if own > 0 else (0.0 if other == 0 else math.inf)
                ct_sq[i, j] += ratio[(i, j)] ** 2
        for ai, i in enumerate(members):
            for j in members[ai + 1 :]:
                ov = subspace_overlap(spaces[i], spaces[j])
                overlap_sum[i, j] += ov
                overlap_sum[j, i] += ov
                overlap_count[i, j] += 1
                overlap_count[j, i] += 1
                src = "text" if sources[i] == sources[j] == "text" else "subspace"
                per_layer.append(LayerPairMetrics(key, names[i], names[j], ov, ratio[(i, j)], ratio[(j, i)], src))
        if progress is not None:
            progress(step + 1, len(keys))
    overlap = torch.where(overlap_count > 0, overlap_sum / overlap_count.clamp(min=1), torch.zeros_like(overlap_sum))
    crosstalk = torch.sqrt(ct_sq / ct_count.clamp(min=1).unsqueeze(1))
    eye = torch.eye(n, dtype=torch.bool)
    overlap[eye] = math.nan
    crosstalk[eye] = math.nan
    sources = {
        nm: (
            f"text features ({feats[nm].shape[0]} rows) on cross-attention k/v, own input subspace elsewhere"
            if uses_text[nm]
            else "own input subspace (no text features)"
        )
        for nm in names
    }
    return CrossTalkReport(names, overlap.float(), crosstalk.float(), per_layer, sources)


def _work_dtype(update: LayerUpdate) -> torch.dtype:
    return torch.float64 if update.dtype == torch.float64 else torch.float32


def _features_for(key, update, name, feats, space) -> tuple[torch.Tensor, str]:
    x = feats.get(name)
    if x is not None and is_cross_attention_kv(key) and x.shape[1] == update.in_features:
        return x, "text"
    return space.dense_rows(), "subspace"


def _check_feature_widths(concepts, layers, feats) -> None:
    for c, lay in zip(concepts, layers):
        x = feats.get(c.name)
        if x is None:
            continue
        widths = {u.in_features for k, u in lay.items() if is_cross_attention_kv(k)}
        if widths and x.shape[1] not in widths:
            raise ValueError(
                f"text features of concept {c.name!r} are {x.shape[1]}-dimensional but its cross-attention layers "
                f"read {sorted(widths)}; encode the prompts with the CLIP of the same model family"
            )


# --------------------------------------------------------------- orthogonalize
@dataclass
class OrthogonalizeResult:
    """New concepts with mutually orthogonal input subspaces, and what it cost.

    ``fidelity_loss[name]`` is ‖ΔW' − ΔW‖_F / ‖ΔW‖_F over all the concept's
    layers; ``layer_loss[(name, layer)]`` the same per changed layer.
    """

    concepts: list[Concept]
    fidelity_loss: dict[str, float]
    layer_loss: dict[tuple[str, str], float]
    method: str

    def table(self) -> str:
        lines = [
            f"Orthogonalized {len(self.concepts)} concepts ({self.method}); fidelity lost per concept "
            "(relative Frobenius error of its updates):"
        ]
        for c in self.concepts:
            changed = sum(1 for (n, _) in self.layer_loss if n == c.name)
            lines.append(f"  {c.name}: {100 * self.fidelity_loss[c.name]:.2f}% ({changed} shared layers changed)")
        return "\n".join(lines)


def orthogonalize(
    concepts: Sequence[Concept],
    method: str = "symmetric",
    energy: float = 0.999,
    progress: Progress = None,
) -> OrthogonalizeResult:
    """Concepts whose input subspaces are mutually orthogonal on every shared layer.

    ``symmetric``: the stacked, norm-weighted singular directions of all
    concepts on a layer are replaced by the closest set of orthonormal rows
    (their polar factor), so strong directions move least and no concept is
    favoured. ``sequential``: each concept in list order keeps what is
    orthogonal to the concepts before it (the first one is untouched).
    Layers used by one concept only are kept as they are. Results are
    low-rank updates (scale 1; the concept strength is kept separately).
    """
    if method not in ("symmetric", "sequential"):
        raise ValueError(f"unknown orthogonalization method {method!r}; use 'symmetric' or 'sequential'")
    concepts = validate_concepts(concepts, "orthogonalize")
    names = [c.name for c in concepts]
    new_layers = [dict(c.layers()) for c in concepts]
    total = {n: 0.0 for n in names}
    lost = {n: 0.0 for n in names}
    layer_loss: dict[tuple[str, str], float] = {}
    keys = sorted({k for c in concepts for k in c.layers()})
    for step, key in enumerate(keys):
        members = [i for i, c in enumerate(concepts) if key in c.layers()]
        for i in members:
            total[names[i]] += float(concepts[i].layers()[key].frobenius_norm_sq())
        if len(members) > 1:
            updates = [concepts[i].layers()[key] for i in members]
            for i, (new, err_sq, norm_sq) in zip(members, _orthogonalize_layer(key, updates, method, energy)):
                new_layers[i][key] = new
                lost[names[i]] += err_sq
                layer_loss[(names[i], key)] = math.sqrt(err_sq / norm_sq) if norm_sq > 0 else 0.0
        if progress is not None:
            progress(step + 1, len(keys))
    out = []
    for c, lay in zip(concepts, new_layers):
        meta = {**c.metadata, "orthogonalized": method}
        out.append(
            replace(
                c,
                unet={k: lay[k] for k in c.unet},
                text_encoder={k: lay[k] for k in c.text_encoder},
                metadata=meta,
            )
        )
    fidelity = {n: math.sqrt(lost[n] / total[n]) if total[n] > 0 else 0.0 for n in names}
    return OrthogonalizeResult(out, fidelity, layer_loss, method)


def _orthogonalize_layer(key, updates, method, energy):
    svds = [thin_svd(u, energy) for u in updates]
    in_dim = updates[0].in_features
    rank = sum(s.numel() for s, _ in svds)
    if rank > in_dim:
        raise ValueError(
            f"layer {key} reads {in_dim} input dimensions but the concepts on it need {rank} together; mutually "
            "orthogonal subspaces cannot hold them — orthogonalize fewer concepts, or lower the kept energy for "
            "dense/LoKr concepts"
        )
    if method == "symmetric":
        weighted = [(s / s.norm()).unsqueeze(1) * vt if s.numel() else vt for s, vt in svds]
        y = torch.cat(weighted)
        if y.shape[0]:
            u, _, wh = torch.linalg.svd(y, full_matrices=False)
            q_all = u @ wh
        else:
            q_all = y
        bases = list(torch.split(q_all, [s.numel() for s, _ in svds]))
    else:
        bases, taken = [], torch.zeros(0, in_dim, dtype=torch.float64)
        for _, vt in svds:
            z = vt - (vt @ taken.T) @ taken
            q = _rowspace(z, abs_tol=_REL_TOL) if z.shape[0] else z  # rows of vt are unit vectors
            bases.append(q)
            taken = torch.cat([taken, q])
    out = []
    for i, (update, q) in enumerate(zip(updates, bases)):
        norm_sq = float(update.frobenius_norm_sq())
        low = update.as_low_rank()
        if method == "sequential" and i == 0 and low is not None:
            # Its subspace is taken as it is: refactoring it through q would only
            # add the rounding of the factors' dtype (float32: ~1e-8 relative).
            out.append((low, 0.0, norm_sq))
            continue
        up = update.apply(q.to(torch.float64)).T  # ΔW qᵀ: [out, k]
        kept = float(up.square().sum())
        down = q
        if low is not None and low.down.ndim > 2:
            down = q.reshape(q.shape[0], *low.down.shape[1:])
        dtype = _factor_dtype(update)
        new = LowRankUpdate(up.to(dtype).contiguous(), down.to(dtype).contiguous(), 1.0)
        out.append((new, max(norm_sq - kept, 0.0), norm_sq))
    return out


def _factor_dtype(update: LayerUpdate) -> torch.dtype:
    return torch.float32 if update.dtype in (torch.float16, torch.bfloat16) else update.dtype
