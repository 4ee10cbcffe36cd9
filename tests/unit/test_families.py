"""The family contract: every object in ``FAMILIES`` is consistent with
itself, with the others and with the lookups every reader uses, so adding a
family to the list is all it takes. No ComfyUI needed."""

import pytest
import torch

from omg_core.families import (
    FAMILIES,
    KV_SUFFIXES,
    OTHER_CONTEXT_LABELS,
    SD15,
    SDXL,
    TEXT_ENCODERS,
    UNET_SECTIONS,
    context_label,
    family_for_context_dim,
    family_named,
    family_with_encoder,
    text_encoder_for_width,
)
from omg_core.formats.adapter_file import cross_attention_context_dim, family_from_dims
from omg_core.model.concept import TokenEmbedding, is_cross_attention_kv


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_family_contract(family):
    # The UNet reads the text encoders' features side by side.
    assert family.context_dim == sum(e.width for e in family.text_encoders)
    assert family.unet["context_dim"] == family.context_dim
    # Its name and width lead back to it, and the label names it.
    assert family_named(family.name) is family
    assert family_for_context_dim(family.context_dim) is family
    assert context_label(family.context_dim) == family.label
    for encoder in family.text_encoders:
        assert text_encoder_for_width(encoder.width) is encoder
        assert family_with_encoder(encoder.name) in (family, None)
    # Family-independent code (any SD UNet) relies on the shared layout.
    assert family.kv_suffixes == KV_SUFFIXES and family.unet_sections == UNET_SECTIONS
    assert [s.name for s in family.unet_sections] == list(family.cross_attention_sections)
    spans = list(family.cross_attention_spans.values())
    assert spans[0][0] == 0 and all(a + n == b for (a, n), (b, _) in zip(spans, spans[1:]))
    assert sum(n for _, n in spans) == family.cross_attention_layers > 0
    # An adapter's k/v layers tell its family.
    tensors = {
        f"lora_unet_x_{s.replace('.', '_')}.lora_down.weight": torch.zeros(4, family.context_dim) for s in KV_SUFFIXES
    }
    assert cross_attention_context_dim(tensors) == family.context_dim
    assert family_from_dims(family.context_dim) == family.name
    unet_config = family.unet_config()
    unet_config["transformer_depth"].append(99)
    assert family.unet["transformer_depth"] != unet_config["transformer_depth"]  # a copy, not the family's own


def test_families_differ_in_what_tells_them_apart():
    for attr in ("name", "label", "context_dim"):
        values = [getattr(f, attr) for f in FAMILIES]
        assert len(set(values)) == len(values), attr
    assert not set(OTHER_CONTEXT_LABELS) & {f.context_dim for f in FAMILIES}
    assert len({e.name for e in TEXT_ENCODERS}) == len({e.width for e in TEXT_ENCODERS}) == len(TEXT_ENCODERS)


@pytest.mark.parametrize("dim", [None, 0, 320, 1024, 1280, 4096])
def test_unknown_width_is_no_family(dim):
    assert family_for_context_dim(dim) is None
    assert family_from_dims(dim) == "unknown"


def test_unknown_names_and_encoders():
    assert family_named("unknown") is None and family_named(None) is None and family_named("SD1.5") is None
    assert text_encoder_for_width(1024) is None
    assert family_with_encoder("clip_h") is None
    assert context_label(1024) == "SD2.x" and context_label(999) is None and context_label(None) is None


def test_the_known_facts():
    """The numbers the file formats, messages and Mix-of-Show's layer-wise tokens rely on."""
    assert (SD15.name, SD15.label, SD15.context_dim) == ("sd15", "SD1.5", 768)
    assert (SDXL.name, SDXL.label, SDXL.context_dim) == ("sdxl", "SDXL", 2048)
    assert [(e.name, e.width) for e in SDXL.text_encoders] == [("clip_l", 768), ("clip_g", 1280)]
    assert SD15.cross_attention_spans == {"input": (0, 6), "middle": (6, 1), "output": (7, 9)}
    assert (SD15.cross_attention_layers, SDXL.cross_attention_layers) == (16, 70)
    # Only SDXL has CLIP-G: a CLIP-G token or layer makes a file SDXL, CLIP-L tells nothing.
    assert family_with_encoder("clip_g") is SDXL and family_with_encoder("clip_l") is None
    clip_g = TokenEmbedding("<t>", "clip_g", torch.zeros(1, 1280))
    assert family_from_dims(None, (clip_g,)) == "sdxl"
    assert family_from_dims(None, (), {"lora_te2_text_model_x.lora_down.weight": torch.zeros(1, 1)}) == "sdxl"
    assert family_from_dims(None, (), {"text_encoders.clip_g.x.lora_down.weight": torch.zeros(1, 1)}) == "sdxl"
    assert family_from_dims(None, (), {"lora_te1_text_model_x.lora_down.weight": torch.zeros(1, 1)}) == "unknown"


def test_kv_layer_names():
    for suffix in KV_SUFFIXES:
        assert is_cross_attention_kv(f"diffusion_model.input_blocks.1.1.transformer_blocks.0.{suffix}.weight")
    assert not is_cross_attention_kv("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight")
    assert not is_cross_attention_kv("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_q.weight")
