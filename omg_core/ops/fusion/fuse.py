"""``fuse``: every layer of the concepts fused by one method (``methods``), with
the fidelity, constraint residual and drift measured on the features."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from omg_core.model.concept import Concept, TokenEmbedding, is_cross_attention_kv
from omg_core.model.updates import DenseUpdate, LayerPatch, LayerUpdate, LowRankUpdate, as_update_list, promote_dtype
from omg_core.ops.concept_set import validate_concepts
from omg_core.ops.fusion.features import TEXT_DEDUPE_TOL, FeatureSet, dedupe_features
from omg_core.ops.fusion.layers import add_updates, patch_apply
from omg_core.ops.fusion.methods import FUSION_METHODS
from omg_core.ops.orthogonality import input_subspace

Progress = Callable[[int, int], None] | None


class _Fit:
    """A solved feature set: rows X, map G and membership, cast once per working dtype."""

    def __init__(self, fs: FeatureSet, g: torch.Tensor):
        self.fs = fs
        self._cast = {torch.float64: (fs.rows, g, fs.membership)}

    def get(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if dtype not in self._cast:
            self._cast[dtype] = tuple(t.to(dtype) for t in self._cast[torch.float64])
        return self._cast[dtype]


def _fit_layer(updates: Sequence[LayerUpdate | None], fit: _Fit, like: LayerUpdate):
    """ΔW = T G with T = Σ_i ΔW_i X diag(membership_i); factored when every update is low-rank.

    Computed in the factors' own precision (float32 for files, float64 when
    given): the solve itself is done once per feature set in float64.
    """
    present = [(i, u) for i, u in enumerate(updates) if u is not None]
    lows = [(i, u.as_low_rank()) for i, u in present]
    if all(u is not None for _, u in lows):
        dtype = promote_dtype([u.up for _, u in lows] + [u.down for _, u in lows])
        rows, g, membership = fit.get(dtype)
        downs = torch.cat([u.down_matrix().to(dtype) for _, u in lows])  # [R, in]
        weights = torch.cat([membership[i].expand(u.rank, -1) for i, u in lows])  # [R, m]
        down = ((downs @ rows.T) * weights) @ g
        up = torch.cat([u.scale * u.up_matrix().to(dtype) for _, u in lows], dim=1)
        kernel = {tuple(u.down.shape[1:]) for _, u in lows}
        if len(kernel) == 1 and len(next(iter(kernel))) > 1:
            down = down.reshape(down.shape[0], *next(iter(kernel)))
        return LowRankUpdate(up, down, 1.0)
    rows, g, membership = fit.get(torch.float64)
    t = sum(u.apply(rows) * membership[i].unsqueeze(1) for i, u in present)  # [m, out]
    delta = (t.T @ g).to(torch.float32)
    return DenseUpdate(delta.reshape(like.dense_shape), 1.0)


# --------------------------------------------------------------- result
@dataclass
class FusionResult:
    """Fused layer patches plus an account of how they were made.

    ``fidelity[name]``: relative error of the concept's own k/v (or, without
    text features, of its update on its own input subspace) after fusion,
    ‖(ΔW_fused − ΔW_i) X_i‖ / ‖ΔW_i X_i‖ summed over its layers.
    """

    method: str
    unet: dict[str, LayerPatch]
    text_encoder: dict[str, LayerPatch]
    embeddings: tuple[TokenEmbedding, ...]
    names: list[str]
    regularization: float
    fitted_text_layers: list[str] = field(default_factory=list)
    fitted_subspace_layers: list[str] = field(default_factory=list)
    summed_layers: list[str] = field(default_factory=list)
    features: FeatureSet | None = None
    fidelity: dict[str, float] = field(default_factory=dict)
    constraint_residual: float | None = None
    drift: float | None = None

    def layers(self) -> dict[str, LayerPatch]:
        return {**self.unet, **self.text_encoder}

    def summary(self) -> str:
        lam = "" if self.method == "additive" else f", regularization {self.regularization:g}"
        lines = [f"Fusion of {len(self.names)} concepts, method {self.method}{lam}:"]
        if self.fitted_text_layers:
            lines.append(f"  {len(self.fitted_text_layers)} cross-attention k/v layers fitted on text features")
        if self.fitted_subspace_layers:
            lines.append(
                f"  {len(self.fitted_subspace_layers)} layers fitted on the concepts' own input subspaces "
                "(no text features reach them)"
            )
        if self.summed_layers:
            lines.append(f"  {len(self.summed_layers)} layers summed exactly (one concept, or additive)")
        fs = self.features
        if fs is not None:
            shared = fs.shared()
            lines.append(
                f"  text features: {sum(fs.given)} rows given, {fs.rows.shape[0]} distinct rows fitted, "
                f"{int(shared.sum())} shared by several concepts (fitted once, towards the mean target)"
            )
            for i, name in enumerate(self.names):
                own = fs.owned(i)
                lines.append(
                    f"    {name}: {fs.given[i]} rows -> {int(own.sum())} fitted "
                    f"({int((own & ~shared).sum())} own, {int((own & shared).sum())} shared)"
                )
            shared_labels = [lab for lab, s in zip(fs.labels, shared.tolist()) if s and lab]
            if shared_labels:
                lines.append(
                    "    shared positions: " + ", ".join(shared_labels[:12]) + (" …" if len(shared_labels) > 12 else "")
                )
        if self.fidelity:
            lines.append(
                "  fidelity (relative error of each concept's own k/v): "
                + ", ".join(f"{n} {100 * v:.2f}%" for n, v in self.fidelity.items())
            )
        if self.constraint_residual is not None:
            lines.append(f"  constraint residual (relative): {self.constraint_residual:.2e}")
        if self.drift is not None:
            lines.append(f"  drift on regularisation prompts (relative to the concepts' own effect): {self.drift:.4f}")
        self_attention = [k for k in self.unet if ".attn1." in k]
        if self_attention:
            lines.append(
                f"  note: {len(self_attention)} self-attention layers are fused in: they act on the whole image, "
                "not only where a concept is drawn (on the toy world, concepts trained on every attention "
                "projection and fused took the base model's prior accuracy from 0.98 to 0.10); give such "
                "concepts to OMG Apply Regional Attention in routed mode instead"
            )
        return "\n".join(lines)


# --------------------------------------------------------------- fuse
def fuse(
    concepts: Sequence[Concept],
    method: str = "additive",
    features: Mapping[str, torch.Tensor] | None = None,
    regularization: float = 1e-3,
    reg_features: torch.Tensor | None = None,
    feature_labels: Mapping[str, Sequence[str]] | None = None,
    progress: Progress = None,
    measure: bool = True,
) -> FusionResult:
    """Fuse ``concepts`` (strengths folded in) with ``method``.

    ``features`` maps each concept name to its text features [rows, context]
    (all concepts or none); ``reg_features`` [rows, context] are the
    regularisation prompts' features, used by ``constrained`` and to measure
    drift; ``regularization`` is λ of the least-squares fit (relative to the
    mean feature energy) and μ of the constrained one (relative to the
    regularisation energy). ``measure=False`` skips the fidelity, drift and
    residual measurements (for timing the fusion alone).
    """
    if method not in FUSION_METHODS:
        raise ValueError(f"unknown fusion method {method!r}; use one of {', '.join(FUSION_METHODS)}")
    if not (math.isfinite(regularization) and regularization >= 0):
        raise ValueError(f"regularization must be a finite number >= 0 (got {regularization})")
    chosen = FUSION_METHODS[method]
    concepts = validate_concepts(concepts, "fuse")
    names = [c.name for c in concepts]
    text = _text_features(names, features)
    reg = _rows(reg_features, "regularisation features") if reg_features is not None else None
    if reg is not None and text is not None and reg.shape[1] != text[0].shape[1]:
        raise ValueError(
            f"regularisation features are {reg.shape[1]}-dimensional but the text features are "
            f"{text[0].shape[1]}-dimensional; encode both with the same CLIP"
        )
    layers = [c.scaled_layers() for c in concepts]
    te_keys = {k for c in concepts for k in c.text_encoder}
    keys = sorted({k for lay in layers for k in lay})
    width = None if text is None else text[0].shape[1]
    fs_text = None
    fit_text = None
    if text is not None:
        labels = [list(feature_labels[n]) if feature_labels and n in feature_labels else None for n in names]
        fs_text = dedupe_features(text, labels, tol=TEXT_DEDUPE_TOL)
    result = FusionResult(method, {}, {}, tuple(e for c in concepts for e in c.embeddings), names, regularization)
    result.features = fs_text
    residuals: list[float] = []
    for step, key in enumerate(keys):
        updates = [lay.get(key) for lay in layers]
        present = [u for u in updates if u is not None]
        uses_text = text is not None and is_cross_attention_kv(key) and present[0].in_features == width
        if chosen.solve_map is None or (len(present) == 1 and not uses_text):
            fused = add_updates(present)
            result.summed_layers.append(key)
        else:
            if uses_text:
                if fit_text is None:
                    fit_text = _Fit(fs_text, chosen.solve_map(fs_text.rows, regularization, reg))
                fit = fit_text
                result.fitted_text_layers.append(key)
            else:
                fs = _subspace_features(updates)
                fit = _Fit(fs, chosen.solve_map(fs.rows, regularization, None))
                result.fitted_subspace_layers.append(key)
            fused = _fit_layer(updates, fit, present[0])
            if chosen.exact_on_features and measure:
                residuals.append(_residual(fused, updates, fit.fs))
        (result.text_encoder if key in te_keys else result.unet)[key] = fused
        if progress is not None:
            progress(step + 1, len(keys))
    if residuals:
        result.constraint_residual = max(residuals)
    if not measure:
        return result
    result.fidelity = _fidelity(result, layers, names, text, width)
    if reg is not None and text is not None:
        result.drift = _drift(result, layers, text, reg, width)
    return result


def fidelity_errors(
    result: FusionResult, concepts: Sequence[Concept], features: Mapping[str, torch.Tensor] | None = None
) -> dict[str, float]:
    """Each concept's relative error ‖(ΔW_fused − ΔW_i) X_i‖ / ‖ΔW_i X_i‖ on its features
    (cross-attention k/v layers with text features; all layers on its input subspace without)."""
    names = [c.name for c in concepts]
    text = _text_features(names, features)
    width = None if text is None else text[0].shape[1]
    return _fidelity(result, [c.scaled_layers() for c in concepts], names, text, width)


def drift(
    result: FusionResult,
    concepts: Sequence[Concept],
    features: Mapping[str, torch.Tensor],
    unrelated: torch.Tensor,
) -> float:
    """How far the fused k/v move on unrelated prompts' features, relative to how far
    each concept moves its own (RMS per row, over the cross-attention k/v layers)."""
    names = [c.name for c in concepts]
    text = _text_features(names, features)
    rows = _rows(unrelated, "unrelated features")
    return _drift(result, [c.scaled_layers() for c in concepts], text, rows, text[0].shape[1])


def _rows(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.ndim < 2:
        raise ValueError(f"{what} must be a [rows, dim] tensor (got shape {list(x.shape)})")
    x = x.reshape(-1, x.shape[-1])
    x = x.double() if x.dtype == torch.float64 else x.float()  # fits are solved in float64 regardless
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or Inf; check the CLIP that encoded them")
    return x


def _text_features(names: list[str], features: Mapping[str, torch.Tensor] | None) -> list[torch.Tensor] | None:
    if not features:
        return None
    missing = [n for n in names if n not in features]
    if missing:
        raise ValueError(
            f"text features were given for some concepts but not for {missing}; give every concept features "
            "(prompts containing its trigger) or none"
        )
    text = [_rows(features[n], f"text features of concept {n!r}") for n in names]
    widths = {x.shape[1] for x in text}
    if len(widths) > 1:
        raise ValueError(f"text features have different widths {sorted(widths)}; encode all prompts with one CLIP")
    return text


def _subspace_features(updates: Sequence[LayerUpdate | None]) -> FeatureSet:
    rows = [input_subspace(u).dense_rows() if u is not None else None for u in updates]
    return dedupe_features(rows, tol=1e-9)


def _residual(fused: LayerPatch, updates, fs: FeatureSet) -> float:
    target = sum(u.apply(fs.rows) * fs.membership[i].unsqueeze(1) for i, u in enumerate(updates) if u is not None)
    got = patch_apply(fused, fs.rows.to(torch.float64))
    den = float(target.norm())
    return float((got - target).norm()) / den if den > 0 else float(got.norm())


def _work_dtype(update: LayerUpdate) -> torch.dtype:
    return torch.float64 if update.dtype == torch.float64 else torch.float32


def _layer_features(key: str, update: LayerUpdate, i: int, text, width) -> torch.Tensor | None:
    if text is not None:
        x = text[i] if is_cross_attention_kv(key) and update.in_features == width else None
    else:
        x = input_subspace(update).dense_rows()
    return None if x is None else x.to(_work_dtype(update))


def _fidelity(result: FusionResult, layers, names, text, width) -> dict[str, float]:
    fused = result.layers()
    out = {}
    for i, name in enumerate(names):
        err = own = 0.0
        for key, update in layers[i].items():
            x = _layer_features(key, update, i, text, width)
            if x is None:
                continue
            mine = update.apply(x)
            err += float((patch_apply(fused[key], x) - mine).square().sum())
            own += float(mine.square().sum())
        out[name] = math.sqrt(err / own) if own > 0 else 0.0
    return out


def _drift(result: FusionResult, layers, text, reg, width) -> float:
    """‖ΔW_fused X_reg‖ relative to the concepts' own effect ‖ΔW_i X_i‖ (RMS over concepts), k/v layers."""
    moved = own = 0.0
    for key, patch in result.unet.items():
        first = as_update_list(patch)[0]
        if not is_cross_attention_kv(key) or first.in_features != width:
            continue
        dtype = _work_dtype(first)
        moved += float(patch_apply(patch, reg.to(dtype)).square().sum()) / reg.shape[0]
        for i, lay in enumerate(layers):
            if key in lay:
                x = text[i].to(dtype)
                own += float(lay[key].apply(x).square().sum()) / x.shape[0] / len(layers)
    return math.sqrt(moved / own) if own > 0 else 0.0
