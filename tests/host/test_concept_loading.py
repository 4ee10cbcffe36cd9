"""Every supported adapter format binds to ComfyUI's real SD1.5 / SDXL models and changes what they generate;
every way a file can be wrong for a model is refused with a message that says what to do."""

import pytest
import torch
from format_fixtures import (
    SD15_ATTN1_OUT,
    SD15_KV,
    SD15_TE,
    SDXL_KV,
    write_custom_diffusion,
    write_edlora,
    write_kohya,
    write_lokr,
    write_peft,
)
from safetensors.torch import load_file, save_file
from sampling import encode
from sampling import sample as _full_sample

from omg_core.bridge.binding import append_concept, base_weight, load_concept
from omg_core.bridge.patching import apply_updates
from omg_core.formats.native import save_native
from omg_core.model.concept import DenseUpdate, KroneckerUpdate, LowRankUpdate
from omg_core.toyworld.tiny_checkpoints import sdxl_conditioning

K0 = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"


def sample(model, positive, negative):
    """One sampler step on a small latent: enough to see whether a concept changes the output."""
    return _full_sample(model, positive, negative, width=32, height=32, steps=1)


@pytest.fixture(autouse=True)
def _unpatched_afterwards(sd15):
    """Leave the shared checkpoint loaded with its own weights for the next test."""
    import comfy.model_management as mm

    yield
    model, clip, _ = sd15
    mm.load_models_gpu([model, clip.patcher])


def _base_weights(model):
    """The checkpoint's own weights, even while a patched clone of it is loaded."""
    return {layer.model_key: base_weight(model, layer.model_key) for layer in SD15_KV}


SD15_BUILDERS = {
    "kohya": lambda d, m: write_kohya(d / "kohya.safetensors", trigger="ohwx"),
    "diffusers_peft": lambda d, m: write_peft(d / "diffusers.safetensors"),
    "peft_adapter_config": lambda d, m: write_peft(d / "adapter_model.safetensors", style="peft"),
    "diffusers_old": lambda d, m: write_peft(d / "old.safetensors", style="old"),
    "diffusers_attn_procs": lambda d, m: write_peft(
        d / "pytorch_lora_weights.bin", layers=(*SD15_KV, SD15_ATTN1_OUT), style="attn_procs"
    ),
    "edlora": lambda d, m: write_edlora(d / "edlora.pth"),
    "custom_diffusion_diffusers": lambda d, m: write_custom_diffusion(d / "cd", _base_weights(m)),
    "custom_diffusion_delta_ckpt": lambda d, m: write_custom_diffusion(
        d / "delta.ckpt", _base_weights(m), style="delta_ckpt"
    ),
    "custom_diffusion_compressed": lambda d, m: write_custom_diffusion(
        d / "compressed_delta.ckpt", _base_weights(m), style="compressed"
    ),
    "custom_diffusion_delta_bin": lambda d, m: write_custom_diffusion(
        d / "delta.bin", _base_weights(m), style="delta_bin"
    ),
    "lokr": lambda d, m: write_lokr(d / "lokr.safetensors"),
    "lokr_decomposed": lambda d, m: write_lokr(d / "lokr2.safetensors", decomposed_w1=True),
}
EXPECTED_KIND = {"lokr": KroneckerUpdate, "lokr_decomposed": KroneckerUpdate}
EXPECTED_KIND.update(
    {
        k: DenseUpdate
        for k in ("custom_diffusion_diffusers", "custom_diffusion_delta_ckpt", "custom_diffusion_delta_bin")
    }
)


def _random_conditioning(seed: int):
    """Seeded SD1.5-shaped conditioning: encoding a prompt on CPU (fp16 CLIP) costs seconds, and the UNet
    side of a concept does not care where its context came from."""
    return [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(seed)), {}]]


@pytest.fixture(scope="module")
def sd15_reference(sd15):
    model, _, _ = sd15
    positive, negative = _random_conditioning(1), _random_conditioning(2)
    return positive, negative, sample(model, positive, negative)


