"""The fusion nodes in a real ComfyUI: clones carry the fused weights, the saved
LoRA loads with the stock LoraLoader and reproduces them."""

import shutil
import sys
from pathlib import Path

import pytest
import torch

from omg_core.basis import basis_rows
from omg_core.concept import Concept, DenseUpdate, LowRankUpdate
from omg_core.fusion import FUSION_METHODS, patch_dense
from omg_core.text_features import encode_prompts

TE_KEY = "clip_l.transformer.text_model.encoder.layers.0.self_attn.k_proj.weight"


def _kv_keys(model):
    return [k for k in model.model_state_dict() if ".attn2.to_k." in k or ".attn2.to_v." in k]


def _concepts(model, dense_one=False):
    out = []
    for i, trigger in enumerate(("omgcat", "omgdog", "omgmug")):
        g = torch.Generator().manual_seed(i)
        unet = {}
        for j, key in enumerate(_kv_keys(model)):
            down = basis_rows(7, 8 * i + j, 4, 768) if i < 2 else torch.randn(4, 768, generator=g) / 28
            unet[key] = LowRankUpdate(torch.randn(320, 4, generator=g) * 0.05, down)
        if dense_one and i == 2:
            first = next(iter(unet))
            unet[first] = DenseUpdate(torch.randn(320, 768, generator=g) * 1e-3)
        te = {TE_KEY: LowRankUpdate(torch.randn(768, 2, generator=g) * 0.01, torch.randn(2, 768, generator=g) * 0.01)}
        out.append(
            Concept(trigger, (trigger,), "sd15", "test", unet=unet, text_encoder=te if i == 0 else {}, strength=0.8)
        )
    return out


def _node(comfy, name):
    return comfy.NODE_CLASS_MAPPINGS[name]


