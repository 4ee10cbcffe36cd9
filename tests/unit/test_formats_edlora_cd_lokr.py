"""Mix-of-Show ED-LoRA, Custom Diffusion (all four layouts) and LyCORIS LoKr files read as their tools wrote them."""

import pytest
import torch
from format_fixtures import SD15_KV, write_custom_diffusion, write_edlora, write_lokr
from safetensors.torch import load_file, save_file

from omg_core.formats import read_adapter

K0 = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
K0_SGM = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k"


@pytest.fixture
def base_weights():
    g = torch.Generator().manual_seed(9)
    return {layer.model_key: torch.randn(layer.out, layer.inp, generator=g) for layer in SD15_KV}


def test_edlora_tokens_are_layer_wise_embeddings_and_triggers(tmp_path):
    fx = write_edlora(tmp_path / "cat.pth")
    adapter = read_adapter(fx.path)
    assert adapter.format == "edlora" and adapter.family == "sd15"
    assert adapter.triggers == ("<cat1>", "<cat2>")
    emb = {e.token: e for e in adapter.embeddings}
    assert emb["<cat1>"].layer_wise and emb["<cat1>"].vectors.shape == (16, 1, 768)
    torch.testing.assert_close(emb["<cat2>"].vectors[:, 0], fx.embeddings["<cat2>"])


def test_edlora_lora_factors_get_kohya_names_and_keep_conv_shapes(tmp_path):
    fx = write_edlora(tmp_path / "cat.pth")
    adapter = read_adapter(fx.path)
    assert K0 + ".lora_up.weight" in adapter.tensors
    assert "lora_te1_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight" in adapter.tensors
    proj_in = adapter.tensors["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"]
    assert proj_in.shape == (4, 320, 1, 1)
    assert not any(k.endswith(".alpha") for k in adapter.tensors)  # trained at alpha 1


def test_plain_lora_mode_of_mix_of_show_stores_one_ordinary_vector(tmp_path):
    fx = write_edlora(tmp_path / "lora.pth", tokens=("<dog>",), n_layers=1)
    (emb,) = read_adapter(fx.path).embeddings
    assert not emb.layer_wise and emb.vectors.shape == (1, 768)


def test_diffusers_custom_diffusion_reads_full_weights_and_token_file_beside_it(tmp_path, base_weights):
    fx = write_custom_diffusion(tmp_path / "out", base_weights)
    adapter = read_adapter(fx.path)
    assert adapter.format == "custom_diffusion" and adapter.triggers == ("<new1>",)
    assert adapter.embeddings[0].encoder == "clip_l"
    torch.testing.assert_close(adapter.embeddings[0].vectors, fx.embeddings["<new1>"])
    torch.testing.assert_close(
        adapter.tensors[K0 + ".set_weight"], base_weights[K0_SGM + ".weight"] + fx.unet[K0_SGM + ".weight"]
    )


def test_custom_diffusion_token_embedded_in_the_weights_file_is_used(tmp_path, base_weights):
    fx = write_custom_diffusion(tmp_path / "out", base_weights)
    (tmp_path / "out" / "<new1>.bin").unlink()
    weights = load_file(str(fx.path))
    weights["<v*>"] = torch.randn(768)
    single = tmp_path / "cd.safetensors"
    save_file(weights, str(single))
    adapter = read_adapter(single)
    assert adapter.triggers == ("<v*>",)


def test_token_files_are_only_read_beside_diffusers_weights_file_name(tmp_path, base_weights):
    fx = write_custom_diffusion(tmp_path / "out", base_weights)
    renamed = tmp_path / "out" / "mycat.safetensors"
    fx.path.rename(renamed)
    assert read_adapter(renamed).embeddings == ()


@pytest.mark.parametrize("style", ["delta_ckpt", "delta_bin"])
def test_original_custom_diffusion_deltas_hold_full_weights_and_new1_token(tmp_path, base_weights, style):
    fx = write_custom_diffusion(tmp_path / "delta.ckpt", base_weights, style=style)
    adapter = read_adapter(fx.path)
    assert adapter.triggers == ("<new1>",)
    full = [k for k in adapter.tensors if k.endswith(".set_weight")]
    assert len(full) == len(SD15_KV)
    name = (K0_SGM if style == "delta_ckpt" else K0) + ".set_weight"
    torch.testing.assert_close(adapter.tensors[name], base_weights[K0_SGM + ".weight"] + fx.unet[K0_SGM + ".weight"])


