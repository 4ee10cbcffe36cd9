"""Small random-weight checkpoints that ComfyUI's own loaders detect.

No pretrained Stable Diffusion weights can be downloaded where the pack is
tested, yet every claim about it must hold on a model that ComfyUI loads the
way it loads a real one. These builders write files in the real checkpoint
layouts (UNet under ``model.diffusion_model.``, the full CLIP text encoders,
a TAESD VAE), with every weight initialised: ComfyUI fills missing keys with
zeros, and a zero text encoder turns every prompt into NaN.

The files are cached by content recipe, so a second call costs a stat().
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from omg_core.families import SD15

# The recipe version: bump when the layout of a written file changes.
_RECIPE_VERSION = 2

SD15_UNET = dict(
    model_channels=320,
    context_dim=768,
    num_heads=8,
    channel_mult=[1],
    num_res_blocks=[1],
    transformer_depth=[1],
    transformer_depth_output=[1, 1],
    transformer_depth_middle=1,
    use_spatial_transformer=True,
    use_linear_in_transformer=False,
    legacy=False,
    in_channels=4,
    out_channels=4,
)

# SD1.5's real UNet layout (860 M parameters): benchmarks at SD1.5 scale, and
# narrower copies where a test needs its 16 cross-attention layers.
SD15_FULL_UNET = SD15.unet_config()

# The smallest SDXL-family layout ComfyUI's detection accepts (Segmind Vega).
SDXL_VEGA_UNET = dict(
    model_channels=320,
    context_dim=2048,
    num_head_channels=64,
    channel_mult=[1, 2, 4],
    num_res_blocks=[2, 2, 2],
    transformer_depth=[0, 0, 1, 1, 2, 2],
    transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2],
    transformer_depth_middle=-1,
    use_spatial_transformer=True,
    use_linear_in_transformer=True,
    legacy=False,
    in_channels=4,
    out_channels=4,
    adm_in_channels=2816,
    num_classes="sequential",
    use_temporal_attention=False,
)


@dataclass(frozen=True)
class TinyModelSpec:
    family: str  # "sd15" or "sdxl"
    seed: int = 0
    unet: dict = field(default_factory=dict)

    def digest(self) -> str:
        payload = json.dumps(
            {"v": _RECIPE_VERSION, "family": self.family, "seed": self.seed, "unet": self.unet},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def init_weights_(module: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Give every parameter a defined value.

    ComfyUI builds layers without initialisation, so memory would otherwise be
    whatever was there. Output convolutions are zeroed as in diffusers' init so
    a random UNet predicts small noise rather than exploding.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "norm" in name and p.ndim == 1:
                p.fill_(1.0)
            else:
                fan_in = p[0].numel() if p.ndim > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=gen) * min(std, fan_in**-0.5))


def build_unet_state(unet_config: dict, seed: int) -> dict[str, torch.Tensor]:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    config = {"image_size": 32, **unet_config}
    unet = UNetModel(**config, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    init_weights_(unet, seed)
    return {f"model.diffusion_model.{k}": v.to(torch.float16) for k, v in unet.state_dict().items()}


def _clip_config(hidden: int, layers: int, heads: int, inter: int, act: str, projection: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        vocab_size=49408,
        hidden_act=act,
        projection_dim=projection,
    )


def build_clip_state(kind: str, seed: int) -> dict[str, torch.Tensor]:
    """A complete, seeded CLIP text encoder (keys without a ``text_model.`` level
    or with it, depending on the transformers version; ComfyUI accepts both)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    if kind == "l":
        model = CLIPTextModel(_clip_config(768, 12, 12, 3072, "quick_gelu", 768))
    else:
        model = CLIPTextModelWithProjection(_clip_config(1280, 32, 20, 5120, "gelu", 1280))
    state = {k: v.detach().to(torch.float16) for k, v in model.state_dict().items() if "position_ids" not in k}
    return state


def build_taesd_state(seed: int) -> dict[str, torch.Tensor]:
    from comfy.taesd.taesd import TAESD

    taesd = TAESD()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in taesd.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 0:
                continue  # TAESD's scale constants keep their defaults
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (p[0].numel() ** -0.5))
    return {
        f"first_stage_model.{k}": v.to(torch.float16) for k, v in taesd.state_dict().items() if k.startswith("taesd_")
    }


def _text_model_prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if not k.startswith("text_model.") and not k.startswith("text_projection"):
            k = "text_model." + k
        out[prefix + k] = v
    return out


def build_checkpoint_state(spec: TinyModelSpec) -> dict[str, torch.Tensor]:
    state = build_unet_state(spec.unet, spec.seed)
    state.update(build_taesd_state(spec.seed + 1))
    if spec.family == "sd15":
        state.update(_text_model_prefixed(build_clip_state("l", spec.seed + 2), "cond_stage_model.transformer."))
    elif spec.family == "sdxl":
        clip_l = _text_model_prefixed(build_clip_state("l", spec.seed + 2), "conditioner.embedders.0.transformer.")
        state.update(clip_l)
        clip_g = build_clip_state("g", spec.seed + 3)
        g = {}
        for k, v in clip_g.items():
            if k.startswith("text_projection"):
                g["conditioner.embedders.1.model.text_projection"] = v.t().contiguous()
            else:
                g[k] = v
        state.update(_open_clip_layout(g))
    else:
        raise ValueError(f"unknown family {spec.family!r}")
    return state


