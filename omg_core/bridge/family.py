"""Which family a loaded ComfyUI MODEL belongs to.

Read from the UNet configuration ComfyUI detected when it loaded the
checkpoint, so a model is known by the same number (the cross-attention
width) that tells adapter files apart.
"""

from __future__ import annotations

from omg_core.families import FAMILIES, Family, family_for_context_dim, labels


def model_context_dim(model) -> int | None:
    """The width of the text features the UNet's cross-attention reads."""
    return model.model.model_config.unet_config.get("context_dim")


def family_of_model(model) -> Family | None:
    """The model's family, or None for a model that is none of ``FAMILIES`` (SD2.x, a pruned UNet…)."""
    return family_for_context_dim(model_context_dim(model))


def unsupported_model_message(model, what: str) -> str:
    supported = " and ".join(f"{f.label} (context {f.context_dim})" for f in FAMILIES)
    return (
        f"{what} supports {supported} UNets; this model is {type(model.model).__name__} with context "
        f"{model_context_dim(model)}. Load an {labels()} checkpoint."
    )


def model_family(model, what: str = "OMG") -> Family:
    """The model's family, or a ValueError naming the families ``what`` supports."""
    family = family_of_model(model)
    if family is None:
        raise ValueError(unsupported_model_message(model, what))
    return family
