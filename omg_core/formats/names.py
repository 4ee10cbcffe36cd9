"""Layer names: every format's spelling -> a name ComfyUI's LoRA key maps know.

ComfyUI's key maps (``comfy.lora.model_lora_keys_unet/clip``) accept kohya
names built from diffusers module names (``lora_unet_down_blocks_0_…``,
``lora_te1_text_model_…``), ComfyUI's generic model keys
(``diffusion_model.…``, ``text_encoders.…``) and a few diffusers spellings —
but not plain ``unet.….to_k`` or PEFT's ``base_model.model.…``. So every
diffusers-style module name is rewritten to its kohya spelling, which is a
pure string transformation, and the adapter suffixes are rewritten to the
ones ComfyUI's adapters parse (``.lora_up.weight``/``.lora_down.weight``…).
"""

from __future__ import annotations

# File suffix -> ComfyUI suffix, longest first so that ".lora_B.default.weight"
# wins over ".weight"-only matches.
_LORA_SUFFIXES = {
    ".lora_up.weight": ".lora_up.weight",
    ".lora_down.weight": ".lora_down.weight",
    ".lora_mid.weight": ".lora_mid.weight",
    ".lora_B.default.weight": ".lora_up.weight",
    ".lora_A.default.weight": ".lora_down.weight",
    ".lora_B.weight": ".lora_up.weight",
    ".lora_A.weight": ".lora_down.weight",
    ".lora_linear_layer.up.weight": ".lora_up.weight",
    ".lora_linear_layer.down.weight": ".lora_down.weight",
    ".lora.up.weight": ".lora_up.weight",
    ".lora.down.weight": ".lora_down.weight",
    "_lora.up.weight": ".lora_up.weight",
    "_lora.down.weight": ".lora_down.weight",
    ".alpha": ".alpha",
    ".dora_scale": ".dora_scale",
}
LOKR_SUFFIXES = (".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b", ".lokr_w1", ".lokr_w2", ".lokr_t2")
FULL_WEIGHT_SUFFIX = ".set_weight"
# Adapter kinds ComfyUI can load but a Concept cannot hold (no low-rank or
# Kronecker form): named so that the error says what the file is.
UNSUPPORTED_SUFFIXES = {
    ".hada_w1_a": "LoHa",
    ".hada_w1_b": "LoHa",
    ".hada_w2_a": "LoHa",
    ".hada_w2_b": "LoHa",
    ".hada_t1": "LoHa",
    ".hada_t2": "LoHa",
    ".oft_blocks": "OFT",
    ".oft_diag": "OFT",
    ".a1.weight": "GLoRA",
    ".lora_magnitude_vector": "DoRA",
    ".lora_magnitude_vector.default": "DoRA",
    ".lora_magnitude_vector.weight": "DoRA",
}

_COMFY_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lycoris_", "diffusion_model.", "text_encoders.")
_UNET_ROOTS = (
    "down_blocks.",
    "mid_block.",
    "up_blocks.",
    "conv_in",
    "conv_out",
    "conv_norm_out",
    "time_embedding.",
    "add_embedding.",
)
_SGM_ROOTS = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "label_emb.", "out.")
_TEXT_ROOTS = ("text_model.", "encoder.layers.", "embeddings.", "final_layer_norm.")


def split_lora_suffix(key: str) -> tuple[str, str] | None:
    """(module name, ComfyUI suffix) for a LoRA tensor name, or None."""
    for suffix in sorted(_LORA_SUFFIXES, key=len, reverse=True):
        if key.endswith(suffix):
            return key[: -len(suffix)], _LORA_SUFFIXES[suffix]
    return None


def split_lokr_suffix(key: str) -> tuple[str, str] | None:
    for suffix in LOKR_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return None


def unsupported_kind(key: str) -> str | None:
    for suffix, kind in UNSUPPORTED_SUFFIXES.items():
        if key.endswith(suffix):
            return kind
    return None


def _te_prefix(which: int) -> str:
    return "lora_te2_" if which == 2 else "lora_te1_"


def _text_module(name: str, which: int) -> str:
    if not name.startswith("text_model."):
        name = "text_model." + name  # transformers 5 drops the text_model level
    return _te_prefix(which) + name.replace(".", "_")


def _unet_module(name: str) -> str:
    # Attention-processor spelling: "attn2.processor.to_k" / "attn1.processor.to_out".
    name = name.replace(".processor.", ".")
    if name.endswith(".to_out"):
        name += ".0"
    return "lora_unet_" + name.replace(".", "_")


def comfy_module_name(module: str) -> str | None:
    """A module name ComfyUI's key maps know, or None when the name says
    nothing about where it belongs."""
    if module.startswith(_COMFY_PREFIXES):
        return module
    for prefix in ("base_model.model.", "unet.base_model.model."):
        if module.startswith(prefix):
            module = module[len(prefix) :]
    if module.startswith("unet."):
        return _unet_module(module[len("unet.") :])
    if module.startswith("text_encoder_2."):
        return _text_module(module[len("text_encoder_2.") :], 2)
    if module.startswith("text_encoder."):
        return _text_module(module[len("text_encoder.") :], 1)
    if module.startswith(_UNET_ROOTS):
        return _unet_module(module)
    if module.startswith(_SGM_ROOTS):
        return "diffusion_model." + module
    if module.startswith("model.diffusion_model."):
        return module[len("model.") :]
    if module.startswith(_TEXT_ROOTS):
        return _text_module(module, 1)
    return None


def is_text_encoder_name(name: str) -> bool:
    return name.startswith(("lora_te", "text_encoders.", "text_encoder"))
