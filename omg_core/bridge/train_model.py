"""The ComfyUI side of concept training: which layers, how the LoRA runs, the loss.

The LoRA terms are forward hooks on the real ``Linear`` modules of a loaded
ModelPatcher clone, so the forward pass is ComfyUI's own (its casts, its
attention, its ``apply_model``). ComfyUI runs nodes under
``torch.inference_mode``, so weights loaded by a node are inference tensors,
which autograd refuses to save for the backward pass: such weights get a
no-op patch on the clone, which makes ComfyUI write ordinary copies when it
loads the clone and put the originals back when it unloads it. The input
MODEL/CLIP are never changed.

ComfyUI is imported lazily inside the functions that need it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from omg_core.bridge.family import model_family, unsupported_model_message
from omg_core.families import KV_SUFFIXES, Family
from omg_core.model.basis import basis_rows, max_slots
from omg_core.model.forms import (
    FORMS,
    kronecker_shape,
    kronecker_update,
    orthonormal_columns,
    slot_width,
    svd_update,
)
from omg_core.model.updates import LayerUpdate, LowRankUpdate

TARGETS = ("kv", "attention")
DOWN_MODES = ("basis", "free")
_ATTENTION_SUFFIXES = tuple(f"{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0"))


def stream_seed(seed: int, tag: int) -> int:
    """A generator seed for one random stream (a step, the init, the augmentation)."""
    return (int(seed) * 6364136223846793005 + int(tag) * 1442695040888963407 + 1) % (2**63)


# ---------------------------------------------------------------- layers
def target_layers(diffusion_model: torch.nn.Module, target: str) -> dict[str, torch.nn.Module]:
    """ComfyUI weight key -> Linear module of every adapted projection
    ("kv": cross-attention to_k/to_v; "attention": q/k/v/out of attn1 and attn2)."""
    suffixes = KV_SUFFIXES if target == "kv" else _ATTENTION_SUFFIXES
    found = {
        f"diffusion_model.{name}.weight": m
        for name, m in diffusion_model.named_modules()
        if name.endswith(suffixes) and isinstance(m, torch.nn.Linear)
    }
    if not found:
        raise ValueError("this model has no UNet cross-attention layers to train (is it a Stable Diffusion UNet?)")
    return found


def training_family(model) -> Family:
    """The family of a model concept training can run on.

    The loss assumes a discrete noise-prediction schedule, which only these
    families have here."""
    import comfy.model_sampling

    family = model_family(model, "concept training")
    ms = model.model.model_sampling
    if not isinstance(ms, comfy.model_sampling.EPS) or not hasattr(ms, "sigmas"):
        raise ValueError(unsupported_model_message(model, "concept training"))
    return family


def check_layout(layers: dict[str, torch.nn.Module], rank: int, slot: int, down: str, form: str = "lora") -> None:
    """Rank and slot must fit every adapted layer; say which limit was hit.

    A kronecker concept's slot rows live on w2's input (``forms.slot_width``),
    so its rank and slots are bounded by that width, not the layer's."""
    if form == "kronecker":
        for m in layers.values():
            kronecker_shape(m.out_features, m.in_features)
    what, whats = (
        ("slot factor (w2)", "slot factors (w2)") if form == "kronecker" else ("adapted layer", "adapted layers")
    )
    smallest = min(min(slot_width(form, m.in_features), m.out_features) for m in layers.values())
    if rank > smallest:
        raise ValueError(
            f"rank {rank} is too large: the smallest {what} has {smallest} features; "
            f"use a rank of at most {smallest} (4 to 16 is typical)"
        )
    if down == "basis":
        in_dim = min(slot_width(form, m.in_features) for m in layers.values())
        slots = max_slots(in_dim, rank)
        if not 0 <= slot < slots:
            raise ValueError(
                f"slot {slot} is out of range: with rank {rank}, the {in_dim}-wide {whats} hold {slots} "
                f"slots; use a slot from 0 to {slots - 1} (or a smaller rank)"
            )


# ---------------------------------------------------------------- adapters
# Every adapter form answers the same three questions: its term ``delta(x)``
# for the forward hook, its trained tensors by name (``parts``: the optimiser's
# parameter groups and the checkpoint's entries), and the update it has become
# (``update``). The trained parts are float32 whatever the model computes in.
@dataclass
class Adapter:
    """ΔW = scale · up @ down on one Linear, applied to activations."""

    down: torch.Tensor  # [rank, in]; frozen basis rows, or trained ("free")
    up: torch.Tensor  # [out, rank]; trained, starts at zero
    scale: float = 1.0

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.linear(x.to(self.up.dtype), self.down), self.up)

    def parts(self) -> dict[str, torch.Tensor]:
        return {"up": self.up, **({"down": self.down} if self.down.requires_grad else {})}

    def update(self) -> LayerUpdate:
        return LowRankUpdate(up=_frozen_copy(self.up), down=_frozen_copy(self.down))


