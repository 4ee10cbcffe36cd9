"""Adapter files written the way each format's own tools write them.

Each builder follows the published layout of its format (key names, nesting,
container, where the scale lives) at the layer shapes of the tiny test models,
and returns the update every layer must come out as, so that a test can check
a reader against the numbers rather than against itself.

Layouts followed:
- kohya/sd-scripts: ``lora_unet_<module with _>.lora_up.weight`` / ``.lora_down.weight`` /
  ``.alpha`` (SD1.5 modules in diffusers naming, SDXL in SGM naming), ``lora_te_…``/``lora_te1_…``;
- diffusers (PEFT backend): ``unet.<module>.lora_A.weight``/``lora_B.weight`` with the LoRA config
  in the safetensors header ``lora_adapter_metadata``; raw PEFT ``base_model.model.<module>.lora_A.weight``
  with ``adapter_config.json`` beside it; old diffusers ``unet.<module>.lora.down.weight`` and
  ``text_encoder.<module>.lora_linear_layer.down.weight``; attention processors
  ``<block>.attn2.processor.to_k_lora.down.weight`` (``pytorch_lora_weights.bin``);
- Mix-of-Show ED-LoRA: ``torch.save({'params': {'new_concept_embedding': {token: [16, 768]},
  'text_encoder': {...lora_down/lora_up...}, 'unet': {...}}})``, no alpha;
- Custom Diffusion: diffusers ``pytorch_custom_diffusion_weights.safetensors`` with
  ``…attn2.processor.to_k_custom_diffusion.weight`` (full weights) and ``<new1>.bin`` beside it;
  the original ``delta.ckpt`` ``{'state_dict': {'model.diffusion_model.….attn2.to_k.weight': W, 'embed': [n, 768]}}``,
  its compressed form (``{'u', 'v'}`` per layer) and the diffusers-variant ``delta.bin``;
- LyCORIS LoKr: ``lora_unet_<module>.lokr_w1`` / ``.lokr_w2_a`` / ``.lokr_w2_b`` / ``.alpha``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file


@dataclass(frozen=True)
class Layer:
    diffusers: str  # diffusers module name
    model_key: str  # ComfyUI model weight key
    out: int
    inp: int

    @property
    def sgm(self) -> str:
        return self.model_key[len("diffusion_model.") : -len(".weight")]


def _kv(blocks: dict[str, str], out: int, inp: int) -> tuple[Layer, ...]:
    layers = []
    for diffusers_block, sgm_block in blocks.items():
        for proj in ("to_k", "to_v"):
            layers.append(
                Layer(
                    f"{diffusers_block}.transformer_blocks.0.attn2.{proj}",
                    f"diffusion_model.{sgm_block}.transformer_blocks.0.attn2.{proj}.weight",
                    out,
                    inp,
                )
            )
    return tuple(layers)


SD15_BLOCKS = {
    "down_blocks.0.attentions.0": "input_blocks.1.1",
    "mid_block.attentions.0": "middle_block.1",
    "up_blocks.0.attentions.0": "output_blocks.0.1",
    "up_blocks.0.attentions.1": "output_blocks.1.1",
}
SDXL_BLOCKS = {
    "down_blocks.1.attentions.0": "input_blocks.3.1",
    "mid_block.attentions.0": "middle_block.1",
    "up_blocks.0.attentions.0": "output_blocks.0.1",
    "up_blocks.0.attentions.1": "output_blocks.1.1",
}
SD15_KV = _kv(SD15_BLOCKS, 320, 768)
SDXL_KV = _kv(SDXL_BLOCKS, 128, 2048)
SD15_ATTN1_OUT = Layer(
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
    "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.weight",
    320,
    320,
)
SD15_TE = tuple(
    Layer(
        f"text_model.encoder.layers.{i}.self_attn.{p}",
        f"clip_l.transformer.text_model.encoder.layers.{i}.self_attn.{p}.weight",
        768,
        768,
    )
    for i in (0, 1)
    for p in ("k_proj", "v_proj")
)


@dataclass
class BuiltFixture:
    path: Path
    unet: dict[str, torch.Tensor] = field(default_factory=dict)  # model key -> expected ΔW [out, in]
    text_encoder: dict[str, torch.Tensor] = field(default_factory=dict)
    triggers: tuple[str, ...] = ()
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)  # token -> vectors as stored


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pair(layer: Layer, rank: int, g: torch.Generator, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    up = (torch.randn(layer.out, rank, generator=g) * 0.1).to(dtype)
    down = (torch.randn(rank, layer.inp, generator=g) * 0.1).to(dtype)
    return up, down


def _target(fixture: BuiltFixture, layer: Layer) -> dict[str, torch.Tensor]:
    return fixture.text_encoder if layer.model_key.startswith("clip_") else fixture.unet


def _kohya_name(layer: Layer, sgm: bool, te_prefix: str) -> str:
    if layer.model_key.startswith("clip_"):
        return te_prefix + layer.diffusers.replace(".", "_")
    return "lora_unet_" + (layer.sgm if sgm else layer.diffusers).replace(".", "_")


def write_kohya(
    path: Path,
    layers=SD15_KV,
    te_layers=SD15_TE,
    rank: int = 4,
    alpha: float = 2.0,
    seed: int = 0,
    sgm_names: bool = False,
    te_prefix: str = "lora_te_",
    trigger: str | None = None,
) -> BuiltFixture:
    g, fx, sd = _gen(seed), BuiltFixture(Path(path)), {}
    for layer in (*layers, *te_layers):
        up, down = _pair(layer, rank, g, torch.float16)
        name = _kohya_name(layer, sgm_names, te_prefix)
        sd[f"{name}.lora_up.weight"], sd[f"{name}.lora_down.weight"] = up, down
        sd[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
        _target(fx, layer)[layer.model_key] = alpha / rank * (up.float() @ down.float())
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(alpha)}
    if trigger:
        meta["modelspec.trigger_phrase"] = trigger
        fx.triggers = (trigger,)
    save_file(sd, str(path), metadata=meta)
    return fx


def write_peft(
    path: Path, layers=SD15_KV, te_layers=SD15_TE, rank: int = 4, alpha: float = 8.0, seed: int = 1, style="diffusers"
) -> BuiltFixture:
    """``style``: "diffusers" (header config), "peft" (adapter_config.json), "old"
    (``lora.down``/``lora_linear_layer``) or "attn_procs" (``processor.to_k_lora``)."""
    g, fx, sd = _gen(seed), BuiltFixture(Path(path)), {}
    scale = alpha / rank if style in ("diffusers", "peft") else 1.0
    for layer in (*layers, *te_layers):
        up, down = _pair(layer, rank, g)
        is_te = layer.model_key.startswith("clip_")
        if style == "diffusers":
            base = ("text_encoder." if is_te else "unet.") + layer.diffusers
            sd[f"{base}.lora_A.weight"], sd[f"{base}.lora_B.weight"] = down, up
        elif style == "peft":
            if is_te:
                continue  # a PEFT save holds one model; this one is the UNet
            sd[f"base_model.model.{layer.diffusers}.lora_A.weight"] = down
            sd[f"base_model.model.{layer.diffusers}.lora_B.weight"] = up
        elif style == "old":
            if is_te:
                base = f"text_encoder.{layer.diffusers}.lora_linear_layer"
                sd[f"{base}.down.weight"], sd[f"{base}.up.weight"] = down, up
            else:
                sd[f"unet.{layer.diffusers}.lora.down.weight"], sd[f"unet.{layer.diffusers}.lora.up.weight"] = down, up
        elif style == "attn_procs":
            if is_te:
                continue  # attention processors live in the UNet only
            block, proj = layer.diffusers.rsplit(".", 1)
            if proj == "0":  # to_out.0 -> processor.to_out_lora
                block, proj = layer.diffusers.rsplit(".", 2)[0], "to_out"
            sd[f"{block}.processor.{proj}_lora.down.weight"] = down
            sd[f"{block}.processor.{proj}_lora.up.weight"] = up
        else:
            raise ValueError(style)
        _target(fx, layer)[layer.model_key] = scale * (up @ down)
    if style == "diffusers":
        config = {"unet.r": rank, "unet.lora_alpha": alpha, "text_encoder.r": rank, "text_encoder.lora_alpha": alpha}
        save_file(sd, str(path), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(config)})
    elif style == "peft":
        save_file(sd, str(path), metadata={"format": "pt"})
        (Path(path).parent / "adapter_config.json").write_text(
            json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": ["to_k", "to_v"]})
        )
    elif style == "attn_procs":
        torch.save(sd, str(path))
    else:
        save_file(sd, str(path))
    return fx


def write_edlora(
    path: Path,
    layers=(*SD15_KV, SD15_ATTN1_OUT),
    te_layers=SD15_TE,
    tokens=("<cat1>", "<cat2>"),
    rank: int = 4,
    n_layers: int = 16,
    seed: int = 2,
    with_proj_in: bool = True,
) -> BuiltFixture:
    g, fx = _gen(seed), BuiltFixture(Path(path))
    unet, text = {}, {}
    for layer in (*layers, *te_layers):
        up, down = _pair(layer, rank, g)
        section = text if layer.model_key.startswith("clip_") else unet
        section[f"{layer.diffusers}.lora_down.weight"] = down
        section[f"{layer.diffusers}.lora_up.weight"] = up
        _target(fx, layer)[layer.model_key] = up @ down
    if with_proj_in:  # where='Transformer2DModel' also wraps the 1x1 proj_in convolution
        up = torch.randn(320, rank, 1, 1, generator=g) * 0.1
        down = torch.randn(rank, 320, 1, 1, generator=g) * 0.1
        unet["down_blocks.0.attentions.0.proj_in.lora_down.weight"] = down
        unet["down_blocks.0.attentions.0.proj_in.lora_up.weight"] = up
        fx.unet["diffusion_model.input_blocks.1.1.proj_in.weight"] = up.flatten(1) @ down.flatten(1)
    embeds = {t: torch.randn(n_layers, 768, generator=g) * 0.02 for t in tokens}
    torch.save({"params": {"new_concept_embedding": embeds, "text_encoder": text, "unet": unet}}, str(path))
    fx.triggers, fx.embeddings = tuple(tokens), embeds
    return fx


def write_custom_diffusion(
    path: Path, base_weights: dict[str, torch.Tensor], layers=SD15_KV, seed: int = 3, style: str = "diffusers"
) -> BuiltFixture:
    """``style``: "diffusers" (``path`` is a folder), "delta_ckpt", "compressed" or "delta_bin".

    Full-weight styles store ``W_base + Δ``; ``base_weights`` maps model keys
    to the base model's weights (the expected update is Δ)."""
    g, fx = _gen(seed), BuiltFixture(Path(path))
    token = torch.randn(768, generator=g) * 0.02
    entries, compressed = {}, {}
    for layer in layers:
        up, down = _pair(layer, 2, g)
        delta = up @ down
        fx.unet[layer.model_key] = delta
        entries[layer] = base_weights[layer.model_key].float() + delta
        compressed[layer] = {"u": up, "v": down}
    if style == "diffusers":
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        sd = {}
        for layer, w in entries.items():
            block, proj = layer.diffusers.rsplit(".", 1)
            sd[f"{block}.processor.{proj}_custom_diffusion.weight"] = w
        fx.path = folder / "pytorch_custom_diffusion_weights.safetensors"
        save_file(sd, str(fx.path))
        # diffusers' save_new_embed: safetensors content under a .bin name
        save_file({"<new1>": token}, str(folder / "<new1>.bin"), metadata={"format": "pt"})
    elif style == "delta_ckpt":
        sd = {f"model.{layer.model_key}": w for layer, w in entries.items()}
        sd["embed"] = token.unsqueeze(0)
        torch.save({"state_dict": sd}, str(path))
    elif style == "compressed":
        sd = {f"model.{layer.model_key}": uv for layer, uv in compressed.items()}
        sd["embed"] = token.unsqueeze(0)
        torch.save({"state_dict": sd}, str(path))
    elif style == "delta_bin":
        unet = {f"{layer.diffusers}.weight": w for layer, w in entries.items()}
        torch.save({"unet": unet, "modifier_token": {"<new1>": token}}, str(path))
    else:
        raise ValueError(style)
    fx.triggers, fx.embeddings = ("<new1>",), {"<new1>": token.unsqueeze(0)}
    return fx


