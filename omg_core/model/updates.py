"""The kinds of layer update ΔW a concept holds, behind one interface.

Every kind answers the same questions — its dense matrix, its effect on
features, its factors, its squared norm, its dtype, and whether it has a
cheap low-rank or Kronecker form — so the code that measures, fuses, patches
and writes concepts never has to ask which kind it holds, and a new kind
cannot be skipped by a branch that forgot it. Only where a file or ComfyUI
wants a kind's own tensor layout is there a per-kind table, and those tables
refuse a kind they do not know. A new kind goes into ``UPDATE_KINDS`` here
and into those tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import torch

_U = TypeVar("_U", bound="_Update")


class _Update:
    """What every kind shares; each kind is a frozen dataclass with a ``scale``.

    The defaults are the ones that are right for any kind: no cheap
    low-rank or Kronecker form (callers then take the dense route, which is
    exact, only slower) and no full tensor of its own besides [out, in].
    """

    def factors(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the leading factor, which sets the precision results are computed in."""
        return self.factors()[0].dtype

    @property
    def dense_shape(self) -> tuple[int, ...]:
        """The shape a full ΔW of this layer takes as this kind stores it."""
        return (self.out_features, self.in_features)

    def scaled(self: _U, factor: float) -> _U:
        return replace(self, scale=self.scale * factor)

    def as_low_rank(self) -> LowRankUpdate | None:
        """This update as an equal ``LowRankUpdate`` when the kind is one cheaply, else None."""
        return None

    def as_kronecker(self) -> KroneckerUpdate | None:
        """This update as an equal ``KroneckerUpdate`` when the kind is one cheaply, else None."""
        return None