def _assert_updates_match(concept, fixture):
    assert set(concept.unet) == set(fixture.unet)
    assert set(concept.text_encoder) == set(fixture.text_encoder)
    for key, expected in {**fixture.unet, **fixture.text_encoder}.items():
        got = concept.layers()[key].dense()
        torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("fmt", sorted(SD15_BUILDERS))
def test_each_format_binds_to_sd15_layers_exactly_and_changes_the_image(sd15, sd15_reference, tmp_path, fmt):
    model, clip, _ = sd15
    fixture = SD15_BUILDERS[fmt](tmp_path, model)
    concept = load_concept(fixture.path, model, clip)
    assert concept.family == "sd15"
    assert concept.triggers == fixture.triggers
    assert all(isinstance(u, EXPECTED_KIND.get(fmt, LowRankUpdate)) for k, u in concept.unet.items() if "attn2" in k)
    _assert_updates_match(concept, fixture)

    positive, negative, reference = sd15_reference
    patched_model, patched_clip = apply_updates(model, clip, concept.unet, concept.text_encoder)
    latent = sample(patched_model, positive, negative)
    assert torch.isfinite(latent).all()
    assert (latent - reference).abs().max() > 1e-3, "the concept must change what the model generates"
    if fmt == "kohya":  # one format is enough to show that text-encoder layers reach the conditioning
        a, b = encode(patched_clip, "a photo of a cat")[0][0], encode(clip, "a photo of a cat")[0][0]
        assert (a - b).abs().max() > 1e-4, "text-encoder layers must change the conditioning"


def test_loading_and_applying_never_touches_the_input_model_or_clip(sd15, tmp_path):
    model, clip, _ = sd15
    key = SD15_KV[0].model_key
    before = (dict(model.patches), model.patches_uuid, dict(clip.patcher.patches), clip.tokenizer)
    weight = base_weight(model, key)
    concept = load_concept(write_edlora(tmp_path / "e.pth").path, model, clip)
    patched, _ = apply_updates(model, clip, concept.unet, concept.text_encoder)
    sample(patched, _random_conditioning(1), _random_conditioning(2))
    after = (dict(model.patches), model.patches_uuid, dict(clip.patcher.patches), clip.tokenizer)
    assert before == after
    sample(model, _random_conditioning(1), _random_conditioning(2))  # loading the original again restores its weights
    torch.testing.assert_close(model.model.state_dict()[key].float(), weight)


def test_strength_and_name_override_reach_the_concept(sd15, tmp_path):
    model, clip, _ = sd15
    fx = write_kohya(tmp_path / "k.safetensors")
    concept = load_concept(fx.path, model, clip, name="kitty", triggers="mykitty", strength=0.4)
    assert (concept.name, concept.triggers, concept.strength) == ("kitty", ("mykitty",), 0.4)


def test_native_file_has_the_same_effect_in_stock_lora_loader(sd15, sd15_reference, tmp_path):
    import comfy.sd
    import comfy.utils

    model, clip, _ = sd15
    concept = load_concept(write_kohya(tmp_path / "k.safetensors").path, model, clip)
    save_native(tmp_path / "native.safetensors", concept)
    positive, negative, _ = sd15_reference
    ours, _ = apply_updates(model, clip, concept.unet, concept.text_encoder)
    stock, _ = comfy.sd.load_lora_for_models(
        model, clip, comfy.utils.load_torch_file(str(tmp_path / "native.safetensors")), 1.0, 1.0
    )
    torch.testing.assert_close(sample(stock, positive, negative), sample(ours, positive, negative))
    again = load_concept(tmp_path / "native.safetensors", model, clip)
    assert again.source_format == "native" and set(again.unet) == set(concept.unet)


SDXL_BUILDERS = {
    "kohya_sgm": lambda d: write_kohya(d / "k.safetensors", layers=SDXL_KV, te_layers=(), sgm_names=True),
    "diffusers_peft": lambda d: write_peft(d / "p.safetensors", layers=SDXL_KV, te_layers=()),
    "lokr": lambda d: write_lokr(d / "l.safetensors", layers=SDXL_KV),
}


