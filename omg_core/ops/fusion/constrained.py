"""Custom Diffusion's closed form: each concept exactly on its own features
(ΔW X = T), the change as small as possible on the regularisation features."""

from __future__ import annotations

import torch


def solve_map(rows: torch.Tensor, lam: float, reg: torch.Tensor | None) -> torch.Tensor:
    """G [m, n] such that the fused layer is ΔW = T G for targets T [out, m]
    on the feature rows [m, n]; ``reg`` [rows, n] the regularisation features,
    ``lam`` μ relative to their energy (without them the plain ‖ΔW‖ is kept small)."""
    m, n = rows.shape
    # constrained: minimise ‖ΔW X_reg‖² + μ‖ΔW‖² subject to ΔW X = T.
    if reg is None or reg.shape[0] == 0:
        c = torch.eye(n, dtype=rows.dtype)
    else:
        r = reg.T @ reg / reg.shape[0]
        c = r + max(lam, 1e-9) * float(r.trace()) / n * torch.eye(n, dtype=rows.dtype)
    cinv_xt = torch.cholesky_solve(rows.T, torch.linalg.cholesky(c))  # [n, m]
    return torch.linalg.pinv(rows @ cinv_xt, hermitian=True) @ cinv_xt.T
