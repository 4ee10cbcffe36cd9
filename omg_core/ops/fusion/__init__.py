"""Fuse several concepts into one set of layer updates.

Three methods, all solved without iterating (one list, ``methods.FUSION_METHODS``;
each closed form in a module of its own):

* ``additive`` — the exact sum. Low-rank updates of a layer are concatenated
  (up = [s1·B1 | s2·B2 | …], down = [A1; A2; …]) into one low-rank update, so
  no dense matrix is formed; dense updates are summed; LoKr updates are kept
  as they are, side by side. This is what orthogonal concepts need.
* ``least_squares`` — Mix-of-Show's gradient fusion, solved in closed form per
  layer: minimise Σ_i ‖(W − W_i) X_i‖² + λ‖W − W0‖² over the concepts' input
  features X_i. It is solved for the *change* ΔW = W − W0:
  ΔW = (Σ ΔW_i C_i)(Σ C_i + λI)⁻¹, C_i = X_i X_iᵀ, never for W itself (which
  would pull the base weight towards zero wherever no feature points), so any
  direction orthogonal to every feature keeps its base behaviour.
* ``constrained`` — Custom Diffusion's closed form: each concept's k/v on its
  own features are kept exactly (ΔW X = T) while ΔW stays as small as possible
  on regularisation features (min ‖ΔW X_reg‖² + μ‖ΔW‖²).

Features. On UNet cross-attention k/v layers X_i are the text features of
prompts containing concept i's trigger (the node encodes them with the
CLIP); on every other layer — and everywhere when no text features are given
— X_i is an orthonormal basis of concept i's own input subspace. Features
that several prompts or concepts share (BOS, "a photo of", …) would otherwise
be fitted once per occurrence and dominate; they are de-duplicated (rows
within 1 % of each other count as one): each distinct row is fitted once,
towards the mean of the targets of the concepts that use it (the same
optimum as weighting each occurrence by 1/count).

With low-rank concepts, both closed forms are themselves exactly low-rank:
ΔW = [s1·B1 | …] · K G with K = stacked Aᵢ-projections of the features and G
the solved [features, in] map, so results stay factored (rank Σ rᵢ). Layers
with a LoKr or dense concept become ``DenseUpdate``. A layer that only one
concept touches and that no text features reach keeps that concept's update
(the fit would reproduce it); ``FusionResult.summary`` says what was done where.
"""

from omg_core.ops.fusion.features import TEXT_DEDUPE_TOL, FeatureSet, dedupe_features
from omg_core.ops.fusion.fuse import FusionResult, drift, fidelity_errors, fuse
from omg_core.ops.fusion.layers import add_updates, patch_apply, patch_dense, update_dense
from omg_core.ops.fusion.methods import FUSION_METHODS, FusionMethod

__all__ = [
    "FUSION_METHODS",
    "TEXT_DEDUPE_TOL",
    "FeatureSet",
    "FusionMethod",
    "FusionResult",
    "add_updates",
    "dedupe_features",
    "drift",
    "fidelity_errors",
    "fuse",
    "patch_apply",
    "patch_dense",
    "update_dense",
]