@dataclass
class SvdAdapter:
    """ΔW = U · diag(gain·σ) · P (TriLoRA) with U = orthonormal_columns(free).

    U is parametrised through the QR of a free matrix rather than re-orthonormalised
    after each optimiser step: the forward pass, the saved file and the
    checkpoint then all hold the same exactly-orthonormal U, and AdamW's moments
    stay those of the one tensor it updates (a retraction after the step would
    move the parameter under them). The QR of an [out, r] matrix costs O(out·r²)
    per layer and step, nothing next to the UNet. σ starts at zero, so ΔW starts
    at exactly zero as LoRA's zero up does; ``gain`` = √out lets σ move as fast
    as a LoRA's up-projection does under AdamW (every entry of up moves by about
    the learning rate, so ‖ΔW‖ by about lr·√(out·r); σ has only r entries).
    """

    rows: torch.Tensor  # [rank, in]; the slot's basis rows (Vᵀ), frozen
    free: torch.Tensor  # [out, rank]; trained, U is its orthonormal factor
    sigma: torch.Tensor  # [rank]; trained, starts at zero
    gain: float

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        u = orthonormal_columns(self.free)
        return F.linear(F.linear(x.to(self.free.dtype), self.rows) * (self.gain * self.sigma), u)

    def parts(self) -> dict[str, torch.Tensor]:
        return {"svd_u": self.free, "svd_sigma": self.sigma}

    def update(self) -> LayerUpdate:
        with torch.no_grad():
            u = orthonormal_columns(self.free.detach().float().cpu())
            return svd_update(u, self.gain * self.sigma.detach().float().cpu(), _frozen_copy(self.rows))


@dataclass
class KroneckerAdapter:
    """ΔW = w1 ⊗ (U_B · S) (DiffuseKronA) with S the slot's rows of R^{in/8}, frozen.

    U_B starts at zero (ΔW = 0 at the start, as LoRA's zero up); w1 starts
    with rows of norm about 1, so ‖ΔW‖ = ‖w1‖‖U_B‖ moves per step about as a
    LoRA's does.
    """

    w1: torch.Tensor  # [8, 8]; trained
    up: torch.Tensor  # [out2, rank]; trained, starts at zero
    rows: torch.Tensor  # [rank, in/8]; the slot's basis rows, frozen

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """kron(w1, U_B S) x = w1 · X · (U_B S)ᵀ on x as [.., in1, in2], the slot projection first."""
        x = x.to(self.w1.dtype)
        lead = x.shape[:-1]
        xm = x.reshape(*lead, self.w1.shape[1], self.rows.shape[1])
        y = torch.einsum("ij,...jk,lk->...il", self.w1, xm @ self.rows.T, self.up)
        return y.reshape(*lead, self.w1.shape[0] * self.up.shape[0])

    def parts(self) -> dict[str, torch.Tensor]:
        return {"kron_w1": self.w1, "kron_up": self.up}

    def update(self) -> LayerUpdate:
        with torch.no_grad():
            return kronecker_update(_frozen_copy(self.w1), _frozen_copy(self.up), _frozen_copy(self.rows))


TrainedAdapter = Adapter | SvdAdapter | KroneckerAdapter


