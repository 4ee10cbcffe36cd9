"""The native format round-trips a concept exactly and keeps its identity in the header."""

import json

import pytest
import torch
from safetensors import safe_open

from omg_core.formats.native import read_native, read_native_concept, save_native
from omg_core.model.concept import Concept, DenseUpdate, KroneckerUpdate, LowRankUpdate, TokenEmbedding

K = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
V = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight"
Q = "diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_q.weight"
TE = "clip_l.transformer.text_model.encoder.layers.0.self_attn.k_proj.weight"


def _concept(strength: float = 1.0) -> Concept:
    g = torch.Generator().manual_seed(0)
    return Concept(
        name="cat",
        triggers=("omgcat",),
        family="sd15",
        source_format="native",
        unet={
            K: LowRankUpdate(torch.randn(320, 4, generator=g), torch.randn(4, 768, generator=g), scale=0.5),
            V: KroneckerUpdate(torch.randn(4, 8, generator=g), torch.randn(80, 96, generator=g), scale=2.0),
            Q: DenseUpdate(torch.randn(320, 320, generator=g), scale=0.25),
        },
        text_encoder={TE: LowRankUpdate(torch.randn(768, 2, generator=g), torch.randn(2, 768, generator=g))},
        embeddings=(TokenEmbedding("omgcat", "clip_l", torch.randn(2, 768, generator=g)),),
        metadata={"trained_steps": "100"},
        strength=strength,
    )


def test_native_roundtrip_preserves_every_layer_and_embedding(tmp_path):
    concept = _concept()
    path = tmp_path / "cat.safetensors"
    save_native(path, concept)
    back = read_native_concept(path)
    assert (back.name, back.triggers, back.family) == ("cat", ("omgcat",), "sd15")
    assert set(back.unet) == set(concept.unet) and set(back.text_encoder) == set(concept.text_encoder)
    for key, update in concept.layers().items():
        assert type(back.layers()[key]) is type(update)
        torch.testing.assert_close(back.layers()[key].dense(), update.dense())
    assert back.embeddings[0].token == "omgcat" and back.embeddings[0].encoder == "clip_l"
    torch.testing.assert_close(back.embeddings[0].vectors, concept.embeddings[0].vectors)


def test_native_file_folds_strength_into_the_stored_update(tmp_path):
    path = tmp_path / "cat.safetensors"
    save_native(path, _concept(strength=0.5))
    back = read_native_concept(path)
    torch.testing.assert_close(back.unet[K].dense(), _concept().unet[K].dense() * 0.5)
    assert back.strength == 1.0


def test_native_header_holds_identity_and_basis_position(tmp_path):
    path = tmp_path / "cat.safetensors"
    save_native(path, _concept(), extra_metadata={"basis_seed": 7, "omg_basis_slot": 3, "note": "hello"})
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["omg_version"] == "1"
    assert meta["omg_name"] == "cat" and json.loads(meta["omg_triggers"]) == ["omgcat"]
    assert meta["omg_family"] == "sd15" and meta["omg_rank"] == "4"
    assert meta["omg_basis_seed"] == "7" and meta["omg_basis_slot"] == "3" and meta["note"] == "hello"
    assert meta["trained_steps"] == "100"
    # ComfyUI's generic LoRA names, directly usable by LoraLoader.
    assert "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.lora_up.weight" in keys
    assert "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.alpha" in keys
    assert "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.k_proj.lora_down.weight" in keys
    assert "bundle_emb.omgcat.clip_l" in keys


def test_native_reader_reports_family_and_context_dim(tmp_path):
    path = tmp_path / "cat.safetensors"
    save_native(path, _concept())
    adapter = read_native(path)
    assert adapter.format == "native" and adapter.context_dim == 768


def test_saving_an_empty_concept_says_there_is_nothing_to_save(tmp_path):
    empty = Concept(name="void", triggers=(), family="sd15", source_format="native")
    with pytest.raises(ValueError, match="nothing to save"):
        save_native(tmp_path / "void.safetensors", empty)


def test_unet_key_without_model_prefix_is_refused_with_the_expected_prefix(tmp_path):
    bad = Concept(
        name="x",
        triggers=(),
        family="sd15",
        source_format="native",
        unet={"input_blocks.1.weight": DenseUpdate(torch.zeros(2, 2))},
    )
    with pytest.raises(ValueError, match="must start with 'diffusion_model.'"):
        save_native(tmp_path / "x.safetensors", bad)
