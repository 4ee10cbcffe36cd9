"""Mix-of-Show's gradient fusion in closed form: the layer change that best
reproduces every concept on its own features, ridge-regularised towards the
base weight (ΔW = (Σ ΔW_i C_i)(Σ C_i + λI)⁻¹, solved for the change, never for W)."""

from __future__ import annotations

import torch


def solve_map(rows: torch.Tensor, lam: float, reg: torch.Tensor | None) -> torch.Tensor:
    """G [m, n] such that the fused layer is ΔW = T G for targets T [out, m]
    on the feature rows [m, n]; ``lam`` relative to the mean feature energy.
    (``reg`` is unused: least squares keeps unrelated prompts by λ alone.)"""
    m, n = rows.shape
    gram = rows @ rows.T
    if lam > 0:
        lam_eff = lam * float(gram.trace()) / m  # relative to the mean feature energy
        return torch.linalg.solve(gram + lam_eff * torch.eye(m, dtype=gram.dtype), rows)
    return torch.linalg.pinv(rows.T)
