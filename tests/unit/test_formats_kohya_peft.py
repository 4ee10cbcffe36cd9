"""kohya/sd-scripts and diffusers/PEFT LoRA files are renamed for ComfyUI's key maps with their numbers intact."""

import json

import pytest
import torch
from format_fixtures import SD15_ATTN1_OUT, SD15_KV, SD15_TE, SDXL_KV, write_kohya, write_peft
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from omg_core.formats import read_adapter
from omg_core.formats.names import comfy_module_name, split_lora_suffix

K0 = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"


def _scale(adapter, base):
    return float(adapter.tensors[base + ".alpha"]) / adapter.tensors[base + ".lora_down.weight"].shape[0]


def test_kohya_file_keeps_its_names_values_alpha_and_trigger(tmp_path):
    fx = write_kohya(tmp_path / "k.safetensors", trigger="ohwx")
    adapter = read_adapter(fx.path)
    raw = load_file(str(fx.path))
    assert adapter.format == "kohya" and adapter.family == "sd15" and adapter.context_dim == 768
    assert adapter.triggers == ("ohwx",)
    assert set(adapter.tensors) == set(raw)
    torch.testing.assert_close(adapter.tensors[K0 + ".lora_up.weight"], raw[K0 + ".lora_up.weight"])
    assert _scale(adapter, K0) == pytest.approx(0.5)


def test_sdxl_kohya_file_in_sgm_names_is_recognised_as_sdxl(tmp_path):
    fx = write_kohya(tmp_path / "x.safetensors", layers=SDXL_KV, te_layers=(), sgm_names=True)
    adapter = read_adapter(fx.path)
    assert adapter.family == "sdxl" and adapter.context_dim == 2048
    assert "lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k.lora_up.weight" in adapter.tensors


def test_text_encoder_2_layers_alone_mark_an_sdxl_adapter(tmp_path):
    fx = write_kohya(tmp_path / "te2.safetensors", layers=(), te_layers=SD15_TE, te_prefix="lora_te2_")
    assert read_adapter(fx.path).family == "sdxl"


def test_diffusers_peft_file_gets_alpha_from_its_header_config(tmp_path):
    fx = write_peft(tmp_path / "p.safetensors", rank=4, alpha=8.0)
    adapter = read_adapter(fx.path)
    assert adapter.format == "peft"
    assert _scale(adapter, K0) == pytest.approx(2.0)
    te = "lora_te1_text_model_encoder_layers_0_self_attn_k_proj"
    assert _scale(adapter, te) == pytest.approx(2.0)
    # lora_B is the up factor, lora_A the down factor.
    raw = load_file(str(fx.path))
    up = raw["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight"]
    torch.testing.assert_close(adapter.tensors[K0 + ".lora_up.weight"], up)


def test_raw_peft_file_gets_alpha_from_adapter_config_beside_it(tmp_path):
    (tmp_path / "peft").mkdir()
    fx = write_peft(tmp_path / "peft" / "adapter_model.safetensors", style="peft", rank=4, alpha=2.0)
    adapter = read_adapter(fx.path)
    assert _scale(adapter, K0) == pytest.approx(0.5)
    assert not any(k.startswith("base_model") for k in adapter.tensors)


def test_rslora_config_scales_by_alpha_over_sqrt_rank(tmp_path):
    fx = write_peft(tmp_path / "p.safetensors", te_layers=(), rank=4, alpha=8.0)
    raw = load_file(str(fx.path))
    config = {"unet.r": 4, "unet.lora_alpha": 8.0, "unet.use_rslora": True}
    save_file(raw, str(fx.path), metadata={"lora_adapter_metadata": json.dumps(config)})
    assert _scale(read_adapter(fx.path), K0) == pytest.approx(8.0 / 2.0)


def test_old_diffusers_and_text_encoder_monkeypatch_names_are_understood(tmp_path):
    fx = write_peft(tmp_path / "o.safetensors", style="old")
    adapter = read_adapter(fx.path)
    assert K0 + ".lora_down.weight" in adapter.tensors
    assert "lora_te1_text_model_encoder_layers_1_self_attn_v_proj.lora_up.weight" in adapter.tensors
    assert not any(k.endswith(".alpha") for k in adapter.tensors)  # scale 1, as diffusers applied it


def test_attention_processor_names_map_to_out_lora_to_to_out_0(tmp_path):
    fx = write_peft(tmp_path / "pytorch_lora_weights.bin", layers=(*SD15_KV, SD15_ATTN1_OUT), style="attn_procs")
    adapter = read_adapter(fx.path)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_up.weight" in adapter.tensors
    assert K0 + ".lora_up.weight" in adapter.tensors


def test_text_encoder_names_without_text_model_level_get_it_back():
    # transformers 5 drops the text_model level from CLIPTextModel names.
    assert comfy_module_name("text_encoder.encoder.layers.3.self_attn.q_proj") == (
        "lora_te1_text_model_encoder_layers_3_self_attn_q_proj"
    )
    assert comfy_module_name("text_encoder_2.text_model.encoder.layers.3.mlp.fc1") == (
        "lora_te2_text_model_encoder_layers_3_mlp_fc1"
    )


_block = st.sampled_from(["down_blocks.0.attentions.1", "mid_block.attentions.0", "up_blocks.2.attentions.2"])
_proj = st.sampled_from(["attn1.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.2"])
_spelling = st.sampled_from(
    [
        ("unet.{m}.lora_A.weight", ".lora_down.weight"),
        ("unet.{m}.lora_B.weight", ".lora_up.weight"),
        ("base_model.model.{m}.lora_B.default.weight", ".lora_up.weight"),
        ("unet.{m}.lora.down.weight", ".lora_down.weight"),
        ("{m}.lora_up.weight", ".lora_up.weight"),
    ]
)


@given(_block, st.integers(0, 9), _proj, _spelling)
def test_every_diffusers_spelling_of_a_unet_layer_lands_on_the_kohya_name(block, t, proj, spelling):
    module = f"{block}.transformer_blocks.{t}.{proj}"
    template, suffix = spelling
    name, got_suffix = split_lora_suffix(template.format(m=module))
    assert got_suffix == suffix
    assert comfy_module_name(name) == "lora_unet_" + module.replace(".", "_")