def write_lokr(
    path: Path, layers=SD15_KV, rank: int = 4, alpha: float = 2.0, seed: int = 4, decomposed_w1: bool = False
) -> BuiltFixture:
    """LyCORIS LoKr: out = o1·o2, in = i1·i2 with a small full ``lokr_w1`` and a
    low-rank ``lokr_w2 = lokr_w2_a @ lokr_w2_b`` (or both factors low-rank)."""
    g, fx, sd = _gen(seed), BuiltFixture(Path(path)), {}
    for layer in layers:
        o1, i1 = 4, 8
        o2, i2 = layer.out // o1, layer.inp // i1
        name = "lora_unet_" + layer.diffusers.replace(".", "_")
        w2a, w2b = torch.randn(o2, rank, generator=g) * 0.1, torch.randn(rank, i2, generator=g) * 0.1
        sd[f"{name}.lokr_w2_a"], sd[f"{name}.lokr_w2_b"] = w2a, w2b
        if decomposed_w1:
            w1a, w1b = torch.randn(o1, rank, generator=g), torch.randn(rank, i1, generator=g)
            sd[f"{name}.lokr_w1_a"], sd[f"{name}.lokr_w1_b"] = w1a, w1b
            w1 = w1a @ w1b
        else:
            w1 = torch.randn(o1, i1, generator=g)
            sd[f"{name}.lokr_w1"] = w1
        sd[f"{name}.alpha"] = torch.tensor(alpha)
        fx.unet[layer.model_key] = alpha / rank * torch.kron(w1, w2a @ w2b)
    save_file(sd, str(path), metadata={"ss_network_module": "lycoris.kohya", "ss_network_args": '{"algo": "lokr"}'})
    return fx