@pytest.fixture
def captured(comfy, monkeypatch):
    """The FusionResult each fusion node computes, caught on its way out of ``fuse``."""
    module = sys.modules[_node(comfy, "OMGFuseConcepts").__module__]
    results = []
    real = module.fuse

    def spy(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(module, "fuse", spy)
    return results


def _live(patcher, key):
    return patcher.model.state_dict()[key].detach().clone().float()


@pytest.fixture
def base(sd15):
    """Base weights of the shared checkpoint; loads it unpatched again afterwards."""
    import comfy.model_management as mm

    model, clip, _ = sd15
    mm.load_models_gpu([model, clip.patcher])
    weights = {k: _live(model, k) for k in _kv_keys(model)}
    weights[TE_KEY] = _live(clip.patcher, TE_KEY)
    yield weights
    mm.load_models_gpu([model, clip.patcher])


def test_batched_truncated_prompt_encoding_equals_the_full_encoding(sd15):
    _, clip, _ = sd15
    prompts = ["a painting of a small red boat", "omgdog"]
    encoded = encode_prompts(clip, prompts)
    full = clip.encode_from_tokens(clip.tokenize(prompts[1]))[0, : encoded[1][0].shape[0]].float()
    torch.testing.assert_close(encoded[1][0], full, rtol=2e-2, atol=2e-2)
    assert [r.shape[0] for r, _ in encoded] == [9, 4]  # BOS, word pieces ("omg", "dog"), EOS; no padding
    labels = encoded[1][1]
    assert labels[0].startswith("<start>") and labels[-1].startswith("<end>") and labels[1].startswith("omg")


@pytest.mark.parametrize("method", FUSION_METHODS)
def test_fuse_node_returns_clones_carrying_exactly_the_fused_weights(comfy, sd15, base, captured, method):
    import comfy.model_management as mm

    model, clip, _ = sd15
    concepts = _concepts(model)
    out = _node(comfy, "OMGFuseConcepts").execute(model, clip, concepts, method, 1e-3, "{trigger}", "a photo of a dog")
    new_model, new_clip, report = out.args
    assert new_model is not model and new_clip is not clip
    assert model.patches == {} and clip.patcher.patches == {}
    assert f"method {method}" in report
    if method != "additive":
        assert "cross-attention k/v layers fitted on text features" in report and "shared positions" in report
    (expected,) = captured
    mm.load_models_gpu([new_model, new_clip.patcher])
    for key, patch in expected.unet.items():
        torch.testing.assert_close(_live(new_model, key), base[key] + patch_dense(patch).float(), rtol=1e-4, atol=1e-5)
    te = base[TE_KEY] + patch_dense(expected.text_encoder[TE_KEY]).float()
    torch.testing.assert_close(_live(new_clip.patcher, TE_KEY), te, rtol=3e-3, atol=3e-3)


def test_orthogonality_report_and_orthogonalize_nodes(comfy, sd15):
    model, clip, _ = sd15
    concepts = _concepts(model)
    image, table = _node(comfy, "OMGOrthogonalityReport").execute(concepts, clip, "{trigger}").args
    assert image.ndim == 4 and image.shape[-1] == 3 and 0 <= float(image.min()) <= float(image.max()) <= 1
    assert "omgcat" in table and "text features" in table
    new, text = _node(comfy, "OMGOrthogonalize").execute(concepts, "symmetric").args
    assert [c.name for c in new] == ["omgcat", "omgdog", "omgmug"]
    assert "omgmug" in text and "%" in text
    image2, table2 = _node(comfy, "OMGOrthogonalityReport").execute(new).args
    assert "own input subspace" in table2


def test_fusion_nodes_explain_bad_input(comfy, sd15):
    model, clip, _ = sd15
    fuse_node = _node(comfy, "OMGFuseConcepts")
    with pytest.raises(ValueError, match="no concepts are connected"):
        fuse_node.execute(model, clip, [], "additive", 0.0)
    with pytest.raises(ValueError, match="placeholder"):
        fuse_node.execute(model, clip, _concepts(model), "least_squares", 0.0, "a photo of a cat")


def _check_lora_weights(lora_model, lora_clip, expected, base, rank):
    import comfy.model_management as mm

    mm.load_models_gpu([lora_model, lora_clip.patcher])
    for key, patch in expected.unet.items():
        delta = _live(lora_model, key) - base[key]
        want = patch_dense(patch).float()
        if rank < 12:  # SVD-truncated: exactly the best rank-r approximation
            s = torch.linalg.svdvals(want)
            best = float(s[rank:].square().sum().sqrt() / s.square().sum().sqrt())
            assert float((delta - want).norm() / want.norm()) == pytest.approx(best, rel=1e-3, abs=1e-4)
        else:
            torch.testing.assert_close(delta, want, rtol=1e-3, atol=1e-5)
    te_delta = _live(lora_clip.patcher, TE_KEY) - base[TE_KEY]
    torch.testing.assert_close(te_delta, patch_dense(expected.text_encoder[TE_KEY]).float(), rtol=0.05, atol=2e-3)


def test_saved_lora_loads_with_stock_loraloader_and_reproduces_the_fused_weights(
    comfy, sd15, base, host, comfy_models_dir, captured
):
    """Exact when the fused result fits the rank (least squares of low-rank concepts: rank 12 <= 64),
    the best rank-6 approximation otherwise (a dense concept forces an SVD), with the error stated."""
    import folder_paths
    from safetensors import safe_open

    model, clip, _ = sd15
    save = _node(comfy, "OMGSaveFusedLoRA")
    runs = [("least_squares", 64, _concepts(model)), ("additive", 6, _concepts(model, dense_one=True))]
    names, texts = [], []
    for method, rank, concepts in runs:
        text = save.execute(concepts, method, 1e-3, rank, f"loras/test_{method}", clip, "{trigger}", "").args[0]
        saved = Path(folder_paths.get_output_directory()) / text.splitlines()[0].removeprefix("Saved ")
        assert saved.exists(), text
        with safe_open(str(saved), "pt") as f:
            assert f.metadata()["omg_fusion_method"] == method
            assert "lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_up.weight" in set(f.keys())
        shutil.copy(saved, comfy_models_dir / "loras" / saved.name)
        names.append(saved.name)
        texts.append(text)
    assert "written exactly" in texts[0] and "0 truncated" in texts[0]
    assert "truncated by SVD" in texts[1] and "relative error of truncated layers" in texts[1]

    ckpt = folder_paths.get_filename_list("checkpoints")[0]
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    for i, name in enumerate(names):
        loader = str(10 * (i + 1))
        prompt[loader] = {
            "class_type": "LoraLoader",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "lora_name": name,
                "strength_model": 1.0,
                "strength_clip": 1.0,
            },
        }
        for out in (0, 1):
            prompt[f"{loader}{out}"] = {"class_type": "PreviewAny", "inputs": {"source": [loader, out]}}
    host.run(prompt)
    for i, (_, rank, _) in enumerate(runs):
        lora_model, lora_clip = (x[0] for x in host.node_outputs(str(10 * (i + 1)))[:2])
        _check_lora_weights(lora_model, lora_clip, captured[i], base, rank)