def _frozen_copy(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().cpu().clone()


def make_adapters(
    layers: dict[str, torch.nn.Module],
    rank: int,
    down: str,
    basis_seed: int,
    slot: int,
    seed: int,
    device,
    form: str = "lora",
) -> dict[str, TrainedAdapter]:
    if form not in FORMS:
        raise ValueError(f"adapter form {form!r} is unknown; use one of {FORMS}")
    adapters: dict[str, TrainedAdapter] = {}
    gen = torch.Generator().manual_seed(stream_seed(seed, -1))
    for key, m in sorted(layers.items()):
        if form == "svd":
            rows = basis_rows(basis_seed, slot, rank, m.in_features).to(device)
            free = torch.randn(m.out_features, rank, generator=gen, dtype=torch.float64)
            free = orthonormal_columns(free).float().to(device).requires_grad_(True)
            sigma = torch.zeros(rank, device=device, requires_grad=True)
            adapters[key] = SvdAdapter(rows=rows, free=free, sigma=sigma, gain=float(m.out_features) ** 0.5)
            continue
        if form == "kronecker":
            shape = kronecker_shape(m.out_features, m.in_features)
            rows = basis_rows(basis_seed, slot, rank, shape.in2).to(device)
            w1 = (torch.randn(shape.out1, shape.in1, generator=gen) * shape.in1**-0.5).to(device)
            up = torch.zeros(shape.out2, rank, device=device, requires_grad=True)
            adapters[key] = KroneckerAdapter(w1=w1.requires_grad_(True), up=up, rows=rows)
            continue
        if down == "basis":
            rows = basis_rows(basis_seed, slot, rank, m.in_features).to(device)
        else:  # a standard LoRA init (rows of norm ~1), trained
            rows = (torch.randn(rank, m.in_features, generator=gen) * m.in_features**-0.5).to(device)
            rows.requires_grad_(True)
        up = torch.zeros(m.out_features, rank, device=device, requires_grad=True)
        adapters[key] = Adapter(down=rows, up=up)
    return adapters


@contextlib.contextmanager
def hooked(layers: dict[str, torch.nn.Module], adapters: dict[str, TrainedAdapter]) -> Iterator[None]:
    """Add each adapter's term to its Linear's output for the duration."""

    def hook_for(adapter: TrainedAdapter):
        def hook(module, args, output):
            return output + adapter.delta(args[0]).to(output.dtype)

        return hook

    handles = [layers[k].register_forward_hook(hook_for(a)) for k, a in adapters.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------- clones
def _no_op_patch():
    from comfy.weight_adapter.base import WeightAdapterBase

    class Unchanged(WeightAdapterBase):
        """Leaves the weight as it is; ComfyUI still writes a fresh
        (autograd-usable) copy of the weight when it applies the patch."""

        name = "omg_unchanged"

        def calculate_weight(self, weight, key, *args, **kwargs):
            return weight

    return Unchanged()


def make_trainable(patcher) -> None:
    """Let autograd read a (cloned) patcher's weights: inference-mode weights get the no-op patch."""
    keys = [k for k, p in patcher.model.named_parameters() if p.is_inference()]
    if keys:
        patcher.add_patches(dict.fromkeys(keys, _no_op_patch()))


class _OutOfPlaceResidual:
    """ComfyUI's ``CLIPLayer.forward`` adds its residuals in place, which
    autograd cannot differentiate through; the same layer, out of place."""

    def __init__(self, layer: torch.nn.Module):
        self.layer = layer

    def __call__(self, x, mask=None, optimized_attention=None):
        layer = self.layer
        x = x + layer.self_attn(layer.layer_norm1(x), mask, optimized_attention)
        return x + layer.mlp(layer.layer_norm2(x))


def make_text_encoder_differentiable(clip_patcher) -> None:
    """Object patches on a CLIP clone: applied while it is loaded, restored after."""
    import comfy.clip_model

    for name, m in clip_patcher.model.named_modules():
        if isinstance(m, comfy.clip_model.CLIPLayer):
            clip_patcher.add_object_patch(f"{name}.forward", _OutOfPlaceResidual(m))


def release(patcher) -> None:
    """Unload a clone now, so the shared model gets its own weights back."""
    import comfy.model_management as mm

    for i in range(len(mm.current_loaded_models) - 1, -1, -1):
        if mm.current_loaded_models[i].model is patcher:
            mm.current_loaded_models.pop(i).model_unload()


def compute_dtype(patcher) -> torch.dtype:
    """fp16 gradients under- and overflow without loss scaling; such models
    train in bf16 where the device has it, else in fp32."""
    import comfy.model_management as mm

    dtype = patcher.model.manual_cast_dtype or patcher.model.get_dtype()
    if dtype != torch.float16:
        return dtype
    return torch.bfloat16 if mm.should_use_bf16(patcher.load_device) else torch.float32


# ---------------------------------------------------------------- loss
def diffusion_loss(inner, latents: torch.Tensor, conds: dict, gen: torch.Generator, indices=None) -> torch.Tensor:
    """Epsilon-prediction MSE at timesteps drawn uniformly from the model's own
    discrete schedule, through ComfyUI's ``apply_model`` (x_t = x0 + σ·ε)."""
    ms = inner.model_sampling
    n = latents.shape[0]
    if indices is None:
        indices = torch.randint(0, len(ms.sigmas), (n,), generator=gen)
    noise = torch.randn(latents.shape, generator=gen).to(latents.device)
    sigma = ms.sigmas.to(latents.device)[indices.to(latents.device)].float()
    x_t = ms.noise_scaling(sigma, noise, latents)
    batch = {k: v.to(latents.device).expand(n, *v.shape[1:]) for k, v in conds.items()}
    denoised = inner.apply_model(x_t, sigma, transformer_options={}, **batch)
    eps = (x_t - denoised.float()) / sigma.view(-1, *([1] * (latents.ndim - 1)))
    return F.mse_loss(eps, noise)