@pytest.mark.parametrize("fmt", sorted(SDXL_BUILDERS))
def test_sdxl_adapters_bind_to_the_sdxl_model_and_change_its_output(sdxl_inprocess, tmp_path, fmt):
    fixture = SDXL_BUILDERS[fmt](tmp_path)
    concept = load_concept(fixture.path, sdxl_inprocess, None)
    assert concept.family == "sdxl"
    _assert_updates_match(concept, fixture)
    positive, negative = sdxl_conditioning(seed=1), sdxl_conditioning(seed=2)
    patched, _ = apply_updates(sdxl_inprocess, None, concept.unet, {})
    reference = sample(sdxl_inprocess, positive, negative)
    assert (sample(patched, positive, negative) - reference).abs().max() > 1e-4


# ------------------------------------------------------------------ bad input


def test_sdxl_adapter_on_sd15_model_says_to_use_an_sdxl_checkpoint(sd15, tmp_path):
    model, clip, _ = sd15
    fx = write_kohya(tmp_path / "xl.safetensors", layers=SDXL_KV, te_layers=(), sgm_names=True)
    with pytest.raises(
        ValueError,
        match=r"targets SDXL \(cross-attention context 2048\) but the model is SD1.5 \(768\): "
        r"load it with an SDXL checkpoint",
    ):
        load_concept(fx.path, model, clip)


def test_sd15_adapter_on_sdxl_model_says_to_use_an_sd15_checkpoint(sdxl_inprocess, tmp_path):
    fx = write_peft(tmp_path / "p.safetensors", te_layers=())
    with pytest.raises(
        ValueError, match=r"targets SD1.5 \(cross-attention context 768\) but the model is SDXL \(2048\)"
    ):
        load_concept(fx.path, sdxl_inprocess, None)


def test_sdxl_text_encoder_only_adapter_on_sd15_is_refused_by_family(sd15, tmp_path):
    model, clip, _ = sd15
    fx = write_kohya(tmp_path / "te2.safetensors", layers=(), te_layers=SD15_TE, te_prefix="lora_te2_")
    with pytest.raises(ValueError, match="this adapter is for SDXL but the model is SD1.5: load it with an SDXL"):
        load_concept(fx.path, model, clip)


def test_keys_that_match_no_layer_are_listed(sd15, tmp_path):
    model, clip, _ = sd15
    up, down = torch.randn(320, 4), torch.randn(4, 768)
    name = "lora_unet_input_blocks_7_1_transformer_blocks_0_attn2_to_k"
    save_file({f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down}, str(tmp_path / "x.safetensors"))
    with pytest.raises(
        ValueError, match=f"none of its 1 layer\\(s\\) matches a layer of this SD1.5 model \\({name}\\)"
    ):
        load_concept(tmp_path / "x.safetensors", model, clip)


def test_some_unmatched_layers_are_counted(sd15, tmp_path):
    model, clip, _ = sd15
    fx = write_kohya(tmp_path / "k.safetensors", te_layers=())
    sd = load_file(str(fx.path))
    sd["lora_unet_input_blocks_7_1_proj_in.lora_up.weight"] = torch.randn(320, 4, dtype=torch.float16)
    sd["lora_unet_input_blocks_7_1_proj_in.lora_down.weight"] = torch.randn(4, 320, dtype=torch.float16)
    save_file(sd, str(fx.path))
    with pytest.raises(
        ValueError, match="1 of its 9 layers match no layer of this SD1.5 model.*different model architecture"
    ):
        load_concept(fx.path, model, clip)


def test_layer_with_the_wrong_shape_names_both_shapes(sd15, tmp_path):
    model, clip, _ = sd15
    save_file(
        {f"{K0}.lora_up.weight": torch.randn(640, 4), f"{K0}.lora_down.weight": torch.randn(4, 768)},
        str(tmp_path / "s.safetensors"),
    )
    with pytest.raises(ValueError, match="has shape 640x768 in the file but 320x768 in the model"):
        load_concept(tmp_path / "s.safetensors", model, clip)