def _open_clip_layout(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SDXL checkpoints store CLIP-G in open_clip naming; ComfyUI converts it back."""
    from comfy.utils import clip_text_transformers_convert  # noqa: F401  (documents the inverse)

    out = {}
    pre = "conditioner.embedders.1.model."
    layers = {}
    for k, v in hf_state.items():
        if k.startswith("conditioner."):
            out[k] = v
            continue
        k = k.removeprefix("text_model.")
        if k == "embeddings.token_embedding.weight":
            out[pre + "token_embedding.weight"] = v
        elif k == "embeddings.position_embedding.weight":
            out[pre + "positional_embedding"] = v
        elif k.startswith("final_layer_norm."):
            out[pre + "ln_final." + k.split(".")[-1]] = v
        elif k.startswith("encoder.layers."):
            parts = k.split(".")
            i, rest = int(parts[2]), ".".join(parts[3:])
            layers.setdefault(i, {})[rest] = v
    for i, lw in layers.items():
        p = f"{pre}transformer.resblocks.{i}."
        for suffix in ("weight", "bias"):
            out[p + f"attn.in_proj_{suffix}"] = torch.cat(
                [lw[f"self_attn.{n}_proj.{suffix}"] for n in ("q", "k", "v")], dim=0
            )
            out[p + f"attn.out_proj.{suffix}"] = lw[f"self_attn.out_proj.{suffix}"]
            out[p + f"ln_1.{suffix}"] = lw[f"layer_norm1.{suffix}"]
            out[p + f"ln_2.{suffix}"] = lw[f"layer_norm2.{suffix}"]
            out[p + f"mlp.c_fc.{suffix}"] = lw[f"mlp.fc1.{suffix}"]
            out[p + f"mlp.c_proj.{suffix}"] = lw[f"mlp.fc2.{suffix}"]
    return out


def default_cache_dir() -> Path:
    return Path(os.environ.get("OMG_CACHE_DIR", Path(__file__).resolve().parents[2] / ".cache"))


def tiny_checkpoint(family: str = "sd15", seed: int = 0, directory: Path | None = None) -> Path:
    """Path of a cached tiny checkpoint of the given family, written if missing."""
    unet = {"sd15": SD15_UNET, "sdxl": SDXL_VEGA_UNET}[family]
    spec = TinyModelSpec(family=family, seed=seed, unet=unet)
    directory = Path(directory or default_cache_dir() / "models")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"omg-tiny-{family}-{spec.digest()}.safetensors"
    if not path.exists():
        from safetensors.torch import save_file

        state = build_checkpoint_state(spec)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"omg_tiny": spec.family})
        tmp.replace(path)
    return path


SDXL_SMALL_UNET = {
    "model_channels": 64,
    "use_linear_in_transformer": True,
    "transformer_depth": [0, 1],
    "transformer_depth_output": [0, 0, 1, 1],
    "transformer_depth_middle": 1,
    "context_dim": 2048,
    "adm_in_channels": 2816,
    "num_classes": "sequential",
    "use_temporal_attention": False,
    "num_res_blocks": [1, 1],
    "channel_mult": [1, 2],
    "num_head_channels": 32,
    "in_channels": 4,
    "out_channels": 4,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
}


def build_sd15_inprocess(unet_config: dict, seed: int = 0):
    """ComfyUI's real SD15 model class with the given UNet layout, as a
    ModelPatcher with initialised random weights (no checkpoint file)."""
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SD15({"image_size": 32, **unet_config})
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    init_weights_(model.diffusion_model, seed)
    model.eval()
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def build_sdxl_inprocess(seed: int = 0):
    """ComfyUI's real SDXL model class at a small size, as a ModelPatcher.

    Detectable SDXL-family checkpoints are ~3 GB with their two text encoders;
    this builds the same ``comfy.model_base.SDXL`` in memory (6.7 M parameters)
    for the tests that need SDXL's shapes (context 2048, pooled ``y``).
    """
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SDXL(dict(SDXL_SMALL_UNET))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    init_weights_(model.diffusion_model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def sdxl_conditioning(batch: int = 1, seed: int = 0, width: int = 64, height: int = 64):
    """Seeded random SDXL conditioning of the right shapes, for shape-only tests."""
    gen = torch.Generator().manual_seed(seed)
    ctx = torch.randn(batch, 77, 2048, generator=gen)
    pooled = torch.randn(batch, 1280, generator=gen)
    return [[ctx, {"pooled_output": pooled, "width": width, "height": height}]]