@dataclass(frozen=True)
class LowRankUpdate(_Update):
    """ΔW = scale · up @ down, for a linear layer ([out, in]).

    ``down`` [rank, in] spans the input subspace the update reads from;
    ``up`` [out, rank] is where it writes. Convolution updates keep their
    trailing kernel dimensions on ``down`` (and ``up`` for kohya's 3x3 case)
    and are flattened by ``dense()``.
    """

    up: torch.Tensor
    down: torch.Tensor
    scale: float = 1.0

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def out_features(self) -> int:
        return self.up.shape[0]

    @property
    def in_features(self) -> int:
        return int(math.prod(self.down.shape[1:]))

    @property
    def kernel(self) -> tuple[int, ...]:
        """Trailing convolution kernel dimensions (empty for a linear layer)."""
        return tuple(self.down.shape[2:])

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.up, self.down)

    def down_matrix(self) -> torch.Tensor:
        return self.down.reshape(self.down.shape[0], -1)

    def up_matrix(self) -> torch.Tensor:
        return self.up.reshape(self.up.shape[0], -1)

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The [out, in] matrix; only for small layers, tests and SVD."""
        return self.scale * (self.up_matrix().to(dtype) @ self.down_matrix().to(dtype))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """ΔW applied to features x [..., in] without forming ΔW."""
        return self.scale * ((x @ self.down_matrix().to(x.dtype).T) @ self.up_matrix().to(x.dtype).T)

    def frobenius_norm_sq(self) -> torch.Tensor:
        """‖ΔW‖²_F in float64: ‖s·U D‖² = s² tr((UᵀU)(D Dᵀ)) without forming U D."""
        u, d = self.up_matrix().double(), self.down_matrix().double()
        return self.scale**2 * ((u.T @ u) * (d @ d.T)).sum()

    def as_low_rank(self) -> LowRankUpdate:
        return self

    @classmethod
    def combine(cls, updates: Sequence[LowRankUpdate]) -> list[LayerUpdate]:
        """The exact sum as one update: ups side by side (scales folded in), downs stacked."""
        if len(updates) == 1:
            return [updates[0]]
        dtype = promote_dtype([u.up for u in updates] + [u.down for u in updates])
        same_kernel = len({tuple(u.down.shape[1:]) for u in updates}) == 1
        up = torch.cat([u.scale * u.up_matrix().to(dtype) for u in updates], dim=1)
        down = torch.cat([(u.down if same_kernel else u.down_matrix()).to(dtype) for u in updates], dim=0)
        return [LowRankUpdate(up, down, 1.0)]


@dataclass(frozen=True)
class KroneckerUpdate(_Update):
    """ΔW = scale · kron(w1, w2) (LyCORIS LoKr), kept factored.

    Either factor may itself be low-rank (``w1 = w1_a @ w1_b``); the factors
    are stored expanded only when the file stored them so.
    """

    w1: torch.Tensor
    w2: torch.Tensor
    scale: float = 1.0

    @property
    def out_features(self) -> int:
        return self.w1.shape[0] * self.w2.shape[0]

    @property
    def in_features(self) -> int:
        return self.w1.shape[1] * int(math.prod(self.w2.shape[1:]))

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(self.w2.shape[2:])

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.w1, self.w2)

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        w2 = self.w2.reshape(self.w2.shape[0], -1).to(dtype)
        return self.scale * torch.kron(self.w1.to(dtype), w2)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """kron(A, B) x computed as B X Aᵀ on x reshaped to [.., a_in, b_in]."""
        a, b = self.w1.to(x.dtype), self.w2.reshape(self.w2.shape[0], -1).to(x.dtype)
        lead = x.shape[:-1]
        xm = x.reshape(*lead, a.shape[1], b.shape[1])
        y = torch.einsum("ij,...jk,lk->...il", a, xm, b)
        return self.scale * y.reshape(*lead, a.shape[0] * b.shape[0])

    def frobenius_norm_sq(self) -> torch.Tensor:
        """‖ΔW‖²_F in float64: ‖kron(A, B)‖² = ‖A‖²‖B‖²."""
        return self.scale**2 * self.w1.double().square().sum() * self.w2.double().square().sum()

    def as_kronecker(self) -> KroneckerUpdate:
        return self

    @classmethod
    def combine(cls, updates: Sequence[KroneckerUpdate]) -> list[LayerUpdate]:
        """Side by side: a sum of Kronecker products is no Kronecker product."""
        return list(updates)


@dataclass(frozen=True)
class DenseUpdate(_Update):
    """ΔW stored in full (Custom Diffusion's fine-tuned k/v, as a difference)."""

    delta: torch.Tensor
    scale: float = 1.0

    @property
    def out_features(self) -> int:
        return self.delta.shape[0]

    @property
    def in_features(self) -> int:
        return int(math.prod(self.delta.shape[1:]))

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(self.delta.shape[2:])

    @property
    def dense_shape(self) -> tuple[int, ...]:
        return tuple(self.delta.shape)

    def factors(self) -> tuple[torch.Tensor]:
        return (self.delta,)

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.scale * self.delta.reshape(self.delta.shape[0], -1).to(dtype)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (x @ self.delta.reshape(self.delta.shape[0], -1).to(x.dtype).T)

    def frobenius_norm_sq(self) -> torch.Tensor:
        return self.dense().double().square().sum()

    @classmethod
    def combine(cls, updates: Sequence[DenseUpdate]) -> list[LayerUpdate]:
        """One full difference, the scales folded in."""
        shape = updates[0].delta.shape
        total = sum(u.scale * u.delta.reshape(shape).to(promote_dtype([d.delta for d in updates])) for u in updates)
        return [DenseUpdate(total, 1.0)]


LayerUpdate = LowRankUpdate | KroneckerUpdate | DenseUpdate
# Every kind there is, in the order a summed layer lists its parts.
UPDATE_KINDS: tuple[type, ...] = (LowRankUpdate, DenseUpdate, KroneckerUpdate)

# A layer may carry several updates that are summed (an additive fusion of a
# low-rank concept and a Kronecker one cannot be one factored update).
LayerPatch = LayerUpdate | Sequence[LayerUpdate]


def update_kind(update: object, where: str = "a layer") -> type:
    """The entry of ``UPDATE_KINDS`` that ``update`` is; a ValueError for anything else,
    so an unknown kind stops the caller instead of being skipped by it."""
    for kind in UPDATE_KINDS:
        if isinstance(update, kind):
            return kind
    known = ", ".join(k.__name__ for k in UPDATE_KINDS)
    raise ValueError(
        f"{where} holds a {type(update).__name__}, which is not a layer update kind OMG knows ({known}); "
        "convert it to one of them, or add the new kind to omg_core.model.updates.UPDATE_KINDS"
    )


def as_update(update: object, where: str = "a layer") -> LayerUpdate:
    update_kind(update, where)
    return update


def as_update_list(patch: LayerPatch) -> list[LayerUpdate]:
    if isinstance(patch, Sequence):
        return [as_update(u) for u in patch]
    return [as_update(patch)]


def combine_updates(updates: Sequence[LayerUpdate]) -> LayerPatch:
    """The exact sum of one layer's updates, each kind summed in its own factored form."""
    if not updates:
        raise ValueError("no updates to combine")
    by_kind: dict[type, list[LayerUpdate]] = {kind: [] for kind in UPDATE_KINDS}
    for u in updates:
        by_kind[update_kind(u)].append(u)
    parts = [part for kind in UPDATE_KINDS if by_kind[kind] for part in kind.combine(by_kind[kind])]
    return parts[0] if len(parts) == 1 else tuple(parts)


def promote_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    """The common dtype of ``tensors``, at least float32 (half-precision sums lose the small updates)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_finite(tensors: Mapping[str, torch.Tensor], message: Callable[[list[str]], str]) -> None:
    """NaN/Inf in any weight would silently turn every image black; refuse it.

    ``message`` turns the names of the offending tensors into the error text,
    so each caller can say what the names mean and what to do.
    """
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(message(bad))


def check_update_finite(key: str, update: LayerUpdate, owner: str = "the update") -> None:
    """``check_finite`` for one layer update, its scale included."""
    if not math.isfinite(update.scale):
        raise ValueError(f"{owner} has a non-finite scale ({update.scale}) on layer {key}; fix or re-export the file")
    check_finite(
        {str(i): t for i, t in enumerate(update.factors())},
        lambda _: (
            f"{owner} contains NaN or Inf weights on layer {key}; the file is corrupt or was saved "
            "from a diverged training run — re-export it or drop this concept"
        ),
    )