def test_text_encoder_layers_without_clip_ask_for_the_clip(sd15, tmp_path):
    model, _, _ = sd15
    fx = write_kohya(tmp_path / "te.safetensors", layers=())
    with pytest.raises(ValueError, match="changes the text encoder but no CLIP was given"):
        load_concept(fx.path, model, None)


def test_dora_layers_are_refused_with_the_loader_that_handles_them(sd15, tmp_path):
    model, clip, _ = sd15
    fx = write_kohya(tmp_path / "k.safetensors", te_layers=())
    sd = load_file(str(fx.path))
    sd[f"{K0}.dora_scale"] = torch.ones(320, 1, dtype=torch.float16)
    save_file(sd, str(fx.path))
    with pytest.raises(ValueError, match="DoRA layer.*LoraLoader"):
        load_concept(fx.path, model, clip)


def test_nan_weights_and_corrupt_files_are_refused_through_load_concept(sd15, tmp_path):
    model, clip, _ = sd15
    fx = write_kohya(tmp_path / "k.safetensors")
    sd = load_file(str(fx.path))
    sd[f"{K0}.lora_down.weight"][1, 2] = float("nan")
    save_file(sd, str(fx.path))
    with pytest.raises(ValueError, match="NaN or Inf weights"):
        load_concept(fx.path, model, clip)
    (tmp_path / "cut.safetensors").write_bytes(fx.path.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_concept(tmp_path / "cut.safetensors", model, clip)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        load_concept(tmp_path / "empty.safetensors", model, clip)


def test_clip_g_trigger_embedding_on_an_sd15_clip_is_refused(sd15, tmp_path):
    model, clip, _ = sd15
    fx = write_custom_diffusion(tmp_path / "delta.bin", _base_weights(model), style="delta_bin")
    obj = torch.load(str(fx.path))
    obj["modifier_token"]["<new1>"] = [torch.randn(768), torch.randn(1280)]
    torch.save(obj, str(fx.path))
    with pytest.raises(ValueError, match="text encoder clip_g.*which this CLIP does not have \\(it has clip_l\\)"):
        load_concept(fx.path, model, clip)


def test_trigger_override_must_name_each_learned_token(sd15, tmp_path):
    model, clip, _ = sd15
    fx = write_edlora(tmp_path / "e.pth")
    with pytest.raises(ValueError, match=r"2 trigger token\(s\) .*<cat1>, <cat2>.*gives 1 \(mycat\).*exactly 2"):
        load_concept(fx.path, model, clip, triggers="mycat")
    renamed = load_concept(fx.path, model, clip, triggers="mycat1, mycat2")
    assert renamed.triggers == ("mycat1", "mycat2")
    assert [e.token for e in renamed.embeddings] == ["mycat1", "mycat2"]
    with pytest.raises(ValueError, match="contains a space.*one word"):
        load_concept(fx.path, model, clip, triggers="my cat, b")


def test_duplicate_trigger_words_in_one_chain_are_refused(sd15, tmp_path):
    model, clip, _ = sd15
    a = load_concept(write_kohya(tmp_path / "a.safetensors", trigger="ohwx").path, model, clip)
    b = load_concept(write_peft(tmp_path / "b.safetensors").path, model, clip, triggers="OHWX")
    chain = append_concept(None, a)
    with pytest.raises(ValueError, match="trigger 'ohwx' of concept 'b' is already used by concept 'a'.*different"):
        append_concept(chain, b)
    assert chain == [a], "the incoming chain is not modified"


def test_concepts_of_different_families_cannot_share_a_chain(sd15, sdxl_inprocess, tmp_path):
    model, clip, _ = sd15
    a = load_concept(write_kohya(tmp_path / "a.safetensors").path, model, clip)
    b = load_concept(write_lokr(tmp_path / "b.safetensors", layers=SDXL_KV).path, sdxl_inprocess, None)
    with pytest.raises(ValueError, match="bound to SDXL but 'a' earlier in the chain to SD1.5"):
        append_concept([a], b)