def test_compressed_custom_diffusion_delta_is_low_rank_already(tmp_path, base_weights):
    fx = write_custom_diffusion(tmp_path / "compressed_delta.ckpt", base_weights, style="compressed")
    adapter = read_adapter(fx.path)
    up, down = adapter.tensors[K0_SGM + ".lora_up.weight"], adapter.tensors[K0_SGM + ".lora_down.weight"]
    torch.testing.assert_close(up @ down, fx.unet[K0_SGM + ".weight"])
    assert not any(k.endswith(".set_weight") for k in adapter.tensors)


def test_custom_diffusion_bias_changes_are_reported_as_ignored(tmp_path):
    sd = {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_custom_diffusion.weight": torch.randn(
            320, 768
        ),
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_out_custom_diffusion.0.bias": torch.randn(
            320
        ),
    }
    path = tmp_path / "pytorch_custom_diffusion_weights.safetensors"
    save_file(sd, str(path))
    adapter = read_adapter(path)
    assert "to_out_custom_diffusion.0.bias" in adapter.metadata["omg_ignored"]


def test_custom_diffusion_with_full_text_encoder_is_refused_with_advice(tmp_path):
    torch.save({"unet": {}, "text_encoder": {"x": torch.zeros(1)}, "modifier_token": {}}, str(tmp_path / "d.bin"))
    with pytest.raises(
        ValueError, match="fully fine-tuned text encoder.*retrain the concept without save_text_encoder"
    ):
        read_adapter(tmp_path / "d.bin")


@pytest.mark.parametrize("decomposed_w1", [False, True])
def test_lokr_factors_stay_kronecker_and_give_the_context_width(tmp_path, decomposed_w1):
    fx = write_lokr(tmp_path / "l.safetensors", decomposed_w1=decomposed_w1)
    adapter = read_adapter(fx.path)
    assert adapter.format == "lokr" and adapter.context_dim == 768 and adapter.family == "sd15"
    assert K0 + ".lokr_w2_a" in adapter.tensors
    assert (K0 + (".lokr_w1_a" if decomposed_w1 else ".lokr_w1")) in adapter.tensors


def test_lokr_rank_mismatch_names_the_layer(tmp_path):
    fx = write_lokr(tmp_path / "l.safetensors")
    sd = load_file(str(fx.path))
    sd[K0 + ".lokr_w2_b"] = torch.randn(3, 96)
    save_file(sd, str(fx.path))
    with pytest.raises(ValueError, match=f"rank mismatch in layer {K0}.*export it again"):
        read_adapter(fx.path)


def _diffusers_custom_diffusion_unet():
    """A small diffusers UNet with Custom Diffusion processors, as diffusers' train_custom_diffusion.py
    sets them: attn2 trains k/v, attn1 processors hold no weights."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    widths = {"down_blocks.0": 32, "mid_block": 64, "up_blocks.1": 32}
    procs = {}
    for name in unet.attn_processors:
        hidden = next(w for prefix, w in widths.items() if name.startswith(prefix))
        cross = name.endswith("attn2.processor")
        procs[name] = CustomDiffusionAttnProcessor(
            train_kv=cross, train_q_out=False, hidden_size=hidden, cross_attention_dim=768 if cross else None
        )
    unet.set_attn_processor(procs)
    return unet


def test_custom_diffusion_bin_written_by_diffusers_itself_is_read(tmp_path):
    """diffusers' save_attn_procs with safe_serialization off pickles an empty entry per attn1 processor."""
    unet = _diffusers_custom_diffusion_unet()
    unet.save_attn_procs(str(tmp_path), safe_serialization=False)
    torch.save({"<new1>": torch.randn(768)}, str(tmp_path / "<new1>.bin"))
    path = tmp_path / "pytorch_custom_diffusion_weights.bin"
    stored = torch.load(str(path), weights_only=True)
    assert any(k.endswith("attn1.processor") for k in stored)  # the entries this test is about
    adapter = read_adapter(path)
    assert adapter.format == "custom_diffusion" and adapter.triggers == ("<new1>",)
    weights = {k: v for k, v in stored.items() if torch.is_tensor(v)}
    assert len(adapter.tensors) == len(weights) and all(k.endswith(".set_weight") for k in adapter.tensors)


def test_a_token_saved_both_ways_is_read_once(tmp_path, base_weights):
    fx = write_custom_diffusion(tmp_path / "out", base_weights)
    save_file({"<new1>": fx.embeddings["<new1>"]}, str(tmp_path / "out" / "<new1>.safetensors"))
    adapter = read_adapter(fx.path)
    assert adapter.triggers == ("<new1>",) and len(adapter.embeddings) == 1
