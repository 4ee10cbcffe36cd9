"""Damaged, dangerous or foreign files are refused with a message that says what is wrong and what to do."""

import os

import pytest
import torch
from format_fixtures import write_edlora, write_kohya
from safetensors.torch import load_file, save_file

from omg_core.formats import read_adapter

K0 = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"


def test_empty_file_is_reported_as_empty(tmp_path):
    (tmp_path / "e.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"is empty \(0 bytes\).*get the file again"):
        read_adapter(tmp_path / "e.safetensors")


def test_missing_file_names_the_loras_folder(tmp_path):
    with pytest.raises(ValueError, match="not found.*models/loras"):
        read_adapter(tmp_path / "nope.safetensors")


def test_truncated_safetensors_file_is_reported_as_truncated(tmp_path):
    fx = write_kohya(tmp_path / "k.safetensors")
    data = fx.path.read_bytes()
    fx.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file.*truncated or corrupt"):
        read_adapter(fx.path)


def test_truncated_pytorch_checkpoint_is_reported_as_truncated(tmp_path):
    fx = write_edlora(tmp_path / "e.pth")
    data = fx.path.read_bytes()
    fx.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint.*truncated or corrupt"):
        read_adapter(fx.path)


def test_random_bytes_are_reported_as_corrupt(tmp_path):
    (tmp_path / "g.pth").write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_adapter(tmp_path / "g.pth")


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_that_would_run_code_is_refused_not_executed(tmp_path, capsys):
    torch.save({"params": {"new_concept_embedding": {}, "unet": _RunsCode()}}, str(tmp_path / "evil.pth"))
    with pytest.raises(ValueError, match="refused: loading it would run code.*weights_only=True.*safetensors") as e:
        read_adapter(tmp_path / "evil.pth")
    assert "this must never run" not in capsys.readouterr().out
    assert "it refers to print, which is not a tensor" in str(e.value)
    # Only what to do instead: none of torch's advice to allowlist the global or to load it unsafely.
    assert "weights_only=False" not in str(e.value) and "safe_globals" not in str(e.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weights_name_the_layer_and_the_fix(tmp_path, bad):
    fx = write_kohya(tmp_path / "k.safetensors")
    sd = load_file(str(fx.path))
    sd[K0 + ".lora_up.weight"][0, 0] = bad
    save_file(sd, str(fx.path))
    with pytest.raises(ValueError, match=f"NaN or Inf weights \\({K0}.lora_up.weight\\).*retrain"):
        read_adapter(fx.path)


def test_nan_in_a_trigger_embedding_is_refused(tmp_path):
    fx = write_edlora(tmp_path / "e.pth")
    obj = torch.load(str(fx.path))
    obj["params"]["new_concept_embedding"]["<cat1>"][3, 5] = float("nan")
    torch.save(obj, str(fx.path))
    with pytest.raises(ValueError, match="NaN or Inf weights \\(embedding <cat1>"):
        read_adapter(fx.path)


def test_up_down_rank_mismatch_names_the_layer(tmp_path):
    fx = write_kohya(tmp_path / "k.safetensors")
    sd = load_file(str(fx.path))
    sd[K0 + ".lora_down.weight"] = torch.randn(8, 768, dtype=torch.float16)
    save_file(sd, str(fx.path))
    with pytest.raises(ValueError, match=f"rank mismatch in layer {K0}.*rank 4.*rank 8"):
        read_adapter(fx.path)


def test_half_of_a_lora_pair_is_reported_as_incomplete(tmp_path):
    fx = write_kohya(tmp_path / "k.safetensors")
    sd = load_file(str(fx.path))
    del sd[K0 + ".lora_up.weight"]
    save_file(sd, str(fx.path))
    with pytest.raises(ValueError, match=f"layer {K0} has lora_down but no lora_up.*incomplete"):
        read_adapter(fx.path)


def test_loha_file_is_refused_with_the_loader_that_can_use_it(tmp_path):
    save_file({f"{K0}.hada_w1_a": torch.randn(320, 4), f"{K0}.hada_w1_b": torch.randn(4, 768)}, str(tmp_path / "h.st"))
    with pytest.raises(ValueError, match="holds LoHa layers.*LoraLoader"):
        read_adapter(tmp_path / "h.st")


def test_unknown_tensor_names_are_listed_with_the_supported_formats(tmp_path):
    save_file({"foo.bar": torch.randn(3), "baz": torch.randn(3)}, str(tmp_path / "u.safetensors"))
    with pytest.raises(ValueError, match="not a recognised adapter.*baz, foo.bar.*kohya"):
        read_adapter(tmp_path / "u.safetensors")


def test_full_checkpoint_in_the_loras_folder_points_to_load_checkpoint(tmp_path):
    save_file({"model.diffusion_model.out.0.weight": torch.randn(4)}, str(tmp_path / "ckpt.safetensors"))
    with pytest.raises(ValueError, match="full model checkpoint.*'Load Checkpoint'"):
        read_adapter(tmp_path / "ckpt.safetensors")


def test_token_only_file_points_to_the_weights_file(tmp_path):
    save_file({"<new1>": torch.randn(768)}, str(tmp_path / "<new1>.bin"))
    with pytest.raises(ValueError, match="only token embeddings.*pytorch_custom_diffusion_weights"):
        read_adapter(tmp_path / "<new1>.bin")


def test_embedding_of_unknown_width_names_the_expected_widths(tmp_path):
    fx = write_edlora(tmp_path / "e.pth")
    obj = torch.load(str(fx.path))
    obj["params"]["new_concept_embedding"]["<cat1>"] = torch.randn(16, 1024)
    torch.save(obj, str(fx.path))
    with pytest.raises(ValueError, match="width 1024.*768 for CLIP-L, 1280 for CLIP-G"):
        read_adapter(fx.path)
