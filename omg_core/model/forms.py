"""The forms a concept's k/v update can be trained in, each orthogonal across slots.

Every form reads its input through rows of the shared basis (``basis.py``),
frozen, so two concepts in different slots of one basis read from orthogonal
input subspaces whatever their trained parts hold — orthogonal by
construction, not by training:

* ``lora``: ΔW = up · P with P [r, in] the slot's rows; ``up`` trained from zero.
* ``svd`` (TriLoRA): ΔW = U · diag(σ) · P with the same P as ``lora`` (so Vᵀ = P
  is orthonormal for free), U [out, r] the orthonormal factor of a free matrix
  and σ [r] trained from zero. Because U and P stay orthonormal, U·diag(σ)·P *is*
  a singular value decomposition at every step, so the σ can be thresholded
  after training with an exact account of what is lost (``ops.pruning``). A
  ``lora`` and an ``svd`` concept in different slots are orthogonal too.
* ``kronecker`` (DiffuseKronA): ΔW = w1 ⊗ w2 with w1 [o1, i1] trained and
  w2 = U_B · S [o2, i2], S the slot's rows of the basis of R^{i2} (frozen) and
  U_B trained from zero. ``torch.kron`` (ComfyUI's LoKr) reads input feature
  j·i2 + l with w1's column j and w2's column l, so the row space of w1 ⊗ w2 is
  rowspace(w1) ⊗ rowspace(w2) ⊆ R^{i1} ⊗ span(S), and for another slot S'
  (S S'ᵀ = 0): (w1 ⊗ w2)(w1' ⊗ w2')ᵀ = (w1 w1'ᵀ) ⊗ (U_B S S'ᵀ U_B'ᵀ) = 0. Its
  slots are those of R^{i2}, not of R^{in}: kronecker concepts are orthogonal to
  each other, not to ``lora``/``svd`` ones (a product subspace cannot lie inside
  a generic slot of R^{in}).

The Kronecker split is LyCORIS's with factor 8 (``factorization(dim, 8)``):
w1 is 8×8 and w2 is (out/8)×(in/8). On k/v layers ``in`` is the family's
context width, so w2 reads 96 features on SD1.5 (768) and 256 on SDXL (2048),
which hold 96 // r and 256 // r slots (24 and 64 at rank 4); rank(ΔW) = 8·r,
read from an 8·r-dimensional input subspace.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omg_core.model.updates import KroneckerUpdate, LowRankUpdate

FORMS = ("lora", "kronecker", "svd")
# LyCORIS's LoKr ``factor``: the small factor's side, on both the output and the input.
KRONECKER_FACTOR = 8


@dataclass(frozen=True)
class KroneckerShape:
    """w1 [out1, in1] ⊗ w2 [out2, in2] for one layer; the slot lies on w2's input."""

    out1: int
    in1: int
    out2: int
    in2: int

    @property
    def out_features(self) -> int:
        return self.out1 * self.out2

    @property
    def in_features(self) -> int:
        return self.in1 * self.in2


def _split(dim: int, what: str, factor: int) -> tuple[int, int]:
    if dim % factor or dim < factor * factor:
        raise ValueError(
            f"the kronecker form splits every {what} width into {factor} × (width / {factor}), but this layer's "
            f"{what} width is {dim}; train this model with form 'lora' or 'svd'"
        )
    return factor, dim // factor


def kronecker_shape(out_features: int, in_features: int, factor: int = KRONECKER_FACTOR) -> KroneckerShape:
    """The factor sizes of the kronecker form for a [out, in] layer (a ValueError when it cannot be split)."""
    out1, out2 = _split(out_features, "output", factor)
    in1, in2 = _split(in_features, "input", factor)
    return KroneckerShape(out1, in1, out2, in2)


def slot_width(form: str, in_features: int) -> int:
    """The width of the space whose basis the form's slots divide: R^{in} for
    ``lora``/``svd``, w2's input R^{in/8} for ``kronecker``."""
    return in_features // KRONECKER_FACTOR if form == "kronecker" else in_features


def orthonormal_columns(m: torch.Tensor) -> torch.Tensor:
    """The Q of m = Q R with R's diagonal made positive: orthonormal columns
    spanning m's, unique and continuous in m (a plain QR may flip signs between
    nearby matrices), and differentiable, so it can parametrise U."""
    q, r = torch.linalg.qr(m, mode="reduced")
    signs = torch.sign(torch.diagonal(r))
    return q * torch.where(signs == 0, torch.ones_like(signs), signs)


def svd_update(u: torch.Tensor, sigma: torch.Tensor, rows: torch.Tensor) -> LowRankUpdate:
    """U·diag(σ)·P as the LoRA every loader reads: up = U·diag(σ), down = P."""
    return LowRankUpdate(up=u * sigma, down=rows)


def kronecker_update(w1: torch.Tensor, up: torch.Tensor, rows: torch.Tensor) -> KroneckerUpdate:
    """w1 ⊗ (U_B·S), w2 expanded: the LoKr ComfyUI applies as kron(w1, w2)."""
    return KroneckerUpdate(w1=w1, w2=up @ rows)


def input_rows(form: str, rows: torch.Tensor, in_features: int) -> torch.Tensor:
    """Orthonormal rows spanning every input a concept of ``form`` with slot
    rows ``rows`` can respond to: P itself, or I_{in1} ⊗ S for ``kronecker``."""
    if form != "kronecker":
        return rows
    in1 = in_features // rows.shape[1]
    return torch.kron(torch.eye(in1, dtype=rows.dtype), rows)


def trained_numbers(form: str, out_features: int, in_features: int, rank: int, free_down: bool = False) -> int:
    """How many numbers the optimiser updates on one layer: ``lora`` up (and
    down when free), ``svd`` the free matrix behind U and σ, ``kronecker`` w1 and U_B."""
    if form == "svd":
        return rank * out_features + rank
    if form == "kronecker":
        shape = kronecker_shape(out_features, in_features)
        return shape.out1 * shape.in1 + shape.out2 * rank
    return rank * out_features + (rank * in_features if free_down else 0)
